-- Counts one refused attempt against each key, with MemoryThrottle's rules (throttle.rs,
-- Shard::fail), atomically, so daemons sharing this Redis count as one.
--
-- KEYS: one hash per throttle key (a network, an account).
-- ARGV[1] now (unix ms)            ARGV[2] the secret's fingerprint
-- ARGV[3] window (ms)              ARGV[4] how long Redis keeps a counting key (ms)
-- ARGV[5] blocked until (unix ms), if this failure blocks
-- ARGV[6] how long Redis keeps a blocked key (ms)
-- ARGV[6 + i] failures that block KEYS[i]; 0 never blocks
-- Returns per key {failures, blocked until or 0, 1 if this failure set the block}.
--
-- Times come from the caller, not from Redis, so the rules read the daemon's clock as in
-- memory; PEXPIRE only lets Redis forget a key once no rule can need it.

local now = tonumber(ARGV[1])
local fingerprint = ARGV[2]
local window = tonumber(ARGV[3])
local slots = 4 -- RECENT_SECRETS
local out = {}
for i, key in ipairs(KEYS) do
  local threshold = tonumber(ARGV[6 + i])
  local h = redis.call('HMGET', key, 'failures', 'last', 'blocked', 'next', 's0', 's1', 's2', 's3')
  local failures = tonumber(h[1])
  local last = tonumber(h[2])
  local blocked = tonumber(h[3])
  if blocked and blocked > now then
    -- Attempts admitted just before the block started; the block stands as set.
    out[i] = {failures or 0, blocked, 0}
  else
    -- Never failed, window passed, or block served: start again with free failures.
    local fresh = failures == nil or failures == 0 or blocked ~= nil or last == nil
      or now - last >= window
    local repeated = false
    if fresh then
      redis.call('DEL', key)
      failures = 0
    else
      for s = 5, 4 + slots do
        if h[s] == fingerprint then
          repeated = true
        end
      end
    end
    if repeated then
      -- A stale client retrying: neither counts nor keeps the window open.
      out[i] = {failures, 0, 0}
    else
      local slot = 0
      if not fresh then
        slot = (tonumber(h[4]) or 0) % slots
      end
      failures = failures + 1
      redis.call('HSET', key, 'failures', failures, 'last', ARGV[1],
        's' .. slot, fingerprint, 'next', (slot + 1) % slots)
      if threshold > 0 and failures >= threshold then
        redis.call('HSET', key, 'blocked', ARGV[5])
        redis.call('PEXPIRE', key, ARGV[6])
        out[i] = {failures, tonumber(ARGV[5]), 1}
      else
        redis.call('PEXPIRE', key, ARGV[4])
        out[i] = {failures, 0, 0}
      end
    end
  end
end
return out
