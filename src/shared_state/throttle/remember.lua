-- Remembers a network an account's owner logged in from (throttle.rs, KnownNetworks):
-- the account's block never holds up a login from it. Keeps the newest few.
--
-- KEYS[1] the account's hash of known networks (network -> unix ms of the last success)
-- ARGV[1] the network   ARGV[2] now (unix ms)   ARGV[3] how long Redis keeps the hash (ms)
-- ARGV[4] networks kept per account

local key = KEYS[1]
redis.call('HSET', key, ARGV[1], ARGV[2])
redis.call('PEXPIRE', key, ARGV[3])
local keep = tonumber(ARGV[4])
local all = redis.call('HGETALL', key)
local count = #all / 2
while count > keep do
  local oldest, oldest_at = nil, nil
  for i = 1, #all, 2 do
    local at = tonumber(all[i + 1])
    if all[i] ~= '' and (oldest_at == nil or at < oldest_at) then
      oldest, oldest_at = i, at
    end
  end
  redis.call('HDEL', key, all[oldest])
  all[oldest] = ''
  count = count - 1
end
return count
