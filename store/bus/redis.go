package bus

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/redis/go-redis/v9"
)

// The bus is sharded: a deployment has Shards shard channels (WithShards, default 16), and a
// topic belongs to shard fnv32a(topic) mod Shards. Shard k's hash tag is {b<k>}; its channel and
// the keys of its topics carry it, so they lie in one Redis Cluster slot, served by one primary,
// and the publish script can update a topic's stream and SPUBLISH to its shard channel in one
// atomic step on any topology. Broadcasts to every connection (no topic) travel on shard 0.
//
//	<prefix>bus:{b<k>}                   shard channel k (SPUBLISH / SSUBSCRIBE)
//	<prefix>bus:{b0}:shards              the deployment's shard count (every node must agree; it
//	                                     expires a minute after the last node stopped)
//	<prefix>topic:{b<k>}:<topic>:stream  hash: epoch (the stream's identity), seq (its last seq),
//	                                     srv (run_id of the Redis server that wrote it)
//	<prefix>topic:{b<k>}:<topic>:hist    list: the last kept entries, oldest first
//	<prefix>topic:{b<k>}:<topic>:dedup   sorted set: message keys published within the dedup
//	                                     window, scored by when they expire
//	<prefix>broadcast:{b0}:dedup         the same, for broadcasts without a topic
//
// The epoch and the counter are fields of one key, so nothing (eviction, expiry, FLUSHDB, a
// restart without persistence, a failover to an empty replica) can take one and leave the other:
// a counter that starts again always starts under a new epoch. The history list always belongs
// to the current epoch: the script that creates a stream deletes whatever list it finds.

// publishScript assigns the topic's next seq, appends the message to its history (trimmed to
// the last ARGV[2] entries) and publishes it: one atomic round trip, so every subscriber sees the
// topic's messages in seq order. Go sends the JSON of the message and of the envelope without
// their tails; the script closes them around the seq (and, in the published copy, the epoch),
// which is why a history entry always ends with ,"seq":<n>} and the seq of any entry can be read
// back from its end.
//
// When the topic has no stream (never published, expired, lost with Redis's data) or one that is
// not as the buses make them (not a hash, an epoch not of [0-9a-f], a seq not a number), the
// script starts one, so a damaged key costs the topic's subscribers a recovered:false rather than
// every later publish an error: the epoch is ARGV[6], a fresh
// candidate every Publish sends and the script keeps only in that case, seq starts at 1, and the
// history of an earlier stream and the counter key of earlier versions (:seq) are deleted.
//
// The fence: a stream also records (srv) the run_id of the Redis server that wrote it, and a
// server that finds a stream written by another starts a new one too. Replication is
// asynchronous, so a replica promoted after a failover (Sentinel, or a cluster replica taking
// over its primary's slots), or a server restarted from a snapshot or an AOF, may lack the last
// messages of a stream; continuing its counter would give new messages the (epoch, seq) of
// messages subscribers already received. A new epoch instead tells every subscriber of the
// topic that its stream restarted (recovered: false). The price is one recovered: false per
// topic after every failover, restart or slot migration, even when nothing was lost. Where INFO
// is not allowed (an ACL without +info, a renamed command) srv is "" and there is no fence,
// only the other checks (docs/protocol.md §8).
//
// With a message key (ARGV[7] not empty) the script first looks the key up in the topic's dedup
// window (KEYS[4], a sorted set of keys scored by when they expire) and, when it is there,
// publishes nothing and takes no seq: {0, -1}. Otherwise the key is recorded with the
// publish (after everything that could fail), the set trimmed to its newest ARGV[10] keys.
//
//	KEYS[1] = stream hash   KEYS[2] = history list   KEYS[3] = <topic's keys>:seq (versions before epochs)
//	KEYS[4] = <topic's keys>:dedup
//	ARGV    = shard channel, history, ttl in ms (0 = none), message head, envelope head, candidate epoch,
//	          key ("" = none), now in ms, dedup window in ms, most keys kept
//	returns {seq, subscribers that received it}, or {0, -1} for a duplicate
const publishLua = `
if ARGV[7] ~= '' then
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', ARGV[8])
  if redis.call('ZSCORE', KEYS[4], ARGV[7]) then return {0, -1} end
end
local s = redis.pcall('HMGET', KEYS[1], 'epoch', 'seq', 'srv')
local epoch = not s.err and s[1]
local info = redis.pcall('INFO', 'server')
local srv = type(info) == 'string' and string.match(info, 'run_id:(%x+)') or ''
if not epoch or #epoch > 64 or not string.match(epoch, '^[0-9a-f]+$') or (s[2] and not string.match(s[2], '^%d+$')) or s[3] ~= srv then
  epoch = ARGV[6]
  redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'srv', srv)
end
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
local tail = ',"seq":' .. string.format('%d', seq) .. '}'
local entry = ARGV[4] .. tail
redis.call('RPUSH', KEYS[2], entry)
redis.call('LTRIM', KEYS[2], -tonumber(ARGV[2]), -1)
local ttl = tonumber(ARGV[3])
if ttl > 0 then
  redis.call('PEXPIRE', KEYS[1], ttl)
  redis.call('PEXPIRE', KEYS[2], ttl)
end
if ARGV[7] ~= '' then
  redis.call('ZADD', KEYS[4], tonumber(ARGV[8]) + tonumber(ARGV[9]), ARGV[7])
  local extra = redis.call('ZCARD', KEYS[4]) - tonumber(ARGV[10])
  if extra > 0 then redis.call('ZREMRANGEBYRANK', KEYS[4], 0, extra - 1) end
  redis.call('PEXPIRE', KEYS[4], ARGV[9])
end
local n = redis.call('SPUBLISH', ARGV[1], ARGV[5] .. ARGV[4] .. ',"epoch":"' .. epoch .. '"' .. tail .. '}')
return {seq, n}
`

