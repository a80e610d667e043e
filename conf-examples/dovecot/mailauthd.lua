-- mailauthd.lua: Dovecot passdb/userdb adapter for mailauthd.
--
-- Dovecot's `lua` passdb hands each plaintext login (PLAIN, LOGIN) to
-- auth_password_verify() below, which forwards it to
-- mailauthd's auth socket (Dovecot "auth-client" protocol, v1). Dovecot 2.3
-- hands it the access token of an OAUTHBEARER or XOAUTH2 login the same way
-- (as the "password"); the adapter then passes the token on to mailauthd in
-- that same mechanism, so mailauthd checks the token itself (Dovecot 2.4's
-- token logins do not come through Lua: see 2.4/conf.d/auth-mailauthd-oauth2.conf.ext). The `lua`
-- userdb hands each user lookup to auth_userdb_lookup(), which asks
-- mailauthd's userdb socket (Dovecot "auth-master" protocol, USER command).
--
-- Works with Dovecot 2.3 (Lua passdb/userdb with `blocking=yes`) and
-- Dovecot 2.4 (`passdb lua { lua_file = ... }`, which runs in auth-worker
-- processes by default). Needs lua-socket (`socket.unix`); no other module.
--
-- Settings (all optional), highest precedence first:
--   Dovecot 2.4: `lua_settings { auth_socket = ... }` inside the passdb/userdb
--                block; Dovecot passes them to script_init(args).
--   Dovecot 2.3: environment variables MAILAUTHD_AUTH_SOCKET, ...; set them with
--                `import_environment = $import_environment MAILAUTHD_AUTH_SOCKET=...`
--                (2.3's lua passdb/userdb `args` accept only file=, blocking=,
--                cache_key= and scheme=; anything else stops the auth process).
--
--   auth_socket      path of mailauthd's auth socket     (/run/mailauthd/auth)
--   userdb_socket    path of mailauthd's userdb socket   (/run/mailauthd/userdb)
--   connect_timeout  seconds to connect and handshake   (2)
--   auth_timeout     seconds to wait for an AUTH reply   (10; keep it above
--                    mailauthd's longest failure delay)
--   userdb_timeout   seconds to wait for a USER reply    (5)
--   service_key      name of the service parameter sent to mailauthd:
--                    "service", "protocol" or "auto"     (auto: "protocol" on
--                    Dovecot 2.4, "service" on 2.3)
--
-- Results:
--   passdb  OK                        -> PASSDB_RESULT_OK, user renamed to the
--                                        canonical user= of the reply
--           FAIL with temp or
--             code=temp_fail          -> PASSDB_RESULT_INTERNAL_FAILURE
--           FAIL code=user_disabled   -> PASSDB_RESULT_USER_DISABLED
--           FAIL code=pass_expired    -> PASSDB_RESULT_PASS_EXPIRED
--           any other FAIL            -> PASSDB_RESULT_PASSWORD_MISMATCH
--             (the auth-client protocol never says whether a user exists)
--           socket error, timeout, or
--             connection closed       -> PASSDB_RESULT_INTERNAL_FAILURE
--             (mailauthd closes the connection after AUTH to signal a
--              temporary failure)
--   userdb  USER                      -> USERDB_RESULT_OK with the reply's fields
--           NOTFOUND                  -> USERDB_RESULT_USER_UNKNOWN
--           FAIL, socket error,
--             timeout                 -> USERDB_RESULT_INTERNAL_FAILURE
--
-- Each auth-worker process keeps one connection to each socket and reuses it.
--
-- The script is deliberately portable Lua (5.1 to 5.4): no bit operators.

local unix = require("socket.unix")
local socket = require("socket")

local settings = {
	auth_socket = "/run/mailauthd/auth",
	userdb_socket = "/run/mailauthd/userdb",
	connect_timeout = 2,
	auth_timeout = 10,
	userdb_timeout = 5,
	service_key = "auto",
}

local NUMERIC = { connect_timeout = true, auth_timeout = true, userdb_timeout = true }

local ENV = {
	auth_socket = "MAILAUTHD_AUTH_SOCKET",
	userdb_socket = "MAILAUTHD_USERDB_SOCKET",
	connect_timeout = "MAILAUTHD_CONNECT_TIMEOUT",
	auth_timeout = "MAILAUTHD_AUTH_TIMEOUT",
	userdb_timeout = "MAILAUTHD_USERDB_TIMEOUT",
	service_key = "MAILAUTHD_SERVICE_KEY",
}

local function set_setting(key, value, origin)
	if settings[key] == nil then
		error(string.format("mailauthd.lua: unknown setting %q (from %s)", key, origin))
	end
	if NUMERIC[key] then
		local n = tonumber(value)
		if n == nil or n <= 0 then
			error(string.format("mailauthd.lua: %s must be a positive number of seconds, got %q (from %s)",
				key, tostring(value), origin))
		end
		settings[key] = n
	elseif key == "service_key" then
		if value ~= "auto" and value ~= "service" and value ~= "protocol" then
			error(string.format("mailauthd.lua: service_key must be auto, service or protocol, got %q (from %s)",
				tostring(value), origin))
		end
		settings[key] = value
	else
		if type(value) ~= "string" or value == "" then
			error(string.format("mailauthd.lua: %s must not be empty (from %s)", key, origin))
		end
		settings[key] = value
	end
end

-- Dovecot calls script_init() once per loaded script: with no argument on 2.3,
-- with a table of lua_settings on 2.4. It must return 0 on 2.3.
function script_init(args)
	for key, var in pairs(ENV) do
		local value = os.getenv(var)
		if value ~= nil and value ~= "" then
			set_setting(key, value, var)
		end
	end
	if type(args) == "table" then
		for key, value in pairs(args) do
			set_setting(key, value, "lua_settings")
		end
	end
	return 0
end

---------------------------------------------------------------------------
-- Codec helpers

local B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
local B64CHAR = {}
for i = 1, 64 do
	B64CHAR[i - 1] = B64:sub(i, i)
end

local function base64(data)
	local out = {}
	local len = #data
	for i = 1, len, 3 do
		local a, b, c = data:byte(i, i + 2)
		local n = a * 65536 + (b or 0) * 256 + (c or 0)
		local c1 = math.floor(n / 262144)
		local c2 = math.floor(n / 4096) % 64
		local c3 = math.floor(n / 64) % 64
		local c4 = n % 64
		out[#out + 1] = B64CHAR[c1] .. B64CHAR[c2]
			.. (b and B64CHAR[c3] or "=")
			.. (c and B64CHAR[c4] or "=")
	end
	return table.concat(out)
end

-- Dovecot's tab-escaping: 0x01 -> 0x01 '1', TAB -> 0x01 't', CR -> 0x01 'r',
-- LF -> 0x01 'n'.
local ESCAPE = { ["\1"] = "\1" .. "1", ["\t"] = "\1t", ["\r"] = "\1r", ["\n"] = "\1n" }
local UNESCAPE = { ["1"] = "\1", t = "\t", r = "\r", n = "\n" }

local function tabescape(s)
	return (s:gsub("[\1\t\r\n]", ESCAPE))
end

local function tabunescape(s)
	return (s:gsub("\1(.)", function(c) return UNESCAPE[c] or c end))
end

local function split_tabs(line)
	local parts = {}
	for part in (line .. "\t"):gmatch("([^\t]*)\t") do
		parts[#parts + 1] = part
	end
	return parts
end

-- key=value fields (and bare flags, whose value is "") from parts[first..].
local function parse_fields(parts, first)
	local fields = {}
	for i = first, #parts do
		local part = parts[i]
		if part ~= "" then
			local key, value = part:match("^([^=]*)=(.*)$")
			if key == nil then
				key, value = part, ""
			end
			fields[tabunescape(key)] = tabunescape(value)
		end
	end
	return fields
end

local function own_pid()
	local f = io.open("/proc/self/stat", "r")
	if f ~= nil then
		local line = f:read("*l")
		f:close()
		local pid = line and tonumber(line:match("^(%d+)"))
		if pid ~= nil and pid > 0 then
			return pid
		end
	end
	-- Only used to label the connection; mailauthd (like Dovecot on
	-- non-login sockets) does not rely on it.
	return math.random(1, 2147483647)
end

---------------------------------------------------------------------------
-- Connections: one per socket per auth-worker process.

local conns = {}

local function close_conn(kind)
	local conn = conns[kind]
	conns[kind] = nil
	if conn ~= nil then
		conn.sock:close()
	end
end

-- Reads one line before the deadline. Returns line or nil, error.
local function read_line(conn, deadline)
	local remaining = deadline - socket.gettime()
	if remaining <= 0 then
		return nil, "timeout"
	end
	conn.sock:settimeout(remaining)
	local line, err = conn.sock:receive("*l")
	if line == nil then
		return nil, err
	end
	return line
end

local function send_all(conn, data)
	conn.sock:settimeout(settings.connect_timeout)
	local sent, err = conn.sock:send(data)
	if sent == nil then
		return nil, err
	end
	return true
end

-- A reused connection is alive when nothing is waiting to be read and the
-- peer has not closed it.
local function still_alive(conn)
	conn.sock:settimeout(0)
	local data, err, partial = conn.sock:receive(1)
	if data ~= nil or (partial ~= nil and partial ~= "") then
		return false -- unsolicited bytes: out of step, start afresh
	end
	return err == "timeout"
end

local function open_socket(path)
	local sock = unix.stream()
	sock:settimeout(settings.connect_timeout)
	local ok, err = sock:connect(path)
	if not ok then
		sock:close()
		return nil, string.format("connect(%s) failed: %s", path, tostring(err))
	end
	return { sock = sock, next_id = 1, path = path, mechs = {} }
end

local function next_id(conn)
	local id = conn.next_id
	conn.next_id = (id >= 2147483647) and 1 or (id + 1)
	return id
end

-- auth-client handshake. The client's VERSION and CPID go out first, so both
-- servers that greet at once (Dovecot 2.3, protocol 1.2) and servers that send
-- MECH..DONE only after the client's VERSION (Dovecot 2.4, protocol 1.3) work.
local function auth_connect()
	local conn, err = open_socket(settings.auth_socket)
	if conn == nil then
		return nil, err
	end
	local ok
	ok, err = send_all(conn, "VERSION\t1\t2\nCPID\t" .. own_pid() .. "\n")
	if not ok then
		conn.sock:close()
		return nil, string.format("%s: handshake send failed: %s", conn.path, tostring(err))
	end
	local deadline = socket.gettime() + settings.connect_timeout
	local version_seen, plain = false, false
	while true do
		local line
		line, err = read_line(conn, deadline)
		if line == nil then
			conn.sock:close()
			return nil, string.format("%s: handshake failed: %s", conn.path, tostring(err))
		end
		local parts = split_tabs(line)
		local cmd = parts[1]
		if cmd == "VERSION" then
			if parts[2] ~= "1" then
				conn.sock:close()
				return nil, string.format("%s: unsupported auth protocol version %s",
					conn.path, tostring(parts[2]))
			end
			version_seen = true
		elseif cmd == "MECH" then
			if parts[2] ~= nil and parts[2]:upper() == "PLAIN" then
				plain = true
			end
			if parts[2] ~= nil then
				conn.mechs[parts[2]:upper()] = true
			end
		elseif cmd == "DONE" then
			break
		end
		-- SPID, CUID, COOKIE and anything newer: not needed here.
	end
	if not version_seen then
		conn.sock:close()
		return nil, conn.path .. ": server sent no VERSION line"
	end
	if not plain then
		conn.sock:close()
		return nil, conn.path .. ": server does not offer the PLAIN mechanism"
	end
	return conn
end

-- auth-master handshake: our VERSION, then the server's VERSION (its SPID line
-- is skipped when replies are read).
local function userdb_connect()
	local conn, err = open_socket(settings.userdb_socket)
	if conn == nil then
		return nil, err
	end
	local ok
	ok, err = send_all(conn, "VERSION\t1\t0\n")
	if not ok then
		conn.sock:close()
		return nil, string.format("%s: handshake send failed: %s", conn.path, tostring(err))
	end
	local line
	line, err = read_line(conn, socket.gettime() + settings.connect_timeout)
	if line == nil then
		conn.sock:close()
		return nil, string.format("%s: handshake failed: %s", conn.path, tostring(err))
	end
	local parts = split_tabs(line)
	if parts[1] ~= "VERSION" or parts[2] ~= "1" then
		conn.sock:close()
		return nil, string.format("%s: unexpected handshake line: %s", conn.path, line:sub(1, 80))
	end
	return conn
end

local CONNECT = { auth = auth_connect, userdb = userdb_connect }

-- Returns conn, reused (bool) or nil, error.
local function get_conn(kind)
	local conn = conns[kind]
	if conn ~= nil then
		if still_alive(conn) then
			return conn, true
		end
		close_conn(kind)
	end
	local err
	conn, err = CONNECT[kind]()
	if conn == nil then
		return nil, err
	end
	conns[kind] = conn
	return conn, false
end

-- Sends one request line (built by make_line(id)). A reused connection that
-- turns out broken while sending is replaced once.
local function send_request(kind, make_line)
	for attempt = 1, 2 do
		local conn, reused = get_conn(kind)
		if conn == nil then
			return nil, reused
		end
		local id = next_id(conn)
		local ok, err = send_all(conn, make_line(id) .. "\n")
		if ok then
			return conn, id, reused
		end
		close_conn(kind)
		if not reused or attempt == 2 then
			return nil, string.format("%s: send failed: %s", conn.path, tostring(err))
		end
	end
end

local function service_param(req)
	local key = settings.service_key
	if key == "auto" then
		key = (req.protocol ~= nil) and "protocol" or "service"
	end
	local value = req.protocol or req.service or ""
	return key .. "=" .. tabescape(value)
end

local function optional_param(key, value)
	if value == nil or value == "" then
		return ""
	end
	return "\t" .. key .. "=" .. tabescape(value)
end

---------------------------------------------------------------------------
-- passdb

-- The SASL mechanisms whose "password" is an access token, and the client
-- message each sends (RFC 7628 for OAUTHBEARER; Google's XOAUTH2), rebuilt
-- from the user name and the token Dovecot hands over.
local TOKEN_MECHS = {
	OAUTHBEARER = function(user, token)
		-- RFC 5801 saslname: "," and "=" are escaped.
		local name = user:gsub("=", "=3D"):gsub(",", "=2C")
		return "n,a=" .. name .. ",\1auth=Bearer " .. token .. "\1\1"
	end,
	XOAUTH2 = function(user, token)
		return "user=" .. user .. "\1auth=Bearer " .. token .. "\1\1"
	end,
}

local function token_mech(req)
	local mech = req.mech and req.mech:upper() or ""
	if TOKEN_MECHS[mech] ~= nil then
		return mech
	end
	return nil
end

local function auth_line(req, password, id)
	local mech = token_mech(req)
	local line = "AUTH\t" .. id .. "\t" .. (mech or "PLAIN") .. "\t" .. service_param(req)
	if req.secured ~= nil and req.secured ~= "" then
		line = line .. "\tsecured"
	end
	line = line
		.. optional_param("session", req.session)
		.. optional_param("lip", req.local_ip)
		.. optional_param("rip", req.remote_ip)
	-- resp= must be the last parameter.
	if mech ~= nil then
		return line .. "\tresp=" .. base64(TOKEN_MECHS[mech](req.user, password))
	end
	return line .. "\tresp=" .. base64("\0" .. req.user .. "\0" .. password)
end

local function verify(req, password)
	if req.user == nil or req.user == "" then
		return dovecot.auth.PASSDB_RESULT_USER_UNKNOWN, "empty user name"
	end
	local mech = token_mech(req)
	if mech ~= nil then
		local conn, err = get_conn("auth")
		if conn == nil then
			return dovecot.auth.PASSDB_RESULT_INTERNAL_FAILURE, "mailauthd auth socket: " .. tostring(err)
		end
		if not conn.mechs[mech] then
			return dovecot.auth.PASSDB_RESULT_PASSWORD_MISMATCH,
				"mailauthd does not offer " .. mech .. " (it accepts tokens only with an [oauth] section)"
		end
	end
	local conn, id = send_request("auth", function(rid) return auth_line(req, password, rid) end)
	if conn == nil then
		return dovecot.auth.PASSDB_RESULT_INTERNAL_FAILURE, "mailauthd auth socket: " .. tostring(id)
	end
	local token_error_sent = false
	local deadline = socket.gettime() + settings.auth_timeout
	local want = tostring(id)
	while true do
		local line, err = read_line(conn, deadline)
		if line == nil then
			close_conn("auth")
			if err == "closed" then
				return dovecot.auth.PASSDB_RESULT_INTERNAL_FAILURE,
					"mailauthd closed the auth connection (temporary failure)"
			end
			return dovecot.auth.PASSDB_RESULT_INTERNAL_FAILURE,
				"mailauthd auth socket: " .. tostring(err) .. " waiting for reply"
		end
		local parts = split_tabs(line)
		local cmd = parts[1]
		if (cmd == "OK" or cmd == "FAIL" or cmd == "CONT") and parts[2] == want then
			local fields = parse_fields(parts, 3)
			if cmd == "OK" then
				local result = {}
				if fields.user ~= nil and fields.user ~= "" then
					result.user = fields.user
				end
				return dovecot.auth.PASSDB_RESULT_OK, result
			elseif cmd == "FAIL" then
				if fields.temp ~= nil or fields.code == "temp_fail" then
					return dovecot.auth.PASSDB_RESULT_INTERNAL_FAILURE,
						"mailauthd: temporary failure" .. (fields.reason and (": " .. fields.reason) or "")
				elseif fields.code == "user_disabled" then
					return dovecot.auth.PASSDB_RESULT_USER_DISABLED, "user disabled"
				elseif fields.code == "pass_expired" then
					return dovecot.auth.PASSDB_RESULT_PASS_EXPIRED, "password expired"
				end
				return dovecot.auth.PASSDB_RESULT_PASSWORD_MISMATCH, "authentication failed"
			end
			-- CONT for a token: mailauthd refused it and sent the RFC 7628
			-- error challenge; the client's side of the exchange is a
			-- single \1 (base64 AQ==), after which mailauthd answers FAIL.
			if token_mech(req) ~= nil and not token_error_sent then
				token_error_sent = true
				local ok, send_err = send_all(conn, "CONT\t" .. want .. "\tAQ==\n")
				if not ok then
					close_conn("auth")
					return dovecot.auth.PASSDB_RESULT_INTERNAL_FAILURE,
						"mailauthd auth socket: send failed: " .. tostring(send_err)
				end
			else
				-- PLAIN with an initial response needs no further round.
				close_conn("auth")
				return dovecot.auth.PASSDB_RESULT_INTERNAL_FAILURE,
					"mailauthd asked for another SASL round for " .. (token_mech(req) or "PLAIN")
			end
		end
		-- Anything else (a reply to another id, unknown lines) is skipped.
	end
end

-- Dovecot 2.3 and 2.4 call auth_password_verify(req, password) for every
-- plaintext login when the script defines it (their passdb "verify_plain").
function auth_password_verify(req, password)
	return verify(req, password)
end

-- Credential lookups (CRAM-MD5, DIGEST-MD5, SCRAM, `doveadm auth lookup`)
-- need the stored password, which mailauthd never hands out.
function auth_passdb_lookup(req)
	return dovecot.auth.PASSDB_RESULT_SCHEME_NOT_AVAILABLE,
		"mailauthd adapter verifies plaintext logins only (use PLAIN/LOGIN mechanisms)"
end

---------------------------------------------------------------------------
-- userdb

local function user_line(req, id)
	return "USER\t" .. id .. "\t" .. tabescape(req.user) .. "\t" .. service_param(req)
		.. optional_param("lip", req.local_ip)
		.. optional_param("rip", req.remote_ip)
end

function auth_userdb_lookup(req)
	if req.user == nil or req.user == "" then
		return dovecot.auth.USERDB_RESULT_USER_UNKNOWN, "empty user name"
	end
	-- USER lookups are idempotent: a reused connection that dies before
	-- answering is replaced once and the lookup repeated.
	for attempt = 1, 2 do
		local conn, id, reused = send_request("userdb", function(rid) return user_line(req, rid) end)
		if conn == nil then
			return dovecot.auth.USERDB_RESULT_INTERNAL_FAILURE, "mailauthd userdb socket: " .. tostring(id)
		end
		local deadline = socket.gettime() + settings.userdb_timeout
		local want = tostring(id)
		local retry = false
		while true do
			local line, err = read_line(conn, deadline)
			if line == nil then
				close_conn("userdb")
				if err == "closed" and reused and attempt == 1 then
					retry = true
					break
				end
				return dovecot.auth.USERDB_RESULT_INTERNAL_FAILURE,
					"mailauthd userdb socket: " .. tostring(err) .. " waiting for reply"
			end
			local parts = split_tabs(line)
			local cmd = parts[1]
			if parts[2] == want then
				if cmd == "USER" then
					local fields = parse_fields(parts, 4)
					local canonical = tabunescape(parts[3] or "")
					if canonical ~= "" and fields.user == nil then
						fields.user = canonical
					end
					return dovecot.auth.USERDB_RESULT_OK, fields
				elseif cmd == "NOTFOUND" then
					return dovecot.auth.USERDB_RESULT_USER_UNKNOWN, "user not found"
				elseif cmd == "FAIL" then
					local fields = parse_fields(parts, 3)
					return dovecot.auth.USERDB_RESULT_INTERNAL_FAILURE,
						"mailauthd: userdb lookup failed" .. (fields.reason and (": " .. fields.reason) or "")
				end
			end
			-- SPID and other lines are skipped.
		end
		if not retry then
			break
		end
	end
	return dovecot.auth.USERDB_RESULT_INTERNAL_FAILURE, "mailauthd userdb socket: connection lost"
end

function script_deinit()
	close_conn("auth")
	close_conn("userdb")
end
