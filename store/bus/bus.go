package bus

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strconv"
)

// Message is one broadcast as it travels between nodes.
type Message struct {
	PkgID int             `json:"pkg_id"`
	Data  json.RawMessage `json:"data"`
	Topic string          `json:"topic,omitempty"` // "" = every connection
	// Epoch names the topic's stream that Seq counts in; set, with Seq, by Publish when the topic
	// keeps history. A stream's seqs never repeat; when the counter has to start again (Redis
	// lost its data, the topic expired) the stream gets a new epoch, so a (Epoch, Seq) pair never
	// names two different messages.
	Epoch string `json:"epoch,omitempty"`
	Seq   uint64 `json:"seq,omitempty"` // per-topic, assigned by Publish when the topic keeps history
	// Key, when set, names the message for the dedup window (see WithDedupWindow): Publish of a
	// Key already published on the same topic within the window publishes nothing and returns
	// ErrDuplicate. It is not part of the delivered message.
	Key string `json:"-"`
}

// Window is what History read of a topic: its stream (Epoch, Latest) and the kept messages
// after since.
type Window struct {
	// Epoch names the topic's current stream; "" when the topic has none: never published, or
	// its history expired or was lost and nothing was published since.
	Epoch string
	// Latest is the stream's last seq (0 without a stream).
	Latest uint64
	// Msgs are the kept messages of the stream with seq > since, oldest first.
	Msgs []*Message
	// Complete is true when Msgs are exactly since+1 … Latest. It is false when messages after
	// since are no longer kept, and when since > Latest. It says nothing about whether since
	// belonged to this epoch: that is the caller's to check.
	Complete bool
}

// Bus delivers every published broadcast to every node, the publishing one included, and keeps
// the history of topics published with history > 0.
type Bus interface {
	// Publish sends m to every node (this one included: a node delivers only what comes back
	// from the bus, so it never delivers twice). With history > 0, m.Topic must be set: the bus
	// atomically assigns the topic's next seq (strictly increasing by 1 across the cluster),
	// appends m to the topic's history trimmed to the last history messages, and publishes, so
	// delivery order equals seq order. It returns the assigned seq (0 without history) and how
	// many nodes were subscribed. m itself is not changed; its Seq is ignored.
	Publish(ctx context.Context, m *Message, history int) (seq uint64, nodes int, err error)
	// History reads the topic's stream: its epoch and latest seq, and the kept messages with
	// seq > since (see Window).
	History(ctx context.Context, topic string, since uint64) (Window, error)
	// Healthy returns nil while the bus is delivering, otherwise an ErrUnhealthy error saying why.
	Healthy(ctx context.Context) error
	// Close stops every goroutine of the bus and waits for them.
	Close() error
}

// Limits on what Publish and History accept. Callers validate topics against their own rules
// first; the bus re-checks so that no name can break a Redis key.
const (
	MaxTopicLen = 200
	MaxHistory  = 10000
)

// validTopic reports whether t is 1..MaxTopicLen characters of [A-Za-z0-9._:-].
func validTopic(t string) bool {
	if t == "" || len(t) > MaxTopicLen {
		return false
	}
	for i := 0; i < len(t); i++ {
		c := t[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9',
			c == '.', c == '_', c == '-', c == ':':
		default:
			return false
		}
	}
	return true
}

// checkPublish validates Publish's arguments.
func checkPublish(m *Message, history int) error {
	switch {
	case m == nil:
		return fmt.Errorf("%w: nil message", ErrInvalidArgument)
	case history < 0 || history > MaxHistory:
		return fmt.Errorf("%w: history %d not in 0..%d", ErrInvalidArgument, history, MaxHistory)
	case history > 0 && m.Topic == "":
		return fmt.Errorf("%w: history needs a topic", ErrInvalidArgument)
	case m.Topic != "" && !validTopic(m.Topic):
		return fmt.Errorf("%w: topic %.40q", ErrInvalidArgument, m.Topic)
	case len(m.Key) > MaxKeyLen:
		return fmt.Errorf("%w: key longer than %d bytes", ErrInvalidArgument, MaxKeyLen)
	}
	return nil
}

// normalData returns m.Data compacted into a new slice ("null" when empty), or an
// ErrInvalidArgument error when it is not JSON. Both buses deliver the same bytes.
func normalData(d json.RawMessage) (json.RawMessage, error) {
	if len(d) == 0 {
		return json.RawMessage("null"), nil
	}
	var b bytes.Buffer
	if err := json.Compact(&b, d); err != nil {
		return nil, fmt.Errorf("%w: data is not JSON: %w", ErrInvalidArgument, err)
	}
	return b.Bytes(), nil
}

// newEpoch returns a fresh stream identity: 64 random bits in hex. Epochs only need to differ
// from the earlier epochs of the same topic; at 64 bits a repeat is out of reach.
func newEpoch() string {
	return strconv.FormatUint(rand.Uint64()|1<<63, 16) // the top bit set: always 16 digits
}

// MaxEpochLen bounds an epoch's length. Epochs are opaque to clients; the buses make them of
// [0-9a-f] only.
const MaxEpochLen = 64

// complete reports whether msgs are exactly the messages since+1 … latest.
func complete(since, latest uint64, msgs []*Message) bool {
	if since > latest || uint64(len(msgs)) != latest-since {
		return false
	}
	for i, m := range msgs {
		if m.Seq != since+1+uint64(i) {
			return false
		}
	}
	return true
}

// Wire format of the Redis channel: a compact JSON envelope.
const (
	kindMessage = "m"
	kindProbe   = "p"
)

type envelope struct {
	Node string   `json:"n"`
	Kind string   `json:"k"`
	Msg  *Message `json:"m,omitempty"`
	Time int64    `json:"t,omitempty"` // probes: send time, Unix nanoseconds
}

// decodeEnvelope parses one payload received from the channel.
func decodeEnvelope(payload []byte) (*envelope, error) {
	var e envelope
	if err := json.Unmarshal(payload, &e); err != nil {
		return nil, err
	}
	switch e.Kind {
	case kindMessage:
		if e.Msg == nil {
			return nil, fmt.Errorf("message envelope without a message")
		}
		if len(e.Msg.Data) == 0 {
			e.Msg.Data = json.RawMessage("null")
		}
		// A message with a seq without the stream it counts in could be taken for another
		// stream's message of the same seq.
		if e.Msg.Seq != 0 && (e.Msg.Epoch == "" || len(e.Msg.Epoch) > MaxEpochLen) {
			return nil, fmt.Errorf("message with seq %d and epoch %.20q", e.Msg.Seq, e.Msg.Epoch)
		}
	case kindProbe:
		if e.Node == "" || e.Time == 0 {
			return nil, fmt.Errorf("probe without node or time")
		}
	default:
		return nil, fmt.Errorf("unknown envelope kind %.20q", e.Kind)
	}
	return &e, nil
}

// safeDeliver calls deliver(m); a panic is logged and the bus goes on with the next message, so
// one bad message cannot stop a node's delivery.
func safeDeliver(deliver func(*Message), m *Message, logger *slog.Logger) {
	defer func() {
		if v := recover(); v != nil {
			logger.Error("bus: deliver panicked; message skipped", "panic", v,
				"pkg_id", m.PkgID, "topic", m.Topic, "seq", m.Seq)
		}
	}()
	deliver(m)
}
