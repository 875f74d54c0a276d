/**
 * The Redis engine's key schema and its Lua scripts. Every change that must be seen whole by
 * every node (a position given, a subscription counted, a dead node's sessions removed) is one
 * script, so Redis runs it atomically and every node sees the same order.
 *
 * Keys, all under the engine's prefix P (default "perihelion:"):
 *
 *   P ch:<channel>        hash   e: epoch, o: offset of the latest message, s: size, t: ttl (ms)
 *   P log:<channel>       stream the channel's latest messages (field p: the payload, with its
 *                                position), trimmed to `s` entries and `t` ms; expires after `t` ms
 *                                of silence (every message in it would be too old by then)
 *   P chans               zset   channels that have a position, scored by last use (LRU, for
 *                                `maxHistoryChannels`)
 *   P lru                 string the counter that scores `chans`
 *   P subs:<pattern>      set    clientIds subscribed to exactly this channel or pattern
 *   P sess:<clientId>     set    the patterns a session is subscribed to
 *   P counts              hash   pattern → number of subscribers (for `channels()`)
 *   P owner               hash   clientId → id of the node that holds the session
 *   P nodesess:<node>     set    the sessions a node holds
 *   P user                hash   clientId → its authenticated user (anonymous sessions: absent)
 *   P usess:<user>        set    the sessions of a user
 *   P nodes               hash   node id → time of its last heartbeat (ms, Redis clock)
 *   P leave:<[ch,member]> string a presence grace mark, holding its token: the member just left
 *                                the channel (it expires on its own; see Engine.markLeaving)
 *
 * The scripts compute key names from the prefix instead of declaring them in KEYS, so they need a
 * single Redis (standalone, or a primary with replicas or Sentinel), not Redis Cluster.
 * XTRIM MINID needs Redis 6.2 or later.
 *
 * PUBLISH and SUBSCRIBE send on the bus (redis-bus.ts) but know neither its channels nor its
 * format: they are given the channel and the text to send, and only write a position into it.
 */

const PRELUDE = `
local P = ARGV[1]
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function int(n) return string.format('%d', n) end
local function sub(cid, pattern)
  if redis.call('SADD', P .. 'subs:' .. pattern, cid) == 1 then
    redis.call('SADD', P .. 'sess:' .. cid, pattern)
    redis.call('HINCRBY', P .. 'counts', pattern, 1)
  end
end
local function unsub(cid, pattern)
  if redis.call('SREM', P .. 'subs:' .. pattern, cid) == 1 then
    redis.call('SREM', P .. 'sess:' .. cid, pattern)
    if redis.call('HINCRBY', P .. 'counts', pattern, -1) <= 0 then redis.call('HDEL', P .. 'counts', pattern) end
  end
end
local function own(cid, node, user)
  redis.call('HSET', P .. 'owner', cid, node)
  redis.call('SADD', P .. 'nodesess:' .. node, cid)
  if user and user ~= '' then
    redis.call('HSET', P .. 'user', cid, user)
    redis.call('SADD', P .. 'usess:' .. user, cid)
  end
end
local function drop_session(cid, node)
  local owner = redis.call('HGET', P .. 'owner', cid)
  redis.call('SREM', P .. 'nodesess:' .. node, cid)
  if owner and owner ~= node then return end
  for _, pattern in ipairs(redis.call('SMEMBERS', P .. 'sess:' .. cid)) do unsub(cid, pattern) end
  redis.call('DEL', P .. 'sess:' .. cid)
  redis.call('HDEL', P .. 'owner', cid)
  local user = redis.call('HGET', P .. 'user', cid)
  if user then
    redis.call('SREM', P .. 'usess:' .. user, cid)
    redis.call('HDEL', P .. 'user', cid)
  end
end
local function touch(channel, maxc)
  redis.call('ZADD', P .. 'chans', redis.call('INCR', P .. 'lru'), channel)
  local over = redis.call('ZCARD', P .. 'chans') - maxc
  if over > 0 then
    local gone = redis.call('ZPOPMIN', P .. 'chans', over)
    for i = 1, #gone, 2 do redis.call('DEL', P .. 'ch:' .. gone[i], P .. 'log:' .. gone[i]) end
  end
end
local function prune(channel, now)
  local ttl = tonumber(redis.call('HGET', P .. 'ch:' .. channel, 't') or '0')
  if ttl > 0 then redis.call('XTRIM', P .. 'log:' .. channel, 'MINID', int(now - ttl + 1)) end
end
local function payloads(channel, from_head, skip, count, out)
  if count <= 0 then return end
  local entries
  if from_head then
    entries = redis.call('XRANGE', P .. 'log:' .. channel, '-', '+', 'COUNT', skip + count)
    for i = skip + 1, #entries do table.insert(out, entries[i][2][2]) end
  else
    entries = redis.call('XREVRANGE', P .. 'log:' .. channel, '+', '-', 'COUNT', count)
    for i = #entries, 1, -1 do table.insert(out, entries[i][2][2]) end
  end
end
`;

