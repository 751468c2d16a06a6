"""The Lua scripts of the Redis backplane: every change of presence is one atomic script.

Redis runs a script without interleaving any other command (EVAL, redis.io "Scripting
with Lua"), so a connection limit checked and taken in one script holds cluster-wide, and
no node ever sees a connection half registered. ``ARGV[1]`` is always the key prefix
(:mod:`.naming` documents the keys); the scripts build key names from their arguments, so
they run on a single Redis (or a primary with replicas), not on a Redis Cluster.

Records are JSON (Redis embeds ``cjson``): ``[node, user_id, name, [groups...]]``. An empty
group list may come back as ``{}`` (cjson cannot tell an empty array from an empty object).

The login throttle's scripts (``THROTTLE_*``, used by :mod:`.throttle`) name their one record
in ``KEYS[1]`` instead. Numbers cross the script boundary as text written with ``%.17g``:
Redis truncates a Lua number reply to an integer, and 17 significant digits bring a double
back exactly, so a delay computed here equals the one the pure table computes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Final

__all__ = [
    "ADD_MANY",
    "ALL",
    "ATTACH",
    "CLEAR_NODE",
    "DETACH",
    "HEARTBEAT",
    "JOIN",
    "LEAVE",
    "MEMBERS",
    "PUBLISH_CONNECTION",
    "PUBLISH_GROUP",
    "PUBLISH_USER",
    "REAP",
    "STATS",
    "THROTTLE_FAILED",
    "THROTTLE_RETRY_AFTER",
    "Script",
]


@dataclass(frozen=True, slots=True)
class Script:
    """A Lua script and its SHA-1 (what EVALSHA names it by)."""

    name: str
    source: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        # EVALSHA's name for a script is the SHA-1 of its text: an identifier, not security.
        digest = hashlib.sha1(self.source.encode(), usedforsecurity=False).hexdigest()
        object.__setattr__(self, "sha", digest)


# Shared by the scripts that remove or add connections.
_COMMON: Final = """
local P = ARGV[1]
local function drop(scid)
  local raw = redis.call('HGET', P .. 'conn', scid)
  if not raw then return nil end
  local rec = cjson.decode(raw)
  for _, g in ipairs(rec[4]) do
    redis.call('ZREM', P .. 'group:' .. g, scid)
    if redis.call('HINCRBY', P .. 'groups', g, -1) <= 0 then
      redis.call('HDEL', P .. 'groups', g)
    end
  end
  redis.call('HDEL', P .. 'conn', scid)
  local ukey = P .. 'user:' .. rec[2]
  redis.call('ZREM', ukey, scid)
  if redis.call('EXISTS', ukey) == 0 and redis.call('GET', P .. 'name:' .. rec[3]) == rec[2] then
    redis.call('DEL', P .. 'name:' .. rec[3])
  end
  redis.call('SREM', P .. 'node-conns:' .. rec[1], scid)
  return rec
end
local function add(node, scid, uid, name, groups)
  redis.call('HSET', P .. 'conn', scid, cjson.encode({node, uid, name, groups}))
  redis.call('ZADD', P .. 'user:' .. uid, redis.call('INCR', P .. 'seq'), scid)
  redis.call('SET', P .. 'name:' .. name, uid)
  redis.call('SADD', P .. 'node-conns:' .. node, scid)
  for _, g in ipairs(groups) do
    redis.call('ZADD', P .. 'group:' .. g, redis.call('INCR', P .. 'seq'), scid)
    redis.call('HINCRBY', P .. 'groups', g, 1)
  end
end
local function mark_alive(node, ttl)
  redis.call('SET', P .. 'node:' .. node, '1', 'PX', ttl)
  redis.call('SADD', P .. 'nodes', node)
end
"""


def _script(name: str, body: str) -> Script:
    return Script(name, _COMMON + body)


# ARGV: P, node, scid, user_id, name, max -> 1 attached, 0 the user is at the limit.
ATTACH: Final = _script(
    "attach",
    """
if redis.call('ZCARD', P .. 'user:' .. ARGV[4]) >= tonumber(ARGV[6]) then return 0 end
add(ARGV[2], ARGV[3], ARGV[4], ARGV[5], {})
return 1
""",
)

# ARGV: P, scid -> 1 if it was registered.
DETACH: Final = _script("detach", "if drop(ARGV[2]) then return 1 end\nreturn 0\n")

# ARGV: P, scid, group -> 1 joined, 0 unknown connection or already a member.
JOIN: Final = _script(
    "join",
    """