// dedupPublishLua publishes a message without history that has a key: the dedup window as in
// publishScript, then SPUBLISH.
//
//	KEYS[1] = the dedup set (<topic's keys>:dedup; without a topic, shard 0's)
//	ARGV    = shard channel, envelope, key, now in ms, dedup window in ms, most keys kept
//	returns subscribers that received it, or -1 for a duplicate
const dedupPublishLua = `
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[4])
if redis.call('ZSCORE', KEYS[1], ARGV[3]) then return -1 end
redis.call('ZADD', KEYS[1], tonumber(ARGV[4]) + tonumber(ARGV[5]), ARGV[3])
local extra = redis.call('ZCARD', KEYS[1]) - tonumber(ARGV[6])
if extra > 0 then redis.call('ZREMRANGEBYRANK', KEYS[1], 0, extra - 1) end
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return redis.call('SPUBLISH', ARGV[1], ARGV[2])
`

// historyScript reads the stream and the entries after ARGV[1] in one consistent view.
//
//	KEYS as publishScript (KEYS[3] unused);  ARGV[1] = since
//	returns {latest, epoch ("" = no stream), seq of the oldest kept entry (0 = none), {entries with seq > since}}
const historyLua = `
local s = redis.pcall('HMGET', KEYS[1], 'epoch', 'seq')
if s.err or not s[1] then
  return {0, '', 0, {}}
end
local latest = tonumber(s[2] or '0') or 0
local since = tonumber(ARGV[1])
local first = redis.call('LINDEX', KEYS[2], 0)
if since >= latest or not first then
  return {latest, s[1], 0, {}}
end
local oldest = tonumber(string.match(first, '"seq":(%d+)}$')) or 0
local start = 0
if since >= oldest then start = since - oldest + 1 end
return {latest, s[1], oldest, redis.call('LRANGE', KEYS[2], start, -1)}
`

var (
	publishScript = redis.NewScript(publishLua)
	dedupScript   = redis.NewScript(dedupPublishLua)
	historyScript = redis.NewScript(historyLua)
)

