/**
 * The Redis engine's key schema and its Lua scripts. Every change that must be seen whole by
 * every node (a position given, a subscription counted, a dead node's sessions removed) is one
 * script, so Redis runs it atomically and every node sees the same order.
 *
 * Keys of the control plane, all under its prefix C (see redis-layout.ts: "perihelion:" on one
 * Redis, "perihelion:{c}" on a Redis Cluster, so that they share one hash slot):
 *
 *   C subs:<pattern>      set    clientIds subscribed to exactly this channel or pattern
 *   C sess:<clientId>     set    the patterns a session is subscribed to
 *   C counts              hash   pattern → number of subscribers (for `channels()`)
 *   C owner               hash   clientId → id of the node that holds the session
 *   C nodesess:<node>     set    the sessions a node holds
 *   C user                hash   clientId → its authenticated user (anonymous sessions: absent)
 *   C usess:<user>        set    the sessions of a user
 *   C nodes               hash   node id → time of its last heartbeat (ms, Redis clock)
 *   C layout              hash   partitions: how many data partitions the cluster's nodes use
 *   C states              hash   state channel → id of the node that holds it (alive while its
 *                                heartbeat is, see CLAIM_STATE)
 *   C leave:<[ch,member]> string a presence grace mark, holding its token: the member just left
 *                                the channel (it expires on its own; see Engine.markLeaving)
 *   C removed:<node>      string another node removed this node's sessions, taking it for dead
 *                                (taken by its next heartbeat, if it was only paused; 1 h)
 *
 * Keys of one data partition, under its prefix D (one hash slot per partition on a cluster):
 *
 *   D ch:<channel>        hash   e: epoch, o: offset of the latest message, s: size, t: ttl (ms)
 *   D log:<channel>       stream the channel's latest messages (field p: the payload, with its
 *                                position), trimmed to `s` entries and `t` ms; expires after `t` ms
 *                                of silence (every message in it would be too old by then)
 *   D chans               zset   the partition's channels that have messages, scored by last
 *                                publish (LRU, for the partition's share of `maxHistoryChannels`)
 *   D ychans              zset   the same for channels whose history yields (presence channels):
 *                                past the share, these are forgotten first
 *   D fresh               zset   channels given a position by a subscribe but no message yet,
 *                                by when: the share again, for these alone (so that subscribes
 *                                to ever new names push out no channel's history)
 *   D lru                 string the counter that scores `chans`
 *   D once:<client>       zset   a publisher's latest publish ids or idempotency keys (Engine
 *                                `once`), scored by when: the newest `keep`, none older than
 *                                `forMs`; the set expires `forMs` after the last
 *   D bus                 pub/sub the partition's broadcasts, and the fences of reads made in it
 *
 * A script touches the keys of the control plane, or of one partition, only. It is given one key
 * of that slot (KEYS[1]) so that a Redis Cluster client sends it to the shard holding the slot,
 * and computes the other names from the prefix (ARGV[1]). XTRIM MINID needs Redis 6.2 or later;
 * SPUBLISH (a cluster's sharded pub/sub) Redis 7.
 *
 * PUBLISH and READ send on the bus (redis-bus.ts) but know neither its format nor whether Redis
 * is a cluster: they are given the publish command and the text to send, and only write a
 * position into it.
 */

const CLOCK = `
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function int(n) return string.format('%d', n) end
`;

/** Functions of the control plane; C is its prefix. */
const CONTROL = `${CLOCK}
local C = ARGV[1]
local function sub(cid, pattern)
  if redis.call('SADD', C .. 'subs:' .. pattern, cid) == 1 then
    redis.call('SADD', C .. 'sess:' .. cid, pattern)
    redis.call('HINCRBY', C .. 'counts', pattern, 1)
  end
end
local function unsub(cid, pattern)
  if redis.call('SREM', C .. 'subs:' .. pattern, cid) == 1 then
    redis.call('SREM', C .. 'sess:' .. cid, pattern)
    if redis.call('HINCRBY', C .. 'counts', pattern, -1) <= 0 then redis.call('HDEL', C .. 'counts', pattern) end
  end
end
local function own(cid, node, user)
  redis.call('HSET', C .. 'owner', cid, node)
  redis.call('SADD', C .. 'nodesess:' .. node, cid)
  if user and user ~= '' then
    redis.call('HSET', C .. 'user', cid, user)
    redis.call('SADD', C .. 'usess:' .. user, cid)
  end
end
local function drop_session(cid, node)
  local owner = redis.call('HGET', C .. 'owner', cid)
  redis.call('SREM', C .. 'nodesess:' .. node, cid)
  if owner and owner ~= node then return nil end
  local patterns = redis.call('SMEMBERS', C .. 'sess:' .. cid)
  for _, pattern in ipairs(patterns) do unsub(cid, pattern) end
  redis.call('DEL', C .. 'sess:' .. cid)
  redis.call('HDEL', C .. 'owner', cid)
  local user = redis.call('HGET', C .. 'user', cid)
  if user then
    redis.call('SREM', C .. 'usess:' .. user, cid)
    redis.call('HDEL', C .. 'user', cid)
  end
  return {user or '', patterns}
end
`;