local scid, group = ARGV[2], ARGV[3]
local raw = redis.call('HGET', P .. 'conn', scid)
if not raw then return 0 end
local rec = cjson.decode(raw)
for _, g in ipairs(rec[4]) do if g == group then return 0 end end
rec[4][#rec[4] + 1] = group
redis.call('HSET', P .. 'conn', scid, cjson.encode(rec))
redis.call('ZADD', P .. 'group:' .. group, redis.call('INCR', P .. 'seq'), scid)
redis.call('HINCRBY', P .. 'groups', group, 1)
return 1
""",
)

# ARGV: P, scid, group -> 1 left, 0 not a member.
LEAVE: Final = _script(
    "leave",
    """
local scid, group = ARGV[2], ARGV[3]
local raw = redis.call('HGET', P .. 'conn', scid)
if not raw then return 0 end
local rec = cjson.decode(raw)
local kept, found = {}, false
for _, g in ipairs(rec[4]) do
  if g == group then found = true else kept[#kept + 1] = g end
end
if not found then return 0 end
rec[4] = kept
redis.call('HSET', P .. 'conn', scid, cjson.encode(rec))
redis.call('ZREM', P .. 'group:' .. group, scid)
if redis.call('HINCRBY', P .. 'groups', group, -1) <= 0 then
  redis.call('HDEL', P .. 'groups', group)
end
return 1
""",
)

# ARGV: P, group -> flat [scid, user_id, name, ...] in join order.
MEMBERS: Final = _script(
    "members",
    """
local out = {}
for _, scid in ipairs(redis.call('ZRANGE', P .. 'group:' .. ARGV[2], 0, -1)) do
  local raw = redis.call('HGET', P .. 'conn', scid)
  if raw then
    local rec = cjson.decode(raw)
    out[#out + 1] = scid
    out[#out + 1] = rec[2]
    out[#out + 1] = rec[3]
  end
end
return out
""",
)

# ARGV: P, group, exclude scid or '', payload -> recipients (publishes only if any).
PUBLISH_GROUP: Final = _script(
    "publish_group",
    """
local key = P .. 'group:' .. ARGV[2]
local n = redis.call('ZCARD', key)
if n > 0 and ARGV[3] ~= '' and redis.call('ZSCORE', key, ARGV[3]) then n = n - 1 end
if n > 0 then redis.call('PUBLISH', P .. 'to-group:' .. ARGV[2], ARGV[4]) end
return n
""",
)

# ARGV: P, user_id, exclude scid or '', payload -> recipients (publishes only if any).
PUBLISH_USER: Final = _script(
    "publish_user",
    """
local key = P .. 'user:' .. ARGV[2]
local n = redis.call('ZCARD', key)
if n > 0 and ARGV[3] ~= '' and redis.call('ZSCORE', key, ARGV[3]) then n = n - 1 end
if n > 0 then redis.call('PUBLISH', P .. 'to-user:' .. ARGV[2], ARGV[4]) end
return n
""",
)

# ARGV: P, scid, payload -> nodes that received it (0: not connected, or its node is gone).
PUBLISH_CONNECTION: Final = _script(
    "publish_connection",
    """
local raw = redis.call('HGET', P .. 'conn', ARGV[2])
if not raw then return 0 end
return redis.call('PUBLISH', P .. 'to-node:' .. cjson.decode(raw)[1], ARGV[3])
""",
)

# ARGV: P -> [connections, groups] of the cluster.
STATS: Final = _script(
    "stats", "return {redis.call('HLEN', P .. 'conn'), redis.call('HLEN', P .. 'groups')}\n"
)

# ARGV: P, node, ttl ms -> 1 if the node's key was still there (0: expired, reaped or lost).
HEARTBEAT: Final = _script(
    "heartbeat",
    """
local had = redis.call('EXISTS', P .. 'node:' .. ARGV[2])
mark_alive(ARGV[2], ARGV[3])
return had
""",
)

# ARGV: P, this node -> flat [scid, user_id, name, groups JSON, ...] of every connection of
# every other registered node whose key has expired; those nodes are forgotten, so exactly
# one reaper gets each dead connection.
REAP: Final = _script(
    "reap",
    """
local out = {}
for _, node in ipairs(redis.call('SMEMBERS', P .. 'nodes')) do
  if node ~= ARGV[2] and redis.call('EXISTS', P .. 'node:' .. node) == 0 then
    redis.call('SREM', P .. 'nodes', node)
    for _, scid in ipairs(redis.call('SMEMBERS', P .. 'node-conns:' .. node)) do
      local rec = drop(scid)
      if rec then
        out[#out + 1] = scid
        out[#out + 1] = rec[2]
        out[#out + 1] = rec[3]
        out[#out + 1] = cjson.encode(rec[4])
      end
    end
    redis.call('DEL', P .. 'node-conns:' .. node)
  end
end
return out
""",
)

# ARGV: P, node, ttl ms -> connections removed. Forgets every connection of the node; with
# ttl > 0 marks it alive (the start of a re-registration), with 0 removes it (a clean stop).
CLEAR_NODE: Final = _script(
    "clear_node",
    """
local n = 0
for _, scid in ipairs(redis.call('SMEMBERS', P .. 'node-conns:' .. ARGV[2])) do
  if drop(scid) then n = n + 1 end
end
redis.call('DEL', P .. 'node-conns:' .. ARGV[2])
if tonumber(ARGV[3]) > 0 then
  mark_alive(ARGV[2], ARGV[3])
else
  redis.call('DEL', P .. 'node:' .. ARGV[2])
  redis.call('SREM', P .. 'nodes', ARGV[2])
end
return n
""",
)

# ARGV: P, node, then per connection: scid, user_id, name, group count, groups... -> count.
ADD_MANY: Final = _script(
    "add_many",
    """
local i, n = 3, 0
while i <= #ARGV do
  local count = tonumber(ARGV[i + 3])
  local groups = {}
  for j = 1, count do groups[j] = ARGV[i + 3 + j] end
  drop(ARGV[i])
  add(ARGV[2], ARGV[i], ARGV[i + 1], ARGV[i + 2], groups)
  i = i + 4 + count
  n = n + 1
end
return n
""",
)

# The login throttle (agent.hub.login.FailureThrottle's arithmetic, step for step). A record
# is a hash: f failures, u when they were last counted, l locked until (seconds). ``now`` is
# Redis's own clock (TIME) so that the nodes' clocks never matter; a test may pass one.
_THROTTLE: Final = """
local function clock(given)
  if given ~= '' then return tonumber(given) end
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local function forgiven(failures, updated, now, forgive)
  return math.max(0, failures - math.max(0, now - updated) / forgive)
end
local function num(x) return string.format('%.17g', x) end
"""

# KEYS: record. ARGV: now or '', forgive_seconds -> seconds locked out (text); a record with
# nothing left to remember (unlocked, fully forgiven) is deleted.
THROTTLE_RETRY_AFTER: Final = Script(
    "throttle_retry_after",
    _THROTTLE
    + """
local rec = redis.call('HMGET', KEYS[1], 'f', 'u', 'l')
if not rec[1] then return '0' end
local now = clock(ARGV[1])
local locked = tonumber(rec[3])
if locked <= now and forgiven(tonumber(rec[1]), tonumber(rec[2]), now, tonumber(ARGV[2])) == 0 then
  redis.call('DEL', KEYS[1])
  return '0'
end
return num(math.max(0, locked - now))
""",
)

# KEYS: record. ARGV: now or '', free_failures, base_delay, max_delay, forgive_seconds ->
# the lockout this failure starts (text). The record expires once it is both unlocked and
# fully forgiven, so made-up names and addresses leave nothing behind.
THROTTLE_FAILED: Final = Script(
    "throttle_failed",
    _THROTTLE
    + """
local now = clock(ARGV[1])
local free, base, cap = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local forgive = tonumber(ARGV[5])
local rec = redis.call('HMGET', KEYS[1], 'f', 'u')
local failures = 1
if rec[1] then failures = forgiven(tonumber(rec[1]), tonumber(rec[2]), now, forgive) + 1 end
local delay, over = 0, failures - free
if over > 0 then delay = math.min(cap, base * 2 ^ math.min(math.max(0, over - 1), 62)) end
redis.call('HSET', KEYS[1], 'f', num(failures), 'u', num(now), 'l', num(now + delay))
local ttl = math.max(failures * forgive, delay)
redis.call('PEXPIRE', KEYS[1], string.format('%d', math.ceil(ttl * 1000) + 1))
return num(delay)
""",
)

ALL: Final = (
    ATTACH,
    DETACH,
    JOIN,
    LEAVE,
    MEMBERS,
    PUBLISH_GROUP,
    PUBLISH_USER,
    PUBLISH_CONNECTION,
    STATS,
    HEARTBEAT,
    REAP,
    CLEAR_NODE,
    ADD_MANY,
    THROTTLE_RETRY_AFTER,
    THROTTLE_FAILED,
)