// Redis is the cluster bus: every node using the same Redis and prefix subscribes to every
// shard channel <prefix>bus:{b<k>} and delivers what comes through them. History topics keep
// their stream (epoch and seq counter) and entries in their shard's keys (see publishScript).
type Redis struct {
	client  redis.UniversalClient
	cluster *redis.ClusterClient // client, when it is a Redis Cluster client; nil otherwise
	prefix  string
	shards  int
	node    string
	deliver func(*Message)
	cfg     config
	trouble *trouble
	lag     *metrics.Gauge
	invalid *metrics.Counter
	nodeJS  string   // the node id as a JSON string
	envHead []byte   // {"n":<node>,"k":"m","m":
	junk    *trouble // rate-limits warnings about undecodable payloads apart from Redis errors

	// subs are the bus's subscriptions: one per shard on a Redis Cluster (a shard channel is
	// served by the primary of its slot), one holding every shard channel otherwise.
	subs      []*shardSub
	deliverMu sync.Mutex // deliver and the OnSubscribed callbacks run one at a time
	kick      chan struct{}
	firstSub  chan struct{}         // closed when every subscription was confirmed once
	firstOnce sync.Once             // closes firstSub
	shardsErr atomic.Pointer[error] // the shard count disagrees with the deployment's

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	subMu   sync.Mutex
	onSub   map[uint64]func() // OnSubscribed callbacks
	onSubID uint64
}

// NewRedis subscribes to the shard channels <prefix>bus:{b<k>} (prefix "" means "switchboard:")
// and calls deliver for every message received, one at a time, in the order Redis delivered them
// on each shard (see the package doc). nodeID names this node in probes; it must be unique among
// live nodes. The client is borrowed: close it after the bus. NewRedis waits up to the timeout
// for the subscriptions; if Redis is down it returns the bus anyway, which keeps trying in the
// background (Healthy fails until then). The only errors are invalid arguments.
func NewRedis(c redis.UniversalClient, prefix, nodeID string, deliver func(*Message), opts ...Option) (*Redis, error) {
	if c == nil || deliver == nil || nodeID == "" {
		return nil, fmt.Errorf("%w: NewRedis needs a client, a node id and a deliver function", ErrInvalidArgument)
	}
	if prefix == "" {
		prefix = "switchboard:"
	}
	cfg := newConfig(opts)
	node, _ := json.Marshal(nodeID) // a string always marshals
	r := &Redis{
		client:   c,
		prefix:   prefix,
		shards:   cfg.shards,
		node:     nodeID,
		deliver:  deliver,
		cfg:      cfg,
		trouble:  newTrouble(&cfg),
		lag:      cfg.metrics.GetOrCreateGauge("pubsub_probe_lag_seconds", nil),
		invalid:  cfg.metrics.GetOrCreateCounter("bus_invalid_messages_total"),
		nodeJS:   string(node),
		envHead:  []byte(`{"n":` + string(node) + `,"k":"m","m":`),
		junk:     &trouble{logger: cfg.logger, metrics: cfg.metrics},
		kick:     make(chan struct{}, 1),
		firstSub: make(chan struct{}),
	}
	r.cluster, _ = c.(*redis.ClusterClient)
	if r.cluster != nil {
		for k := 0; k < r.shards; k++ {
			r.subs = append(r.subs, r.newShardSub([]string{r.channel(k)}))
		}
	} else {
		all := make([]string, r.shards)
		for k := range all {
			all[k] = r.channel(k)
		}
		r.subs = []*shardSub{r.newShardSub(all)}
	}
	r.ctx, r.cancel = context.WithCancel(context.Background())
	r.wg.Add(len(r.subs) + 1)
	for _, s := range r.subs {
		go s.receive()
	}
	go r.probe()

	wait := time.NewTimer(cfg.timeout)
	defer wait.Stop()
	select {
	case <-r.firstSub:
	case <-wait.C:
		cfg.logger.Warn("bus: not subscribed yet, retrying in the background", "shards", r.shards)
	}
	return r, nil
}