/**
 * Gives a message its position and publishes it: epoch created if absent, offset + 1, the final
 * payload appended to the history, and one PUBLISH of it to every node, all in one step. The
 * position's JSON, {"epoch":…,"offset":…}, goes between the halves of the bus message's header
 * and between the halves of the payload; the header and then the payload are sent.
 * ARGV: P, channel, size, ttl, maxChannels, epoch if new, bus channel, header before the position,
 * header after it, payload before the position, payload after it. Returns {epoch, offset}.
 */
const PUBLISH = `${PRELUDE}
local channel, size, ttl = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local meta, log = P .. 'ch:' .. channel, P .. 'log:' .. channel
local epoch = redis.call('HGET', meta, 'e')
if not epoch then
  epoch = ARGV[6]
  redis.call('HSET', meta, 'e', epoch, 'o', 0)
end
local offset = redis.call('HINCRBY', meta, 'o', 1)
redis.call('HSET', meta, 's', size, 't', ttl)
local position = '{"epoch":' .. cjson.encode(epoch) .. ',"offset":' .. int(offset) .. '}'
local payload = ARGV[10] .. position .. ARGV[11]
redis.call('XADD', log, 'MAXLEN', size, '*', 'p', payload)
redis.call('XTRIM', log, 'MINID', int(now_ms() - ttl + 1))
redis.call('PEXPIRE', log, ttl)
touch(channel, tonumber(ARGV[5]))
redis.call('PUBLISH', ARGV[7], ARGV[8] .. position .. ARGV[9] .. payload)
return {epoch, offset}
`;

/**
 * Subscribes a session and reads what it needs for an exact seam, in one step: the session's
 * owner recorded, the subscription counted, the position of the exact channel (created if
 * absent), the messages missed on each channel to recover, then a fence published to this node.
 * ARGV: P, clientId, pattern, node, the node's channel, the fence message ('' for none), replay
 * budget, size (0: no position), ttl, maxChannels, epoch if new, then (channel, epoch, offset) for
 * each recovery.
 * Returns: epoch ('' for none), offset, then per recovery: recovered (1/0), epoch, offset of the
 * latest message (-1 for none), count, payloads.
 */
const SUBSCRIBE = `${PRELUDE}
local cid, pattern, node = ARGV[2], ARGV[3], ARGV[4]
own(cid, node)
sub(cid, pattern)
local out = {'', -1}
local size = tonumber(ARGV[8])
if size > 0 then
  local meta = P .. 'ch:' .. pattern
  local e = redis.call('HGET', meta, 'e')
  if e then
    out = {e, tonumber(redis.call('HGET', meta, 'o'))}
  else
    redis.call('HSET', meta, 'e', ARGV[11], 'o', 0, 's', size, 't', tonumber(ARGV[9]))
    touch(pattern, tonumber(ARGV[10]))
    out = {ARGV[11], 0}
  end
end
local budget = tonumber(ARGV[7])
local now = now_ms()
for i = 12, #ARGV, 3 do
  local channel, since_epoch, since = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  local meta = P .. 'ch:' .. channel
  local e = redis.call('HGET', meta, 'e')
  if not e then
    table.insert(out, 0); table.insert(out, ''); table.insert(out, -1); table.insert(out, 0)
  else
    local o = tonumber(redis.call('HGET', meta, 'o'))
    prune(channel, now)
    local missed = o - since
    local ok = e == since_epoch and missed >= 0 and missed <= budget and missed <= redis.call('XLEN', P .. 'log:' .. channel)
    if ok then
      budget = budget - missed
      table.insert(out, 1); table.insert(out, e); table.insert(out, o); table.insert(out, missed)
      payloads(channel, false, 0, missed, out)
    else
      table.insert(out, 0); table.insert(out, e); table.insert(out, o); table.insert(out, 0)
    end
  end
end
if ARGV[6] ~= '' then redis.call('PUBLISH', ARGV[5], ARGV[6]) end
return out
`;

/** ARGV: P, clientId, pattern. */
const UNSUBSCRIBE = `${PRELUDE}
unsub(ARGV[2], ARGV[3])
return 1
`;

