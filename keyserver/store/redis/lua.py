"""The Redis store's Lua scripts (keyserver.store.redis): each runs atomically in Redis.

Records are hashes with one field per dataclass field, so scripts read and set single fields.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from keyserver.models import Device, KeyRecord, Session

CREATE_ACCOUNT = """
if redis.call('EXISTS', KEYS[1], KEYS[2]) > 0 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('SET', KEYS[2], ARGV[1])
return 1
"""
# KEYS: record, optional index zset; ARGV: index score, index member, field, value, ...
INSERT = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
if KEYS[2] then redis.call('ZADD', KEYS[2], ARGV[1], ARGV[2]) end
return 1
"""
# ARGV: field, new value, accepted current values...; a value is '=' .. text, or '' for absent
COMPARE_AND_SET = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local current = redis.call('HGET', KEYS[1], ARGV[1])
current = current and ('=' .. current) or ''
for i = 3, #ARGV do
  if ARGV[i] == current then
    if ARGV[2] == '' then redis.call('HDEL', KEYS[1], ARGV[1])
    else redis.call('HSET', KEYS[1], ARGV[1], string.sub(ARGV[2], 2)) end
    return 1
  end
end
return 0
"""
# KEYS: the vehicle's hash, its ownership history (a list of "since:until:owner", until empty
# while open); ARGV: new owner, expected owner (each '' or '=' .. id), now, retention horizon.
# The rules are the Store contract's (set_owner). (Lua: ``until`` is a keyword, hence ``ended``.)
SET_OWNER = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local current = redis.call('HGET', KEYS[1], 'owner_id')
current = current and ('=' .. current) or ''
if current ~= ARGV[2] then return 0 end
if ARGV[1] == '' then redis.call('HDEL', KEYS[1], 'owner_id')
else redis.call('HSET', KEYS[1], 'owner_id', string.sub(ARGV[1], 2)) end
local now = ARGV[3]
local first = redis.call('LLEN', KEYS[2]) == 0
local last = redis.call('LINDEX', KEYS[2], -1)
local since, ended, owner
if last then since, ended, owner = string.match(last, '^(%d+):(%d*):(.*)$') end
if last and ended == '' then
  redis.call('LSET', KEYS[2], -1, since .. ':' .. now .. ':' .. owner)
elseif current ~= '' then
  redis.call('RPUSH', KEYS[2], '0:' .. now .. ':' .. string.sub(current, 2))
  first = false
end
if ARGV[1] ~= '' then
  redis.call('RPUSH', KEYS[2], (first and '0' or now) .. '::' .. string.sub(ARGV[1], 2))
end
while redis.call('LLEN', KEYS[2]) > 1 do
  local _, head_ended = string.match(redis.call('LINDEX', KEYS[2], 0), '^(%d+):(%d*):')
  if head_ended == '' or tonumber(head_ended) >= tonumber(ARGV[4]) then break end
  redis.call('LPOP', KEYS[2])
end
return 1
"""
TRY_PAIRING = """
local p = redis.call('HMGET', KEYS[1], 'code_hash', 'expires_at', 'attempts_left')
if not p[1] then return 'none' end
if tonumber(ARGV[2]) >= tonumber(p[2]) then return 'expired' end
if tonumber(p[3]) <= 0 then return 'exhausted' end
if p[1] == ARGV[1] then redis.call('DEL', KEYS[1]) return 'paired' end
redis.call('HINCRBY', KEYS[1], 'attempts_left', -1)
return 'wrong'
"""
# a nonce's single use, shared by the scripts that spend one: 1 if claimed now, 0 if it is held
_CLAIM = """
local function claim(key, now, expires_at, ttl)
  local held = redis.call('GET', key)
  if held and tonumber(held) > tonumber(now) then return 0 end
  redis.call('SET', key, expires_at, 'EX', ttl)
  return 1
end
"""
# ARGV: now, expires_at, ttl
CLAIM_NONCE = _CLAIM + "return claim(KEYS[1], ARGV[1], ARGV[2], ARGV[3])"


def _lua_fields(cls: Any) -> str:
    """A record's field names in declaration order, as Lua arguments (for HMGET)."""
    return ", ".join(f"'{field.name}'" for field in dataclasses.fields(cls))


def _lua_index(cls: Any, name: str) -> int:
    """Where field ``name`` is in HMGET's answer for the record (Lua counts from 1)."""
    return 1 + [field.name for field in dataclasses.fields(cls)].index(name)