/** Functions of one data partition; D is its prefix. */
const DATA = `${CLOCK}
local D = ARGV[1]
local function forget(order, count)
  local gone = redis.call('ZPOPMIN', D .. order, count)
  for i = 1, #gone, 2 do redis.call('DEL', D .. 'ch:' .. gone[i], D .. 'log:' .. gone[i]) end
  return #gone / 2
end
local function touch(channel, maxc, yields)
  redis.call('ZADD', D .. (yields and 'ychans' or 'chans'), redis.call('INCR', D .. 'lru'), channel)
  local over = redis.call('ZCARD', D .. 'ychans') + redis.call('ZCARD', D .. 'chans') - maxc
  if over > 0 then over = over - forget('ychans', over) end
  if over > 0 then forget('chans', over) end
end
local function fresh(channel, maxc)
  redis.call('ZADD', D .. 'fresh', redis.call('INCR', D .. 'lru'), channel)
  local over = redis.call('ZCARD', D .. 'fresh') - maxc
  if over > 0 then forget('fresh', over) end
end
local function prune(channel, now)
  local ttl = tonumber(redis.call('HGET', D .. 'ch:' .. channel, 't') or '0')
  if ttl > 0 then redis.call('XTRIM', D .. 'log:' .. channel, 'MINID', int(now - ttl + 1)) end
end
-- A publish that its publisher may send again (the Engine's once; ARGV from i on: client, id,
-- keep, forMs; client '' for none): false when the id is among the publisher's kept here (a
-- resend), else true and the id kept: at most keep ids, each for forMs.
local function first_time(i)
  if ARGV[i] == '' then return true end
  local key, id, now = D .. 'once:' .. ARGV[i], ARGV[i + 1], now_ms()
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - tonumber(ARGV[i + 3]))
  if redis.call('ZSCORE', key, id) then return false end
  -- Trimmed before the id is added: a set that never passes 128 entries stays compact (listpack).
  redis.call('ZREMRANGEBYRANK', key, 0, -tonumber(ARGV[i + 2]))
  redis.call('ZADD', key, now, id)
  redis.call('PEXPIRE', key, ARGV[i + 3])
  return true
end
local function payloads(channel, from_head, skip, count, out)
  if count <= 0 then return end
  local entries
  if from_head then
    entries = redis.call('XRANGE', D .. 'log:' .. channel, '-', '+', 'COUNT', skip + count)
    for i = skip + 1, #entries do table.insert(out, entries[i][2][2]) end
  else
    entries = redis.call('XREVRANGE', D .. 'log:' .. channel, '+', '-', 'COUNT', count)
    for i = #entries, 1, -1 do table.insert(out, entries[i][2][2]) end
  end
end
`;

/**
 * Gives a message its position and publishes it: epoch created if absent, offset + 1, the final
 * payload appended to the history, and one publish of it on the partition's bus, all in one step.
 * The position's JSON, {"epoch":…,"offset":…}, goes between the halves of the bus message's
 * header and between the halves of the payload; the header and then the payload are sent.
 * ARGV: D, channel, size, ttl, maxChannels of the partition, epoch if new, publish command,
 * header before the position, header after it, payload before the position, payload after it,
 * '1' if the channel's history yields, then the publication's once (client, id, keep, forMs; ''
 * for none). Returns {epoch, offset}; nil, publishing nothing, for a resend.
 */