/**
 * Records sessions of a node, their users and their subscriptions. ARGV: P, node, then
 * (clientId, user or '', count, patterns…)
 */
const REGISTER = `${PRELUDE}
local node = ARGV[2]
local i = 3
while i <= #ARGV do
  local cid, user, n = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  own(cid, node, user)
  for j = 1, n do sub(cid, ARGV[i + 2 + j]) end
  i = i + 3 + n
end
return 1
`;

/** ARGV: P, clientId, node. */
const REMOVE_SESSION = `${PRELUDE}
drop_session(ARGV[2], ARGV[3])
return 1
`;

/**
 * A page of a channel's history. ARGV: P, channel, since given ('1'/'0'), since epoch, since
 * offset, limit (-1: the channel's size). Returns {0} when the channel has no position; else
 * {1, epoch, offset, complete (1/0), payloads…}.
 */
const HISTORY = `${PRELUDE}
local channel = ARGV[2]
local meta = P .. 'ch:' .. channel
local e = redis.call('HGET', meta, 'e')
if not e then return {0} end
prune(channel, now_ms())
local o = tonumber(redis.call('HGET', meta, 'o'))
local len = redis.call('XLEN', P .. 'log:' .. channel)
local limit = tonumber(ARGV[6])
if limit < 0 then limit = tonumber(redis.call('HGET', meta, 's') or len) end
local out = {1, e, o, 1}
if ARGV[3] == '0' then
  payloads(channel, false, 0, math.min(limit, len), out)
  return out
end
local since = tonumber(ARGV[5])
local first = o - len + 1
if e ~= ARGV[4] or since > o or since < first - 1 then
  out[4] = 0
  return out
end
local missed = o - since
if missed <= limit then payloads(channel, false, 0, missed, out)
else payloads(channel, true, since + 1 - first, limit, out) end
return out
`;

/** Channels with a position and the messages kept in all (pruned by age first). ARGV: P. */
const STATS = `${PRELUDE}
local now = now_ms()
local chans = redis.call('ZRANGE', P .. 'chans', 0, -1)
local total = 0
for _, channel in ipairs(chans) do
  prune(channel, now)
  total = total + redis.call('XLEN', P .. 'log:' .. channel)
end
return {#chans, total}
`;

/**
 * A node says it is alive and learns which nodes are not. ARGV: P, node, node timeout (ms).
 * Returns {1 if this node was not registered (new, or declared dead meanwhile), dead nodes…}.
 */
const HEARTBEAT = `${PRELUDE}
local node, timeout = ARGV[2], tonumber(ARGV[3])
local now = now_ms()
local out = {redis.call('HSET', P .. 'nodes', node, now)}
local all = redis.call('HGETALL', P .. 'nodes')
for i = 1, #all, 2 do
  if all[i] ~= node and now - tonumber(all[i + 1]) > timeout then table.insert(out, all[i]) end
end
return out
`;

/**
 * Removes up to `batch` sessions of a node (and their subscriptions), and the node itself once
 * none is left. ARGV: P, node, node timeout (-1: remove even if alive, a node leaving), batch.
 * Returns the sessions left, or -1 when the node turned out to be alive.
 */
const REMOVE_NODE = `${PRELUDE}
local node, timeout = ARGV[2], tonumber(ARGV[3])
if timeout >= 0 then
  local seen = redis.call('HGET', P .. 'nodes', node)
  if seen and now_ms() - tonumber(seen) <= timeout then return -1 end
end
local key = P .. 'nodesess:' .. node
for _, cid in ipairs(redis.call('SPOP', key, tonumber(ARGV[4]))) do drop_session(cid, node) end
local left = redis.call('SCARD', key)
if left == 0 then redis.call('HDEL', P .. 'nodes', node) end
return left
`;

/**
 * Takes a presence grace mark only if it is still the one with this token (a node whose grace
 * ended must not take a newer mark of the same member). ARGV: P, key (without P), token.
 * Returns 1 when taken, 0 otherwise.
 */
const TAKE_MARK = `${PRELUDE}
if redis.call('GET', P .. ARGV[2]) == ARGV[3] then return redis.call('DEL', P .. ARGV[2]) end
return 0
`;

export const SCRIPTS = { PUBLISH, SUBSCRIBE, UNSUBSCRIBE, REGISTER, REMOVE_SESSION, HISTORY, STATS, HEARTBEAT, REMOVE_NODE, TAKE_MARK } as const;
export type ScriptName = keyof typeof SCRIPTS;
