package actors

import (
	"bytes"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strconv"

	"switchboard/store/bus"
)

//go:embed policy.json
var defaultPolicy []byte

// Policy is the RBAC policy as data: the roles each pkg_id, HTTP route and topic pattern
// requires. Anything it does not list is denied. Roles in a list are all required; an empty
// list means "any authenticated user".
type Policy struct {
	PkgIDs map[int][]string    `json:"pkg_ids"`
	Routes map[string][]string `json:"routes"` // "METHOD /pattern"
	Topics []TopicRule         `json:"topics"`
}

// TopicRule gives the roles to subscribe to and publish on the topics matching Pattern (a
// path.Match pattern such as "dashboards.*"). A nil Publish list means only the server publishes.
type TopicRule struct {
	Pattern   string   `json:"pattern"`
	Subscribe []string `json:"subscribe"`
	Publish   []string `json:"publish"`
	History   int      `json:"history"`
}

// DefaultPolicy returns the built-in policy (docs/protocol.md §1.4 and §3).
func DefaultPolicy() *Policy {
	p, err := ParsePolicy(defaultPolicy)
	if err != nil {
		panic("built-in policy: " + err.Error())
	}
	return p
}

// LoadPolicy reads a policy file; an empty path gives the built-in policy.
func LoadPolicy(file string) (*Policy, error) {
	if file == "" {
		return DefaultPolicy(), nil
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("read RBAC file: %w", err)
	}
	p, err := ParsePolicy(b)
	if err != nil {
		return nil, fmt.Errorf("RBAC file %s: %w", file, err)
	}
	return p, nil
}

// ParsePolicy decodes and checks a policy document. Unknown keys are an error, so a typo does
// not silently deny (or allow) anything; so is anything after the document, and a null role
// list for a pkg_id or route (write [] for "any authenticated user": null reads too much like
// "nobody" to mean the opposite).
func ParsePolicy(b []byte) (*Policy, error) {
	var raw struct {
		PkgIDs map[string]*[]string `json:"pkg_ids"`
		Routes map[string]*[]string `json:"routes"`
		Topics []TopicRule          `json:"topics"`
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&raw); err != nil {
		return nil, fmt.Errorf("not a valid policy: %w", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, errors.New("not a valid policy: data after the policy document")
	}
	p := &Policy{PkgIDs: make(map[int][]string, len(raw.PkgIDs)), Routes: make(map[string][]string, len(raw.Routes)), Topics: raw.Topics}
	for k, roles := range raw.PkgIDs {
		// Only the canonical spelling: "1" and "01" (or "+1") would both name pkg_id 1, and
		// which of their role lists won would depend on map order.
		id, err := strconv.ParseInt(k, 10, 32)
		if err != nil || strconv.FormatInt(id, 10) != k {
			return nil, fmt.Errorf("pkg_ids: key %q is not a pkg_id (a decimal integer without a plus sign, leading zeros or spaces)", k)
		}
		if roles == nil {
			return nil, fmt.Errorf("pkg_ids %s: roles are null; use [] for any authenticated user", k)
		}
		p.PkgIDs[int(id)] = nonNil(*roles)
	}
	for k, roles := range raw.Routes {
		if roles == nil {
			return nil, fmt.Errorf("routes %q: roles are null; use [] for any authenticated user", k)
		}
		p.Routes[k] = nonNil(*roles)
	}
	for i, t := range p.Topics {
		if _, err := path.Match(t.Pattern, ""); err != nil || t.Pattern == "" {
			return nil, fmt.Errorf("topics[%d]: bad pattern %q", i, t.Pattern)
		}
		p.Topics[i].Subscribe = nonNil(t.Subscribe)
		if t.History < 0 || t.History > bus.MaxHistory {
			return nil, fmt.Errorf("topics[%d]: history must be between 0 and %d (what the bus keeps), got %d", i, bus.MaxHistory, t.History)
		}
	}
	return p, nil
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// PkgMissing returns the roles u lacks for pkgID; listed is false when the policy does not list
// pkgID at all (denied by default).
func (p *Policy) PkgMissing(pkgID int, u *User) (missing []string, listed bool) {
	roles, ok := p.PkgIDs[pkgID]
	if !ok {
		return nil, false
	}
	return missingRoles(roles, u), true
}

// RouteMissing is PkgMissing for an HTTP route pattern such as "POST /api/broadcast".
func (p *Policy) RouteMissing(route string, u *User) (missing []string, listed bool) {
	roles, ok := p.Routes[route]
	if !ok {
		return nil, false
	}
	return missingRoles(roles, u), true
}

// Topic returns the first rule whose pattern matches topic.
func (p *Policy) Topic(topic string) (TopicRule, bool) {
	for _, t := range p.Topics {
		if ok, _ := path.Match(t.Pattern, topic); ok {
			return t, true
		}
	}
	return TopicRule{}, false
}

func missingRoles(required []string, u *User) []string {
	var missing []string
	for _, r := range required {
		if !u.HasRole(r) {
			missing = append(missing, r)
		}
	}
	return missing
}
