package actors

import (
	"context"
	"fmt"
)

// pkg_ids of topic subscriptions (docs/protocol.md §1.4).
const (
	PkgSubscribe   = 10
	PkgUnsubscribe = 11
)

// TopicSchema is the JSON schema of a topic name, shared with the HTTP façade.
const TopicSchema = `{"type":"string","minLength":1,"maxLength":200,"pattern":"^[A-Za-z0-9_.:-]+$"}`

// SubscribeIntent is what a successful SUBSCRIBE asks of the connection actor: to join the hub's
// topic. The hub sends the answer, then the recovered messages, then live ones. Since counts in
// the topic's stream Epoch (as the client last saw it).
type SubscribeIntent struct {
	Topic string
	Since *uint64
	Epoch string
}

// EpochSchema is the JSON schema of a topic stream's epoch as a client sends it back.
const EpochSchema = `{"type":"string","maxLength":64}`

// UnsubscribeIntent asks the connection actor to leave a topic.
type UnsubscribeIntent struct{ Topic string }

// TopicRoutes returns SUBSCRIBE and UNSUBSCRIBE. The roles for a topic come from the policy's
// topic rules (default-deny: a topic no rule matches cannot be subscribed to).
func TopicRoutes(policy *Policy) []Route {
	return []Route{
		{PkgID: PkgSubscribe, Name: "SUBSCRIBE", Resource: "topics",
			Schema: `{"type":"object","required":["topic"],"properties":{"topic":` + TopicSchema + `,
				"since":{"type":"integer","minimum":0,"maximum":9007199254740991},
				"epoch":` + EpochSchema + `}}`,
			Handler: func(_ context.Context, req *Request) (any, any, error) {
				var in struct {
					Topic string  `json:"topic"`
					Since *uint64 `json:"since"`
					Epoch string  `json:"epoch"`
				}
				if err := decode(req, &in); err != nil {
					return nil, nil, err
				}
				rule, ok := policy.Topic(in.Topic)
				if !ok {
					return nil, nil, &Failure{Status: StatusPermissionDenied, Msg: "Permission denied", Kind: ErrDenied}
				}
				if missing := missingRoles(rule.Subscribe, req.User); len(missing) > 0 {
					return nil, nil, &Failure{Status: StatusPermissionDenied, Msg: "Permission denied", Kind: ErrDenied, Data: MissingRoles{Missing: missing}}
				}
				return &SubscribeIntent{Topic: in.Topic, Since: in.Since, Epoch: in.Epoch}, nil, nil
			}},
		{PkgID: PkgUnsubscribe, Name: "UNSUBSCRIBE", Resource: "topics",
			Schema: `{"type":"object","required":["topic"],"properties":{"topic":` + TopicSchema + `}}`,
			Handler: func(_ context.Context, req *Request) (any, any, error) {
				var in struct {
					Topic string `json:"topic"`
				}
				if err := decode(req, &in); err != nil {
					return nil, nil, err
				}
				return &UnsubscribeIntent{Topic: in.Topic}, nil, nil
			}},
	}
}

// PublishDenied says why user may not publish on topic, or "" when they may. Only the server
// publishes on topics whose rule has no publish list.
func (p *Policy) PublishDenied(topic string, u *User) string {
	rule, ok := p.Topic(topic)
	switch {
	case !ok:
		return fmt.Sprintf("Topic %q is not allowed by the RBAC policy", topic)
	case rule.Publish == nil:
		return fmt.Sprintf("Only the server publishes on topic %q", topic)
	}
	if missing := missingRoles(rule.Publish, u); len(missing) > 0 {
		return "Missing required roles: " + MissingRolesText(missing)
	}
	return ""
}

// HistoryOf is the number of messages the policy keeps for topic (0 for none or unknown).
func (p *Policy) HistoryOf(topic string) int {
	if rule, ok := p.Topic(topic); ok {
		return rule.History
	}
	return 0
}
