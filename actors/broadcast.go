package actors

import (
	"encoding/json"
	"fmt"
	"strings"

	"switchboard/hub"
)

// BroadcastSchema is the JSON schema of a broadcast: the body of POST /api/broadcast, and what
// the outbox relay and the stream inbox make of each row and entry before they check it.
const BroadcastSchema = `{"type":"object","required":["pkg_id"],"properties":{
	"pkg_id":{"type":"integer","minimum":0,"maximum":2147483647},
	"data":{"type":"object"},
	"topic":` + TopicSchema + `}}`

// Broadcasts checks broadcasts by one set of rules whoever produced them: the size of the
// body, its JSON (with the input rules every request follows), the schema, and the topic's
// rule in the policy. It is safe for concurrent use.
type Broadcasts struct {
	schema   *Schema
	policy   *Policy
	maxBytes int64
}

// NewBroadcasts returns the rules of policy with bodies of at most maxBytes
// (SWITCHBOARD_MAX_REQUEST_BYTES).
func NewBroadcasts(policy *Policy, maxBytes int64) (*Broadcasts, error) {
	s, err := NewSchema("broadcast", BroadcastSchema)
	if err != nil {
		return nil, err
	}
	return &Broadcasts{schema: s, policy: policy, maxBytes: maxBytes}, nil
}

// Schema is the broadcast schema, for the HTTP edge's body reader.
func (b *Broadcasts) Schema() *Schema { return b.schema }

// Message decodes a body that passed the schema.
func (b *Broadcasts) Message(body []byte) (*hub.Message, error) {
	var msg hub.Message
	if err := json.Unmarshal(body, &msg); err != nil {
		return nil, fmt.Errorf("not a broadcast: want pkg_id, data and topic: %w", err)
	}
	return &msg, nil
}

// Producer is who publishes a broadcast that no user sent, for the topic rule.
type Producer int

const (
	// ProducerServer publishes like the server itself (the outbox: rows written in the
	// database's own transactions): any topic the policy lists, server-only ones included.
	ProducerServer Producer = iota
	// ProducerExternal publishes like a user holding every publish role (the stream inbox): only
	// topics whose rule lets someone publish; server-only topics (such as authors) are refused.
	ProducerExternal
)

// Check validates body as a broadcast of producer p and returns the message to publish, or the
// reason it is refused: one line, naming the field.
func (b *Broadcasts) Check(body []byte, p Producer) (*hub.Message, string) {
	if int64(len(body)) > b.maxBytes {
		return nil, fmt.Sprintf("broadcast of %d bytes is larger than SWITCHBOARD_MAX_REQUEST_BYTES (%d)", len(body), b.maxBytes)
	}
	if !json.Valid(body) {
		return nil, "not valid JSON"
	}
	if _, errs := b.schema.ValidateDecoded(body); len(errs) > 0 {
		parts := make([]string, 0, len(errs))
		for _, e := range errs {
			parts = append(parts, e.Path+": "+e.Message)
		}
		return nil, "invalid data: " + strings.Join(parts, "; ")
	}
	msg, err := b.Message(body)
	if err != nil {
		return nil, err.Error()
	}
	if msg.Topic != "" {
		rule, ok := b.policy.Topic(msg.Topic)
		switch {
		case !ok:
			return nil, fmt.Sprintf("topic %q is not allowed by the RBAC policy", msg.Topic)
		case p == ProducerExternal && rule.Publish == nil:
			return nil, fmt.Sprintf("only the server publishes on topic %q", msg.Topic)
		}
	}
	return msg, ""
}
