-- Checks one policy request against a user's sending limits and, if every window has
-- room, counts it: the rules of the memory counters (policy/limits.rs, Counters), in one
-- atomic run, so daemons sharing this Redis count as one.
--
-- KEYS[i], i <= #windows: one hash per window length {opened, messages, recipients}
-- KEYS[#windows + 1]: the user's messages in arrival order (a list of instances)
-- KEYS[#windows + 2]: this message's hash {counted, r:<recipient hash>...}
--   (the last two only with an instance)
-- ARGV[1] now (unix s)   ARGV[2] 'peek', 'rcpt' or 'msg'
-- ARGV[3] '1' with an instance   ARGV[4] the instance   ARGV[5] recipient hash or ''
-- ARGV[6] recipients of the message ('msg')   ARGV[7] what message key names start with
-- ARGV[8] messages remembered per user   ARGV[9] recipients remembered per message
-- ARGV[10] how long Redis keeps a message (ms)   ARGV[11] slack added to every expiry (ms)
-- ARGV[12 + 3(i-1)] seconds, then the message cap and recipient cap of window i (-1: none)
-- Returns {0, 0} when counted (or for 'peek', when one more message fits), else
-- {i, 1 for messages or 2 for recipients}: the first cap the request would exceed.
--
-- Times come from the caller, as in memory; PEXPIRE only lets Redis forget what no rule
-- can need any more.

local now = tonumber(ARGV[1])
local kind = ARGV[2]
local has_instance = ARGV[3] == '1'
local instance = ARGV[4]
local rcpt = ARGV[5]
local recipients = tonumber(ARGV[6])
local per_user = tonumber(ARGV[8])
local per_message = tonumber(ARGV[9])
local keep = tonumber(ARGV[10])
local slack = tonumber(ARGV[11])
local windows = #KEYS
if has_instance then
  windows = windows - 2
end

-- What the request adds: a message unless this instance is known, recipients unless
-- counted for it already.
local new_messages, new_recipients = 1, 0
local known = false
local message = nil
if has_instance then
  message = KEYS[windows + 2]
  known = redis.call('EXISTS', message) == 1
end
if kind == 'rcpt' then
  if known then
    new_messages = 0
    if rcpt ~= '' and redis.call('HEXISTS', message, 'r:' .. rcpt) == 1 then
      new_recipients = 0
    else
      new_recipients = 1
    end
  else
    new_recipients = 1
  end
elseif kind == 'msg' then
  if known then
    new_messages = 0
    local counted = tonumber(redis.call('HGET', message, 'counted')) or 0
    new_recipients = math.max(0, recipients - counted)
  else
    new_recipients = recipients
  end
end

-- Each window as it stands now: a closed one starts again (as memory's, refused or not).
local state = {}
local exceeded = nil
for i = 1, windows do
  local base = 12 + 3 * (i - 1)
  local seconds = tonumber(ARGV[base])
  local caps = {tonumber(ARGV[base + 1]), tonumber(ARGV[base + 2])}
  local h = redis.call('HMGET', KEYS[i], 'opened', 'messages', 'recipients')
  local opened = tonumber(h[1])
  local used = {tonumber(h[2]) or 0, tonumber(h[3]) or 0}
  if opened == nil or now >= opened + seconds or (used[1] == 0 and used[2] == 0) then
    if opened ~= nil then
      redis.call('DEL', KEYS[i])
    end
    opened = now
    used = {0, 0}
  end
  state[i] = {seconds, opened, used}
  local new = {new_messages, new_recipients}
  for what = 1, 2 do
    if exceeded == nil and caps[what] >= 0 and new[what] > 0 and used[what] + new[what] > caps[what] then
      exceeded = {i, what}
    end
  end
end
if exceeded ~= nil then
  return exceeded
end
if kind == 'peek' then
  return {0, 0}
end

for i = 1, windows do
  local seconds, opened, used = state[i][1], state[i][2], state[i][3]
  redis.call('HSET', KEYS[i], 'opened', opened, 'messages', used[1] + new_messages,
    'recipients', used[2] + new_recipients)
  redis.call('PEXPIRE', KEYS[i], (opened + seconds - now) * 1000 + slack)
end

-- Without an instance there is nothing to recognise the message by next time.
if has_instance then
  local list = KEYS[windows + 1]
  if not known then
    -- Its key may have expired while its name stayed in the list.
    redis.call('LREM', list, 0, instance)
    if redis.call('LLEN', list) >= per_user then
      local oldest = redis.call('LPOP', list)
      if oldest then
        redis.call('DEL', ARGV[7] .. oldest)
      end
    end
    redis.call('RPUSH', list, instance)
    redis.call('HSET', message, 'counted', 0)
  end
  redis.call('HINCRBY', message, 'counted', new_recipients)
  if rcpt ~= '' and redis.call('HLEN', message) - 1 < per_message then
    redis.call('HSET', message, 'r:' .. rcpt, 1)
  end
  redis.call('PEXPIRE', message, keep + slack)
  redis.call('PEXPIRE', list, keep + slack)
end
return {0, 0}