const PUBLISH = `${DATA}
if not first_time(13) then return false end
local channel, size, ttl = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local meta, log = D .. 'ch:' .. channel, D .. 'log:' .. channel
local epoch = redis.call('HGET', meta, 'e')
if not epoch then
  epoch = ARGV[6]
  redis.call('HSET', meta, 'e', epoch, 'o', 0)
end
local offset = redis.call('HINCRBY', meta, 'o', 1)
-- The first message of a position a subscribe gave: from now on a channel with messages.
if offset == 1 then redis.call('ZREM', D .. 'fresh', channel) end
redis.call('HSET', meta, 's', size, 't', ttl)
local position = '{"epoch":' .. cjson.encode(epoch) .. ',"offset":' .. int(offset) .. '}'
local payload = ARGV[10] .. position .. ARGV[11]
redis.call('XADD', log, 'MAXLEN', size, '*', 'p', payload)
redis.call('XTRIM', log, 'MINID', int(now_ms() - ttl + 1))
redis.call('PEXPIRE', log, ttl)
touch(channel, tonumber(ARGV[5]), ARGV[12] == '1')
redis.call(ARGV[7], D .. 'bus', ARGV[8] .. position .. ARGV[9] .. payload)
return {epoch, offset}
`;

/**
 * Publishes a message of a channel without history that its client may send again: once (see
 * first_time) on the partition's bus. ARGV: D, publish command, the bus message, then the
 * publication's once (client, id, keep, forMs). Returns 1 when sent, 0 for a resend.
 */
const SEND_ONCE = `${DATA}
if not first_time(4) then return 0 end
redis.call(ARGV[2], D .. 'bus', ARGV[3])
return 1
`;

/**
 * Keeps an id of a publisher that may send again (see first_time), for what is not published on a
 * channel (a delivery to one session). ARGV: D, then the once (client, id, keep, forMs). Returns 1
 * the first time, 0 for a repeat.
 */
const ONCE = `${DATA}
return first_time(2) and 1 or 0
`;

/** Forgets an id ONCE kept (what it named could not be done, so a repeat deserves a try). ARGV: D, client, id. */
const FORGET_ONCE = `${DATA}
return redis.call('ZREM', D .. 'once:' .. ARGV[2], ARGV[3])
`;

/**
 * What a subscribe reads in one partition for an exact seam, in one step: the position of the
 * channel subscribed to (created if absent), the messages missed on each channel to recover, then
 * a fence published on the partition's bus (see redis-seam.ts).
 * ARGV: D, publish command, the fence message ('' for none), the channel whose position is wanted
 * ('' for none), its size and ttl, maxChannels of the partition, epoch if new, replay budget, then
 * (channel, epoch, offset) for each recovery.
 * Returns: epoch ('' for none), offset, then per recovery: recovered (1/0), epoch, offset of the
 * latest message (-1 for none), count, payloads.
 */
const READ = `${DATA}
local out = {'', -1}
local channel = ARGV[4]
if channel ~= '' then
  local meta = D .. 'ch:' .. channel
  local e = redis.call('HGET', meta, 'e')
  if e then
    out = {e, tonumber(redis.call('HGET', meta, 'o'))}
  else
    redis.call('HSET', meta, 'e', ARGV[8], 'o', 0, 's', tonumber(ARGV[5]), 't', tonumber(ARGV[6]))
    fresh(channel, tonumber(ARGV[7]))
    out = {ARGV[8], 0}
  end
end
local budget = tonumber(ARGV[9])
local now = now_ms()
for i = 10, #ARGV, 3 do
  local channel, since_epoch, since = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  local meta = D .. 'ch:' .. channel
  local e = redis.call('HGET', meta, 'e')
  if not e then
    table.insert(out, 0); table.insert(out, ''); table.insert(out, -1); table.insert(out, 0)
  else
    local o = tonumber(redis.call('HGET', meta, 'o'))
    prune(channel, now)
    local missed = o - since
    local ok = e == since_epoch and missed >= 0 and missed <= budget and missed <= redis.call('XLEN', D .. 'log:' .. channel)
    if ok then
      budget = budget - missed
      table.insert(out, 1); table.insert(out, e); table.insert(out, o); table.insert(out, missed)
      payloads(channel, false, 0, missed, out)
    else
      table.insert(out, 0); table.insert(out, e); table.insert(out, o); table.insert(out, 0)
    end
  end
end
if ARGV[3] ~= '' then redis.call(ARGV[2], D .. 'bus', ARGV[3]) end
return out
`;

/** Records a subscription and who holds the session. ARGV: C, clientId, pattern, node. */
const SUBSCRIBE = `${CONTROL}
own(ARGV[2], ARGV[4])
sub(ARGV[2], ARGV[3])
return 1
`;

/** ARGV: C, clientId, pattern. */
const UNSUBSCRIBE = `${CONTROL}
unsub(ARGV[2], ARGV[3])
return 1
`;

/**
 * Records sessions of a node, their users and their subscriptions. ARGV: C, node, then
 * (clientId, user or '', count, patterns…)
 */
