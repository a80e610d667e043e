-- Feeds a successful login back, with MemoryThrottle's rules (throttle.rs, Shard::succeed),
-- atomically: a network is halved at most once per interval, an account is cleared.
--
-- KEYS: one hash per throttle key.
-- ARGV[1] now (unix ms)   ARGV[2] window (ms)   ARGV[3] relax interval (ms)
-- ARGV[3 + i] 'network' or 'account', the kind of KEYS[i]

local now = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local interval = tonumber(ARGV[3])
for i, key in ipairs(KEYS) do
  if ARGV[3 + i] == 'account' then
    -- The owner has the password, including a login checked while a block was set.
    redis.call('DEL', key)
  else
    local h = redis.call('HMGET', key, 'failures', 'last', 'blocked', 'relaxed')
    local failures = tonumber(h[1])
    local last = tonumber(h[2])
    local blocked = tonumber(h[3])
    local relaxed = tonumber(h[4])
    if failures == nil then
      -- Nothing held against this network.
    elseif blocked then
      -- A network stays blocked until the block ends or a postmaster lifts it.
      if blocked <= now then
        redis.call('DEL', key)
      end
    elseif failures == 0 or last == nil or now - last >= window then
      redis.call('DEL', key)
    elseif relaxed == nil or now - relaxed >= interval then
      local halved = math.floor(failures / 2)
      if halved == 0 then
        redis.call('DEL', key)
      else
        -- The expiry stays: halving does not keep the window open.
        redis.call('HSET', key, 'failures', halved, 'relaxed', ARGV[1])
      end
    end
  end
end
return 0
