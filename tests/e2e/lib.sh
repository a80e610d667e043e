# Shared helpers for the end-to-end scripts (bash). Source it:
#   . "$(dirname "$0")/../lib.sh"
# Nothing here starts or stops anything; the caller keeps its own trap.

E2E_PASSED=${E2E_PASSED:-0}
E2E_FAILED=${E2E_FAILED:-0}
E2E_USED_PORTS=${E2E_USED_PORTS:-}

# ok NAME / not_ok NAME [DETAIL]: one line per check; DETAIL (last 25 lines) as "#" comments.
ok() {
	E2E_PASSED=$((E2E_PASSED + 1))
	echo "ok - $1"
}

not_ok() {
	E2E_FAILED=$((E2E_FAILED + 1))
	echo "not ok - $1"
	if [ -n "${2:-}" ]; then
		printf '%s\n' "$2" | tail -n 25 | sed 's/^/#   /'
	fi
}

# check NAME COMMAND...: ok when COMMAND succeeds.
check() {
	local name=$1
	shift
	if "$@"; then
		ok "$name"
	else
		not_ok "$name"
	fi
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

# True when something accepts TCP connections on 127.0.0.1:PORT.
tcp_port_in_use() {
	(exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# Prints a free loopback TCP port in 20000-31999 not handed out before in this run.
# Ports come from 20000-31999, below Linux's range for outgoing connections (32768 and
# up): a port an outgoing connection happens to hold makes a server's bind fail.
pick_port() { # VARIABLE: set in this shell (not a subshell), so picks never repeat
	local p i
	for i in $(seq 1 200); do
		p=$((20000 + RANDOM % 12000))
		case " $E2E_USED_PORTS " in *" $p "*) continue ;; esac
		if ! tcp_port_in_use "$p" && ! ss -Hltn "sport = :$p" 2>/dev/null | grep -q .; then
			E2E_USED_PORTS="$E2E_USED_PORTS $p"
			printf -v "$1" '%s' "$p"
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

# stop_pid PID [SECONDS]: TERM, wait, then KILL. Only for processes the caller started.
stop_pid() {
	local pid=$1 i
	[ -n "$pid" ] || return 0
	kill -TERM "$pid" 2>/dev/null || return 0
	for i in $(seq 1 $((${2:-5} * 10))); do
		kill -0 "$pid" 2>/dev/null || return 0
		sleep 0.1
	done
	kill -KILL "$pid" 2>/dev/null
	return 0
}
