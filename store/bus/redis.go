package bus

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/redis/go-redis/v9"
)

// A history topic's stream lives in two keys with the topic as hash tag (one cluster slot):
//
//	<prefix>topic:{<topic>}:stream  hash: epoch (the stream's identity), seq (its last seq)
//	<prefix>topic:{<topic>}:hist    list: the last kept entries, oldest first
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
// With a message key (ARGV[7] not empty) the script first looks the key up in the topic's dedup
// window (KEYS[4], a sorted set of keys scored by when they expire) and, when it is there,
// publishes nothing and takes no seq: {0, -1}. Otherwise the key is recorded with the
// publish (after everything that could fail), the set trimmed to its newest ARGV[10] keys.
//
//	KEYS[1] = stream hash   KEYS[2] = history list   KEYS[3] = <prefix>topic:{<topic>}:seq (old)
//	KEYS[4] = <prefix>topic:{<topic>}:dedup
//	ARGV    = channel, history, ttl in ms (0 = none), message head, envelope head, candidate epoch,
//	          key ("" = none), now in ms, dedup window in ms, most keys kept
//	returns {seq, subscribers that received it}, or {0, -1} for a duplicate
const publishLua = `
if ARGV[7] ~= '' then
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', ARGV[8])
  if redis.call('ZSCORE', KEYS[4], ARGV[7]) then return {0, -1} end
end
local s = redis.pcall('HMGET', KEYS[1], 'epoch', 'seq')
local epoch = not s.err and s[1]
if not epoch or #epoch > 64 or not string.match(epoch, '^[0-9a-f]+$') or (s[2] and not string.match(s[2], '^%d+$')) then
  epoch = ARGV[6]
  redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
  redis.call('HSET', KEYS[1], 'epoch', epoch)
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
local n = redis.call('PUBLISH', ARGV[1], ARGV[5] .. ARGV[4] .. ',"epoch":"' .. epoch .. '"' .. tail .. '}')
return {seq, n}
`