const REGISTER = `${CONTROL}
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

/** ARGV: C, clientId, node. */
const REMOVE_SESSION = `${CONTROL}
drop_session(ARGV[2], ARGV[3])
return 1
`;

/**
 * A page of a channel's history. ARGV: D, channel, since given ('1'/'0'), since epoch, since
 * offset, limit (-1: the channel's size). Returns {0} when the channel has no position; else
 * {1, epoch, offset, complete (1/0), payloads…}.
 */
const HISTORY = `${DATA}
local channel = ARGV[2]
local meta = D .. 'ch:' .. channel
local e = redis.call('HGET', meta, 'e')
if not e then return {0} end
prune(channel, now_ms())
local o = tonumber(redis.call('HGET', meta, 'o'))
local len = redis.call('XLEN', D .. 'log:' .. channel)
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

/** A partition's channels with a position and the messages they keep (pruned by age first). ARGV: D. */
const STATS = `${DATA}
local now = now_ms()
local count, total = redis.call('ZCARD', D .. 'fresh'), 0
for _, order in ipairs({'chans', 'ychans'}) do
  local chans = redis.call('ZRANGE', D .. order, 0, -1)
  count = count + #chans
  for _, channel in ipairs(chans) do
    prune(channel, now)
    total = total + redis.call('XLEN', D .. 'log:' .. channel)
  end
end
return {count, total}
`;

/**
 * A node says it is alive and learns which nodes are not. ARGV: C, node, node timeout (ms).
 * Returns {1 if this node was not registered (new, or declared dead meanwhile), 1 if another node
 * removed its sessions meanwhile (the mark REMOVE_NODE leaves, taken here), dead nodes…}.
 */
const HEARTBEAT = `${CONTROL}
local node, timeout = ARGV[2], tonumber(ARGV[3])
local now = now_ms()
local out = {redis.call('HSET', C .. 'nodes', node, now), redis.call('DEL', C .. 'removed:' .. node)}
local all = redis.call('HGETALL', C .. 'nodes')
for i = 1, #all, 2 do
  if all[i] ~= node and now - tonumber(all[i + 1]) > timeout then table.insert(out, all[i]) end
end
return out
`;

/**
 * Removes up to `batch` sessions of a node (and their subscriptions), and the node itself once
 * none is left. ARGV: C, node, node timeout (-1: remove even if alive, a node leaving), batch.
 * Returns {sessions left, then for each session removed: clientId, user ('' for none), count,
 * patterns…}, or {-1} when the node turned out to be alive.
 */
const REMOVE_NODE = `${CONTROL}
local node, timeout = ARGV[2], tonumber(ARGV[3])
if timeout >= 0 then
  local seen = redis.call('HGET', C .. 'nodes', node)
  if seen and now_ms() - tonumber(seen) <= timeout then return {-1} end
end
local key = C .. 'nodesess:' .. node
local out = {0}
for _, cid in ipairs(redis.call('SPOP', key, tonumber(ARGV[4]))) do
  local dropped = drop_session(cid, node)
  if dropped then
    table.insert(out, cid); table.insert(out, dropped[1]); table.insert(out, #dropped[2])
    for _, pattern in ipairs(dropped[2]) do table.insert(out, pattern) end
  end
end
local left = redis.call('SCARD', key)
if left == 0 then redis.call('HDEL', C .. 'nodes', node) end
-- Taken for dead by another node: if it comes back (it was only paused), it says its sessions
-- again (their presence leaves were published).
if timeout >= 0 and #out > 1 then redis.call('SET', C .. 'removed:' .. node, 1, 'PX', 3600000) end
out[1] = left
return out
`;

/**
 * Takes a presence grace mark only if it is still the one with this token (a node whose grace
 * ended must not take a newer mark of the same member). ARGV: C, key (without C), token.
 * Returns 1 when taken, 0 otherwise.
 */
const TAKE_MARK = `${CONTROL}
if redis.call('GET', C .. ARGV[2]) == ARGV[3] then return redis.call('DEL', C .. ARGV[2]) end
return 0
`;

/**
 * Agrees on the number of data partitions: a node that counts differently from the live nodes
 * would put channels where they do not look. While no node is alive (heartbeat within the node
 * timeout) the number may change; what the old partitions kept is then left to expire.
 * ARGV: C, partitions, node timeout (ms). Returns the number the live nodes use.
 */
