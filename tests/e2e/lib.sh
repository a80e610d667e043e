# Shared helpers for the end-to-end scripts (bash). Every script sources it, for example
#   . "$(dirname "$0")/lib.sh"            # tests/e2e/*.sh
#   . "$(dirname "$0")/../lib.sh"         # tests/e2e/*/*.sh
# Nothing here starts anything or sets a trap; the caller keeps its own. The counters are
# E2E_PASSED and E2E_FAILED; `summary` prints the closing "N passed, N failed" line.

E2E_PASSED=${E2E_PASSED:-0}
E2E_FAILED=${E2E_FAILED:-0}
E2E_USED_PORTS=${E2E_USED_PORTS:-}
# The loopback ports pick_port hands out, LOW-HIGH. Suites run side by side get ranges that
# do not overlap, so neither can take a port the other picked but has not bound yet.
E2E_PORTS=${E2E_PORTS:-20000-31999}

# ok NAME / not_ok NAME [DETAIL]: one line per check; DETAIL (last 30 lines) as "#" comments.
ok() {
	E2E_PASSED=$((E2E_PASSED + 1))
	echo "ok - $1"
}

not_ok() {
	E2E_FAILED=$((E2E_FAILED + 1))
	echo "not ok - $1"
	if [ -n "${2:-}" ]; then
		printf '%s\n' "$2" | tail -n 30 | sed 's/^/#   /'
	fi
}

# check NAME COMMAND...: ok when COMMAND succeeds. On failure, DETAIL (set for the call,
# `DETAIL=$out check ...`, or by COMMAND itself) is shown under the line; it is cleared
# after every check. `check NAME eval 'TEXT'` checks shell text (pipes, `!`, `&&`).
check() {
	local name=$1
	shift
	if "$@"; then
		ok "$name"
	else
		not_ok "$name" "${DETAIL:-}"
	fi
	DETAIL=
}

# expect_eq NAME WANT GOT [DETAIL]
expect_eq() {
	if [ "$2" = "$3" ]; then
		ok "$1"
	else
		not_ok "$1 (want $2, got ${3:-nothing})" "${4:-}"
	fi
}

# Prints "N passed, N failed" and returns non-zero if anything failed.
summary() {
	echo "$E2E_PASSED passed, $E2E_FAILED failed"
	[ "$E2E_FAILED" -eq 0 ] && [ "$E2E_PASSED" -gt 0 ]
}

# tcp_port_in_use PORT [ADDRESS]: true when something accepts TCP connections on
# ADDRESS:PORT (default 127.0.0.1).
tcp_port_in_use() {
	(exec 3<>"/dev/tcp/${2:-127.0.0.1}/$1") 2>/dev/null
}

# pick_port VARIABLE [ADDRESS...]: sets VARIABLE to a loopback TCP port in E2E_PORTS that
# nothing listens on (on 127.0.0.1 and on each ADDRESS) and that was not handed out before
# in this run. Set in this shell, not a subshell (`$(pick_port)`), so picks never repeat.
# The default range, 20000-31999, is below Linux's range for outgoing connections (32768
# and up): a port an outgoing connection happens to hold makes a server's bind fail.
pick_port() {
	local var=$1 low=${E2E_PORTS%-*} high=${E2E_PORTS#*-} p i a busy
	shift
	for i in $(seq 1 200); do
		p=$((low + RANDOM % (high - low + 1)))
		case " $E2E_USED_PORTS " in *" $p "*) continue ;; esac
		busy=
		for a in "$@"; do
			tcp_port_in_use "$p" "$a" && busy=1
		done
		[ -z "$busy" ] || continue
		if ! tcp_port_in_use "$p" && ! ss -Hltn "sport = :$p" 2>/dev/null | grep -q .; then
			E2E_USED_PORTS="$E2E_USED_PORTS $p"
			printf -v "$var" '%s' "$p"
			return 0
		fi
	done
	echo "no free port found" >&2
	return 1
}

# wait_tcp PORT [SECONDS]: until 127.0.0.1:PORT accepts connections.
wait_tcp() {
	local i
	for i in $(seq 1 $((${2:-10} * 10))); do
		tcp_port_in_use "$1" && return 0
		sleep 0.1
	done
	return 1
}

# True when a unix stream socket at PATH accepts a connection.
unix_socket_answers() {
	[ -S "$1" ] || return 1
	perl -MIO::Socket::UNIX -e \
		'exit(IO::Socket::UNIX->new(Type => SOCK_STREAM(), Peer => $ARGV[0]) ? 0 : 1)' "$1" \
		2>/dev/null
}

# wait_unix PATH [SECONDS]: until the unix socket at PATH accepts connections.
wait_unix() {
	local i
	for i in $(seq 1 $((${2:-10} * 10))); do
		unix_socket_answers "$1" && return 0
		sleep 0.1
	done
	return 1
}

# wait_for SECONDS COMMAND...: until COMMAND succeeds (polled every 0.1 s).
wait_for() {
	local secs=$1 i
	shift
	for i in $(seq 1 $((secs * 10))); do
		"$@" && return 0
		sleep 0.1
	done
	return 1
}

# stop_pid PID [SECONDS]: TERM, wait, then KILL, and reap it when it is this shell's
# child. Only for processes the caller started.
stop_pid() {
	local pid=$1 i
	[ -n "$pid" ] || return 0
	kill -TERM "$pid" 2>/dev/null || return 0
	for i in $(seq 1 $((${2:-5} * 10))); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null || true; fi
	wait "$pid" 2>/dev/null || true
	return 0
}