// dedupPublishLua publishes a message without history that has a key: the dedup window as in
// publishScript, then PUBLISH.
//
//	KEYS[1] = the dedup set (<prefix>topic:{<topic>}:dedup, or <prefix>broadcast:dedup without a topic)
//	ARGV    = channel, envelope, key, now in ms, dedup window in ms, most keys kept
//	returns subscribers that received it, or -1 for a duplicate
const dedupPublishLua = `
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[4])
if redis.call('ZSCORE', KEYS[1], ARGV[3]) then return -1 end
redis.call('ZADD', KEYS[1], tonumber(ARGV[4]) + tonumber(ARGV[5]), ARGV[3])
local extra = redis.call('ZCARD', KEYS[1]) - tonumber(ARGV[6])
if extra > 0 then redis.call('ZREMRANGEBYRANK', KEYS[1], 0, extra - 1) end
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return redis.call('PUBLISH', ARGV[1], ARGV[2])
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

// Redis is the cluster bus: every node using the same Redis and prefix subscribes to
// <prefix>bus and delivers what comes through it. History topics keep their stream (epoch and
// seq counter) and entries at <prefix>topic:{<topic>}:stream and :hist (see publishScript).
type Redis struct {
	client  redis.UniversalClient
	prefix  string
	channel string
	node    string
	deliver func(*Message)
	cfg     config
	trouble *trouble
	lag     *metrics.Gauge
	invalid *metrics.Counter
	nodeJS  string   // the node id as a JSON string
	envHead []byte   // {"n":<node>,"k":"m","m":
	junk    *trouble // rate-limits warnings about undecodable payloads apart from Redis errors

	subscribed   atomic.Bool
	lastRecv     atomic.Int64 // unix ns when the receive goroutine last got something or began to wait
	reading      atomic.Bool  // the receive goroutine is waiting in Receive
	lastProbe    atomic.Int64 // unix ns when our own probe last came back; 0 = not since subscribing
	waitingSince atomic.Int64 // send time of the oldest probe still unanswered; 0 = none
	kick         chan struct{}
	firstSub     chan struct{} // closed on the first confirmed subscription
	firstOnce    sync.Once

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	psMu sync.Mutex
	ps   *redis.PubSub // current subscription; nil = make a new one

	subMu   sync.Mutex
	onSub   map[uint64]func() // OnSubscribed callbacks
	onSubID uint64
}

// NewRedis subscribes to <prefix>bus (prefix "" means "switchboard:") and calls deliver for
// every message received, from one goroutine, in the order Redis delivered them (see the package
// doc). nodeID names this node in probes; it must be unique among live nodes. The client is
// borrowed: close it after the bus. NewRedis waits up to the timeout for the subscription; if
// Redis is down it returns the bus anyway, which keeps trying in the background (Healthy fails
// until then). The only errors are invalid arguments.
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
		channel:  prefix + "bus",
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
	r.ctx, r.cancel = context.WithCancel(context.Background())
	r.lastRecv.Store(time.Now().UnixNano())
	r.wg.Add(2)
	go r.receive()
	go r.probe()

	wait := time.NewTimer(cfg.timeout)
	defer wait.Stop()
	select {
	case <-r.firstSub:
	case <-wait.C:
		cfg.logger.Warn("bus: not subscribed yet, retrying in the background", "channel", r.channel)
	}
	return r, nil
}

func (r *Redis) streamKey(topic string) string { return r.prefix + "topic:{" + topic + "}:stream" }
func (r *Redis) histKey(topic string) string   { return r.prefix + "topic:{" + topic + "}:hist" }

// oldSeqKey is where versions before epochs kept the counter; a new stream deletes it.
func (r *Redis) oldSeqKey(topic string) string { return r.prefix + "topic:{" + topic + "}:seq" }

// dedupKey is the topic's dedup window (see publishScript); one for the messages without a topic.
func (r *Redis) dedupKey(topic string) string {
	if topic == "" {
		return r.prefix + "broadcast:dedup"
	}
	return r.prefix + "topic:{" + topic + "}:dedup"
}

func (r *Redis) keys(topic string) []string {
	return []string{r.streamKey(topic), r.histKey(topic), r.oldSeqKey(topic)}
}

// Publish implements Bus. nodes is PUBLISH's answer: the subscribers of the channel (in a Redis
// Cluster, those connected to the node that ran it).
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
			n, err = r.client.Publish(callCtx, r.channel, env).Result()
		} else {
			n, err = dedupScript.Run(callCtx, r.client, []string{r.dedupKey(m.Topic)},
				r.channel, env, m.Key, now, window, MaxDedupKeys).Int64()
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
		r.channel, history, r.cfg.historyTTL.Milliseconds(), head, r.envHead, newEpoch(),
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

// Healthy implements Bus: nil while subscribed and our own probe came back within the last 3
// probe intervals.
func (r *Redis) Healthy(context.Context) error {
	if r.ctx.Err() != nil {
		return ErrClosed
	}
	if !r.subscribed.Load() {
		return fmt.Errorf("%w: not subscribed to %s", ErrUnhealthy, r.channel)
	}
	last := r.lastProbe.Load()
	if last == 0 {
		return fmt.Errorf("%w: no probe came back since subscribing", ErrUnhealthy)
	}
	if age := time.Since(time.Unix(0, last)); age >= unhealthyAfter*r.cfg.probeInterval {
		return fmt.Errorf("%w: last probe came back %s ago", ErrUnhealthy, age.Round(time.Millisecond))
	}
	return nil
}

// Close stops the receive and probe goroutines and waits for them; deliver is not called after
// it returns. Calling Close again is a no-op. If go-redis is reconnecting to a Redis that accepts
// connections but does not answer, Close waits for that attempt, which the client's DialTimeout
// and ReadTimeout bound (go-redis cannot interrupt it).
func (r *Redis) Close() error {
	r.cancel()
	r.psMu.Lock()
	if r.ps != nil {
		_ = r.ps.Close() // unblocks the receive goroutine's read
		r.ps = nil
	}
	r.psMu.Unlock()
	r.wg.Wait()
	r.subscribed.Store(false)
	return nil
}
