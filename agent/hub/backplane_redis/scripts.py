"""The Lua scripts of the Redis backplane: every change of presence is one atomic script.

Redis runs a script without interleaving any other command (EVAL, redis.io "Scripting
with Lua"), so a connection limit checked and taken in one script holds cluster-wide, and
no node ever sees a connection half registered. ``ARGV[1]`` is always the key prefix
(:mod:`.naming` documents the keys); the scripts build key names from their arguments, so
they run on a single Redis (or a primary with replicas), not on a Redis Cluster.

Records are JSON (Redis embeds ``cjson``): ``[node, user_id, name, [groups...]]``. An empty
group list may come back as ``{}`` (cjson cannot tell an empty array from an empty object).
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
)