// ShardOf returns the shard of topic among shards ("" = broadcasts to every connection: shard
// 0): fnv32a(topic) mod shards.
func ShardOf(topic string, shards int) int {
	if topic == "" || shards <= 1 {
		return 0
	}
	h := fnv.New32a()
	_, _ = h.Write([]byte(topic))
	return int(h.Sum32() % uint32(shards))
}

// StreamKey is the key of topic's stream under prefix with shards shards (for tools and tests
// that look at Redis directly).
func StreamKey(prefix, topic string, shards int) string {
	return prefix + "topic:" + tag(ShardOf(topic, shards)) + ":" + topic + ":stream"
}

func (r *Redis) shardOf(topic string) int { return ShardOf(topic, r.shards) }

// tag is shard k's hash tag: its channel and its topics' keys share one cluster slot.
func tag(k int) string { return "{b" + strconv.Itoa(k) + "}" }

func (r *Redis) channel(k int) string { return r.prefix + "bus:" + tag(k) }

func (r *Redis) topicKey(topic, kind string) string {
	return r.prefix + "topic:" + tag(r.shardOf(topic)) + ":" + topic + ":" + kind
}

func (r *Redis) streamKey(topic string) string { return r.topicKey(topic, "stream") }
func (r *Redis) histKey(topic string) string   { return r.topicKey(topic, "hist") }

// oldSeqKey is where versions before epochs kept the counter; a new stream deletes it.
func (r *Redis) oldSeqKey(topic string) string { return r.topicKey(topic, "seq") }

// dedupKey is the topic's dedup window (see publishScript); one, in shard 0's slot, for the
// messages without a topic.
func (r *Redis) dedupKey(topic string) string {
	if topic == "" {
		return r.prefix + "broadcast:" + tag(0) + ":dedup"
	}
	return r.topicKey(topic, "dedup")
}

func (r *Redis) keys(topic string) []string {
	return []string{r.streamKey(topic), r.histKey(topic), r.oldSeqKey(topic)}
}

// Shards returns the number of shard channels.
func (r *Redis) Shards() int { return r.shards }

// Publish implements Bus. nodes is SPUBLISH's answer: the subscribers of the topic's shard
// channel, one per node.
func (r *Redis) Publish(ctx context.Context, m *Message, history int) (uint64, int, error) {
	if err := checkPublish(m, history); err != nil {
		return 0, 0, err
	}
	if r.ctx.Err() != nil {
		return 0, 0, ErrClosed
	}
	data, err := normalData(m.Data)
	if err != nil {
		return 0, 0, err
	}
	body, err := json.Marshal(&Message{PkgID: m.PkgID, Data: data, Topic: m.Topic})
	if err != nil {
		return 0, 0, fmt.Errorf("%w: %w", ErrInvalidArgument, err)
	}
	callCtx, cancel := context.WithTimeout(ctx, r.cfg.timeout)
	defer cancel()

	now, window := time.Now().UnixMilli(), r.cfg.dedupWindow.Milliseconds()
	if history == 0 {
		env := make([]byte, 0, len(r.envHead)+len(body)+1)
		env = append(append(append(env, r.envHead...), body...), '}')
		var n int64
		if m.Key == "" {
			n, err = r.client.SPublish(callCtx, r.channel(r.shardOf(m.Topic)), env).Result()
		} else {
			n, err = dedupScript.Run(callCtx, r.client, []string{r.dedupKey(m.Topic)},
				r.channel(r.shardOf(m.Topic)), env, m.Key, now, window, MaxDedupKeys).Int64()
		}
		if err != nil {
			return 0, 0, r.trouble.fail(ctx, opPublish, err)
		}
		if n < 0 {
			return 0, 0, ErrDuplicate
		}
		return 0, int(n), nil
	}

	head := bytes.TrimSuffix(body, []byte("}")) // the script appends ,"seq":<n>}
	res, err := publishScript.Run(callCtx, r.client, append(r.keys(m.Topic), r.dedupKey(m.Topic)),
		r.channel(r.shardOf(m.Topic)), history, r.cfg.historyTTL.Milliseconds(), head, r.envHead, newEpoch(),
		m.Key, now, window, MaxDedupKeys).Int64Slice()
	if err == nil && len(res) == 2 && res[0] == 0 && res[1] == -1 {
		return 0, 0, ErrDuplicate
	}
	if err == nil && (len(res) != 2 || res[0] <= 0) {
		err = fmt.Errorf("publish script returned %v", res)
	}
	if err != nil {
		return 0, 0, r.trouble.fail(ctx, opPublish, err)
	}
	return uint64(res[0]), int(res[1]), nil
}