# Any number of refresh contexts, one after the other (see keyserver.store.redis.shared_trips),
# each with
# KEYS: session, device, key, nonce
# ARGV: "now flags expires_at ttl" (flags: d to read the device, k the key, c to claim the nonce;
#       expires_at and ttl empty unless c), the public key the proof was checked with (or empty)
# Returns for each the three records as HMGET values in field order (an empty list when not
# read) and the claim: 1, 0, or -1 when not made. Few arguments: packing each one costs.
REFRESH_KEYS, REFRESH_ARGS = 4, 2
REFRESH_CONTEXTS = (
    _CLAIM
    + f"""
local answers = {{}}
for i = 0, #KEYS / {REFRESH_KEYS} - 1 do
  local k, a = {REFRESH_KEYS} * i, {REFRESH_ARGS} * i
  local now, flags, expires_at, ttl = string.match(ARGV[a + 1], '^(%d+) (%a*) (%d*) (%d*)$')
  local session = redis.call('HMGET', KEYS[k + 1], {_lua_fields(Session)})
  local device = {{}}
  if string.find(flags, 'd', 1, true) then
    device = redis.call('HMGET', KEYS[k + 2], {_lua_fields(Device)})
  end
  local key = {{}}
  if string.find(flags, 'k', 1, true) then
    key = redis.call('HMGET', KEYS[k + 3], {_lua_fields(KeyRecord)})
  end
  local fresh = -1
  if string.find(flags, 'c', 1, true) then
    local session_expires = session[{_lua_index(Session, "expires_at")}]
    local account = session[{_lua_index(Session, "account_id")}]
    if session_expires and tonumber(session_expires) > tonumber(now) and account
        and device[{_lua_index(Device, "account_id")}] == account
        and device[{_lua_index(Device, "public_key")}] == ARGV[a + 2] then
      fresh = claim(KEYS[k + 4], now, expires_at, ttl)
    end
  end
  answers[i + 1] = {{session, device, key, fresh}}
end
return answers
"""
)
# The ledger of one vehicle: revseq (its sequence), revlog (zset: sequence -> entry), revuntil
# (zset: until -> sequence), revsubj (hash: kind:subject -> entry): one entry per subject. An
# entry is the text "sequence:kind:before:until:subject" (the subject's raw bytes last), so a
# script can merge and renumber it. Numbers go through string.format('%d'): Lua's own
# tostring would print large integers as floats.
_LEDGER = """
local function ledger_put(kind, subject, before, until_)
  local field = kind .. ':' .. subject
  local old = redis.call('HGET', KEYS[4], field)
  if old then
    local seq, b, u = string.match(old, '^(%d+):[^:]*:(%d+):(%d+):')
    b, u = tonumber(b), tonumber(u)
    if b >= before and u >= until_ then return false end
    if b > before then before = b end
    if u > until_ then until_ = u end
    redis.call('ZREM', KEYS[2], old)
    redis.call('ZREM', KEYS[3], seq)
  end
  local seq = redis.call('INCR', KEYS[1])
  local member = string.format('%d:%s:%d:%d:', seq, kind, before, until_) .. subject
  redis.call('ZADD', KEYS[2], seq, member)
  redis.call('ZADD', KEYS[3], until_, seq)
  redis.call('HSET', KEYS[4], field, member)
  return true
end
local function ledger_head()
  return tonumber(redis.call('GET', KEYS[1]) or '0')
end
"""
# KEYS: revseq, revlog, revuntil, revsubj; ARGV: kind, subject, before, until, ...
APPEND_REVOCATIONS = (
    _LEDGER
    + """
for i = 1, #ARGV, 4 do
  ledger_put(ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3]))
end
return ledger_head()
"""
)
# KEYS: revseq, revlog, revuntil, revsubj, holders, then per key: its record and its device's
#       live-key marker (livekey:{vin}:{device}, which names the device's live key: ADD_KEY)
# ARGV: status ('=' .. value), before, until, holder kind, vin, the number of expected
#       statuses, the expected ones ('=' .. value), 1 if this is a revocation, then per key:
#       its id and its holder id ('' for none)
WITHDRAW_KEYS = (
    _LEDGER
    + """
local status, before, until_, kind = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local vin, n_expected = ARGV[5], tonumber(ARGV[6])
local revoking = ARGV[7 + n_expected] == '1'
local changed = {}
for n = 1, (#KEYS - 5) / 2 do
  local record_key, marker = KEYS[4 + 2 * n], KEYS[5 + 2 * n]
  local key_id, holder = ARGV[6 + n_expected + 2 * n], ARGV[7 + n_expected + 2 * n]
  local record = redis.call('HMGET', record_key, 'status', 'vin')
  local current = record[1] and ('=' .. record[1]) or ''
  local allowed = false
  for j = 7, 6 + n_expected do
    if ARGV[j] == current then allowed = true end
  end
  if allowed and record[2] == vin and current ~= status then
    -- the entry first: Redis does not undo a script's earlier writes when a later one fails,
    -- and an entry without the status change is safe (a retry finds the key live and ends it)
    if holder ~= '' then ledger_put(kind, holder, before, until_) end
    redis.call('HSET', record_key, 'status', string.sub(status, 2))
    changed[#changed + 1] = n
    if revoking then
      local live = redis.call('GET', marker)
      if live == key_id then redis.call('DEL', marker) end
      -- the claim ends with the device's last live key: its ledger entry counts it from now
      if holder ~= '' and (not live or live == key_id) then
        redis.call('ZREM', KEYS[5], holder)
      end
    end
  end
end
return {ledger_head(), changed}
"""
)
# KEYS: revseq, revlog, revuntil, revsubj; ARGV: since, above
RENUMBER_REVOCATIONS = (
    _LEDGER
    + """
local head = ledger_head()
if tonumber(ARGV[2]) > head then
  head = tonumber(ARGV[2])
  redis.call('SET', KEYS[1], string.format('%d', head))
end
local members = redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. ARGV[1], '+inf')
for _, old in ipairs(members) do
  local seq, kind, b, u, subject = string.match(old, '^(%d+):([^:]*):(%d+):(%d+):(.*)$')
  redis.call('ZREM', KEYS[2], old)
  redis.call('ZREM', KEYS[3], seq)
  redis.call('HDEL', KEYS[4], kind .. ':' .. subject)
  ledger_put(kind, subject, tonumber(b), tonumber(u))
end
return ledger_head()
"""
)
# KEYS: revseq, revlog, revuntil, revsubj, holders (zset: holder -> claim expiry), the device's
#       live-key marker, the key record, the vehicle's key index
# ARGV: holder, counted until, limit, now, holder kind, key id, created at, field, value, ...
ADD_KEY = """
local live = redis.call('GET', KEYS[6])
if live and live ~= ARGV[6] then return 'device_has_key' end
redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', ARGV[4])
local counted = {}
local n = 0
for _, h in ipairs(redis.call('ZRANGE', KEYS[5], 0, -1)) do
  counted[h] = true
  n = n + 1
end
local prefix = ARGV[5] .. ':'
for _, field in ipairs(redis.call('HKEYS', KEYS[4])) do
  if string.sub(field, 1, #prefix) == prefix then
    local h = string.sub(field, #prefix + 1)
    if not counted[h] then counted[h] = true n = n + 1 end
  end
end
if not counted[ARGV[1]] and n >= tonumber(ARGV[3]) then return 'too_many_holders' end
redis.call('ZADD', KEYS[5], 'GT', ARGV[2], ARGV[1])  -- GT adds a new member too
redis.call('DEL', KEYS[7])
redis.call('HSET', KEYS[7], unpack(ARGV, 8))
redis.call('ZADD', KEYS[8], ARGV[7], ARGV[6])
redis.call('SET', KEYS[6], ARGV[6])
return 'added'
"""
# KEYS: revlog, revuntil, revsubj; ARGV: before
PRUNE_REVOCATIONS = """
local bound = '(' .. ARGV[1]
local sequences = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', bound)
for _, sequence in ipairs(sequences) do
  for _, member in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], sequence, sequence)) do
    local kind, subject = string.match(member, '^%d+:([^:]*):%d+:%d+:(.*)$')
    redis.call('HDEL', KEYS[3], kind .. ':' .. subject)
  end
  redis.call('ZREMRANGEBYSCORE', KEYS[1], sequence, sequence)
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', bound)
return #sequences
"""
# KEYS: command record, idempotency key, the vehicle's command index
# ARGV: command id, expire at (Unix s), index score (expires_at), prune the index below this,
#       field, value, ...
# Returns the id stored under the idempotency key (this command's if it was inserted), or false
# when the command id is taken.
PUT_COMMAND = """
local existing = redis.call('GET', KEYS[2])
if existing then return existing end
if redis.call('EXISTS', KEYS[1]) == 1 then return false end
redis.call('HSET', KEYS[1], unpack(ARGV, 5))
redis.call('EXPIREAT', KEYS[1], ARGV[2])
redis.call('SET', KEYS[2], ARGV[1], 'EXAT', ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', '(' .. ARGV[4])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1])
return ARGV[1]
"""
# KEYS: command record; ARGV: vin, new status, detail, updated_at, accepted statuses...
SET_COMMAND_STATUS = """
if redis.call('HGET', KEYS[1], 'vin') ~= ARGV[1] then return 0 end
local current = redis.call('HGET', KEYS[1], 'status')
for i = 5, #ARGV do
  if ARGV[i] == current then
    redis.call('HSET', KEYS[1], 'status', ARGV[2], 'detail', ARGV[3], 'updated_at', ARGV[4])
    return 1
  end
end
return 0
"""
# KEYS: the vehicle's audit hash (seq -> event); ARGV: ttl, seq, event, seq, event, ...
ADD_AUDIT_BATCH = """
local added = 0
for i = 2, #ARGV, 2 do
  added = added + redis.call('HSETNX', KEYS[1], ARGV[i], ARGV[i + 1])
end
redis.call('EXPIRE', KEYS[1], ARGV[1])
return added
"""