const LAYOUT = `${CONTROL}
local now, timeout = now_ms(), tonumber(ARGV[3])
for i, seen in ipairs(redis.call('HGETALL', C .. 'nodes')) do
  if i % 2 == 0 and now - tonumber(seen) <= timeout then
    redis.call('HSETNX', C .. 'layout', 'partitions', ARGV[2])
    return tonumber(redis.call('HGET', C .. 'layout', 'partitions'))
  end
end
redis.call('HSET', C .. 'layout', 'partitions', ARGV[2])
return tonumber(ARGV[2])
`;

/**
 * The number of partitions the live nodes under this control prefix use: 0 when no node there is
 * alive, -1 when they said none. Read only. ARGV: C, node timeout (ms).
 */
const LIVE_LAYOUT = `${CONTROL}
local now, timeout = now_ms(), tonumber(ARGV[2])
for i, seen in ipairs(redis.call('HGETALL', C .. 'nodes')) do
  if i % 2 == 0 and now - tonumber(seen) <= timeout then
    return tonumber(redis.call('HGET', C .. 'layout', 'partitions') or '-1')
  end
end
return 0
`;

/**
 * Claims a state channel for a node, unless a live node (heartbeat within the node timeout) other
 * than it holds it. ARGV: C, node, channel, node timeout (ms). Returns '' when the node holds it
 * now, else the holder.
 */
const CLAIM_STATE = `${CONTROL}
local node, channel, timeout = ARGV[2], ARGV[3], tonumber(ARGV[4])
local holder = redis.call('HGET', C .. 'states', channel)
if holder and holder ~= node then
  local seen = redis.call('HGET', C .. 'nodes', holder)
  if seen and now_ms() - tonumber(seen) <= timeout then return holder end
end
redis.call('HSET', C .. 'states', channel, node)
return ''
`;

/**
 * The live node holding a state channel, or '' when none is (or only a dead one). Read only.
 * ARGV: C, channel, node timeout (ms).
 */
const STATE_HOLDER = `${CONTROL}
local holder = redis.call('HGET', C .. 'states', ARGV[2])
if not holder then return '' end
local seen = redis.call('HGET', C .. 'nodes', holder)
if seen and now_ms() - tonumber(seen) <= tonumber(ARGV[3]) then return holder end
return ''
`;

/** Gives up a node's claim of a state channel, if it still has it. ARGV: C, node, channel. */
const RELEASE_STATE = `local C = ARGV[1]
if redis.call('HGET', C .. 'states', ARGV[3]) == ARGV[2] then return redis.call('HDEL', C .. 'states', ARGV[3]) end
return 0
`;

/**
 * The cluster's browser key (security/browser-cookie.ts): the first node's, kept for every node
 * after it. ARGV: C, the key this node would set (its own, or the one it knew before Redis lost it).
 */
const BROWSER_KEY = `local C = ARGV[1]
redis.call('HSETNX', C .. 'layout', 'browser-key', ARGV[2])
return redis.call('HGET', C .. 'layout', 'browser-key')
`;

/**
 * Stores a message for one node and publishes the name of its key on that node's channel, in one
 * step (redis-node-mail.ts): the key is there when the name arrives, whatever route the client
 * gives commands. Run with the node's channel as the prefix N (its hash slot on a cluster).
 * ARGV: N, the key's name after N, the message, ms to keep it, publish command, the text to
 * publish. Returns how many heard it; when nobody did, nothing is kept.
 */
const MAIL = `local key = ARGV[1] .. ARGV[2]
redis.call('SET', key, ARGV[3], 'PX', ARGV[4])
local heard = redis.call(ARGV[5], ARGV[1], ARGV[6])
if heard == 0 then redis.call('DEL', key) end
return heard
`;

/** Scripts of the control plane (run with the control prefix), of one partition (its prefix), of one node's channel. */
export const CONTROL_SCRIPTS = { SUBSCRIBE, UNSUBSCRIBE, REGISTER, REMOVE_SESSION, HEARTBEAT, REMOVE_NODE, TAKE_MARK, LAYOUT, LIVE_LAYOUT, BROWSER_KEY, CLAIM_STATE, STATE_HOLDER, RELEASE_STATE } as const;
export const DATA_SCRIPTS = { PUBLISH, SEND_ONCE, ONCE, FORGET_ONCE, READ, HISTORY, STATS } as const;
export const NODE_SCRIPTS = { MAIL } as const;
export const SCRIPTS = { ...CONTROL_SCRIPTS, ...DATA_SCRIPTS, ...NODE_SCRIPTS } as const;
export type ControlScript = keyof typeof CONTROL_SCRIPTS;
export type DataScript = keyof typeof DATA_SCRIPTS;
export type ScriptName = keyof typeof SCRIPTS;