// History implements Bus.
func (r *Redis) History(ctx context.Context, topic string, since uint64) (Window, error) {
	if !validTopic(topic) {
		return Window{}, fmt.Errorf("%w: topic %.40q", ErrInvalidArgument, topic)
	}
	if r.ctx.Err() != nil {
		return Window{}, ErrClosed
	}
	callCtx, cancel := context.WithTimeout(ctx, r.cfg.timeout)
	defer cancel()
	res, err := historyScript.Run(callCtx, r.client, r.keys(topic), strconv.FormatUint(since, 10)).Slice()
	if err != nil {
		return Window{}, r.trouble.fail(ctx, opHistory, err)
	}
	w, err := parseHistory(res, since)
	if err != nil {
		r.trouble.record(opHistory, err)
		return Window{}, fmt.Errorf("%w: %s: %w", ErrUnavailable, opHistory, err)
	}
	w.Complete = complete(since, w.Latest, w.Msgs)
	return w, nil
}

// parseHistory decodes historyScript's answer, keeping the entries with seq > since; each gets
// the stream's epoch (the entries do not repeat it: the whole list belongs to one stream).
func parseHistory(res []any, since uint64) (Window, error) {
	if len(res) != 4 {
		return Window{}, fmt.Errorf("history script returned %d values, want 4", len(res))
	}
	latest, ok := res[0].(int64)
	epoch, ok2 := res[1].(string)
	entries, ok3 := res[3].([]any)
	if !ok || !ok2 || !ok3 || latest < 0 || len(epoch) > MaxEpochLen {
		return Window{}, fmt.Errorf("history script returned %T %v, %T %.20q, %T", res[0], res[0], res[1], res[1], res[3])
	}
	w := Window{Epoch: epoch, Latest: uint64(latest), Msgs: make([]*Message, 0, len(entries))}
	for _, e := range entries {
		s, ok := e.(string)
		if !ok {
			return Window{}, fmt.Errorf("history entry is %T", e)
		}
		var m Message
		if err := json.Unmarshal([]byte(s), &m); err != nil {
			return Window{}, fmt.Errorf("history entry: %w", err)
		}
		if m.Seq > since {
			m.Epoch = epoch
			w.Msgs = append(w.Msgs, &m)
		}
	}
	return w, nil
}

// Healthy implements Bus: nil while every subscription is up and its own probe came back
// within the last 3 probe intervals, and the shard count agrees with the deployment's.
func (r *Redis) Healthy(context.Context) error {
	if r.ctx.Err() != nil {
		return ErrClosed
	}
	if err := r.shardsErr.Load(); err != nil {
		return *err
	}
	for _, s := range r.subs {
		if err := s.healthy(); err != nil {
			return err
		}
	}
	return nil
}

// Close stops the receive and probe goroutines and waits for them; deliver is not called after
// it returns. Calling Close again is a no-op. If go-redis is reconnecting to a Redis that accepts
// connections but does not answer, Close waits for that attempt, which the client's DialTimeout
// and ReadTimeout bound (go-redis cannot interrupt it).
func (r *Redis) Close() error {
	r.cancel()
	for _, s := range r.subs {
		s.close()
	}
	r.wg.Wait()
	for _, s := range r.subs {
		s.subscribed.Store(false)
	}
	return nil
}
