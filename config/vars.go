package config

import (
	"net/url"
	"strings"
)

// Var documents one SWITCHBOARD_* environment variable. Vars lists them in the order Load
// applies them; `switchboard --help` prints them and README.md's table must say the same
// (a test compares them).
type Var struct {
	Name    string
	Default string // as documented: the default value, or what leaving it empty means
	Meaning string // one line; `code` in backquotes, as in README.md
	Secret  bool   // its value is never printed
}

// doc is what Load's bindings do not know about a variable: what it means, how its default
// reads when the value itself says nothing ("empty"), and whether it is secret.
type doc struct {
	defaultText string // "" = the value Default() gives it
	meaning     string
	secret      bool
	// redactURL: the value is a URL whose password must not be shown.
	redactURL bool
}

// docs describes every variable bind applies; a test fails when one is missing.
var docs = map[string]doc{
	"SWITCHBOARD_ADDR": {meaning: "HTTP + WebSocket listener; an address other machines reach needs " +
		"`SWITCHBOARD_OIDC_ISSUER` or `SWITCHBOARD_DEV_ISSUER_PUBLIC=true`"},
	"SWITCHBOARD_DATABASE_URL": {defaultText: "`sqlite://<data dir>/switchboard.db`", redactURL: true,
		meaning: "`postgres://user@host:5432/db?sslmode=disable` for PostgreSQL (retried for " +
			"`SWITCHBOARD_DB_CONNECT_TIMEOUT` at start)"},
	"SWITCHBOARD_REDIS_URL": {defaultText: "empty (in-process, single node)", redactURL: true,
		meaning: "limits, sessions and broadcasts across nodes: `redis://host:6379/0` (one server), " +
			"`redis-sentinel://s1:26379,s2,s3?master_name=NAME` (Sentinel) or `redis-cluster://n1:6379,n2,n3` " +
			"(Cluster; `redis://` with two or more hosts too); see docs/protocol.md §8"},
	"SWITCHBOARD_REDIS_PREFIX": {meaning: "start of every key and of the bus channels in Redis (sessions " +
		"excepted): deployments sharing one Redis need different prefixes, or their broadcasts cross"},
	"SWITCHBOARD_REDIS_BUS_SHARDS": {meaning: "shard channels the bus spreads topics over (1–1024; on a Redis " +
		"Cluster they spread over its primaries); the same on every node, which a node that disagrees " +
		"reports as `pubsub: unhealthy`; see docs/sizing.md"},
	"SWITCHBOARD_OIDC_ISSUER": {defaultText: "empty (development issuer)",
		meaning: "e.g. `http://keycloak:8080/realms/HW-App`"},
	"SWITCHBOARD_OIDC_CLIENT_ID": {meaning: "audience / `azp`, and the `resource_access` key for roles"},
	"SWITCHBOARD_OIDC_CLIENT_SECRET": {secret: true,
		meaning: "confidential client's secret (for the password and refresh grants of `/login` and `/refresh`)"},
	"SWITCHBOARD_OIDC_ROLE_CLAIMS": {meaning: "where roles are read in the token, for IdPs other than " +
		"Keycloak (`{client_id}` is replaced)"},
	"SWITCHBOARD_JWT_LEEWAY":                  {meaning: "clock skew allowed on `exp`/`nbf` (at most `30s`)"},
	"SWITCHBOARD_ALLOWED_ORIGINS":             {defaultText: "empty (any)", meaning: "comma-separated, exactly as browsers send them (`https://app.example.com`); other `Origin`s get `403`"},
	"SWITCHBOARD_RATE_LIMIT_PER_MINUTE":       {meaning: "HTTP requests per user per minute"},
	"SWITCHBOARD_WS_MESSAGE_RATE_LIMIT":       {meaning: "WebSocket frames per user per minute"},
	"SWITCHBOARD_LOGIN_RATE_LIMIT":            {meaning: "`POST /login` attempts per username and per client IP per minute; `POST /refresh` calls per client IP per minute"},
	"SWITCHBOARD_WS_MAX_CONNECTIONS_PER_USER": {meaning: "concurrent connections per user"},
	"SWITCHBOARD_WS_MAX_MESSAGE_BYTES":        {meaning: "inbound frame limit (after reassembly); over it: close `1009`"},
	"SWITCHBOARD_WS_SEND_QUEUE_BYTES":         {meaning: "outbound budget per connection; over it: close `1013 slow consumer`"},
	"SWITCHBOARD_WS_MAX_IN_FLIGHT": {meaning: "unanswered requests per connection; past it the server " +
		"stops reading that socket until answers go out"},
	"SWITCHBOARD_WS_PING_INTERVAL":               {meaning: "server pings; a peer silent for twice this is dropped at its next ping"},
	"SWITCHBOARD_WS_WRITE_TIMEOUT":               {meaning: "one write to one socket; a peer that blocks longer is dropped"},
	"SWITCHBOARD_MAX_REQUEST_BYTES":              {meaning: "HTTP body limit (`413`), chunked bodies included"},
	"SWITCHBOARD_MAX_HEADER_BYTES":               {meaning: "request line and headers, a token in the query or `Authorization` included (`431`); 4096–1048576"},
	"SWITCHBOARD_HEADER_TIMEOUT":                 {meaning: "time to receive a request's line and headers (`408`); 100ms–1m"},
	"SWITCHBOARD_MAX_PREAUTH_CONNECTIONS_PER_IP": {meaning: "connections per client address (IPv6: per /64) not yet upgraded or authenticated (`429`); raise it for many clients behind one NAT"},
	"SWITCHBOARD_HANDLER_POOL_SIZE":              {meaning: "handler actors for the pkg_ids that use the database (1–5, 20): at most this many such calls at once"},
	"SWITCHBOARD_CONTROL_POOL_SIZE":              {meaning: "handler actors for SUBSCRIBE, UNSUBSCRIBE and REFRESH_TOKEN, which never wait for the database behind the others"},
	"SWITCHBOARD_HANDLER_TIMEOUT":                {meaning: "a request's deadline, counted from when the server took it in (waiting for a handler counts); one that has not run by then is answered `1` `Request timed out` (HTTP `503`) and never runs"},
	"SWITCHBOARD_AUDIT_FLUSH_INTERVAL":           {meaning: "longest time an audit entry waits for its batch (200 entries) to fill before it is written"},
	"SWITCHBOARD_RBAC_FILE":                      {defaultText: "empty (built-in policy)", meaning: "roles per pkg_id, route and topic pattern"},
	"SWITCHBOARD_TRUSTED_PROXIES":                {meaning: "CIDRs whose `X-Forwarded-For` is believed"},
	"SWITCHBOARD_METRICS_ADDR":                   {meaning: "an extra listener serving only `/metrics`"},
	"SWITCHBOARD_PPROF_ADDR": {meaning: "a listener with Go's `/debug/pprof/` profiling endpoints " +
		"(keep it private)"},
	"SWITCHBOARD_DATA_DIR": {meaning: "development issuer key and users file, SQLite default file; " +
		"`switchboard token` reads the key from here"},
	"SWITCHBOARD_LOG_LEVEL":          {meaning: "`debug`, `info`, `warn` or `error`"},
	"SWITCHBOARD_LOG_FORMAT":         {meaning: "`text`, or `json` for production"},
	"SWITCHBOARD_DB_CONNECT_TIMEOUT": {meaning: "how long PostgreSQL is retried at start"},
	"SWITCHBOARD_SHUTDOWN_TIMEOUT":   {meaning: "one deadline over the whole shutdown"},
	"SWITCHBOARD_OUTBOX_POLL_INTERVAL": {meaning: "how often the outbox relay looks for rows without being woken " +
		"(PostgreSQL wakes it with `NOTIFY`; on SQLite rows other processes write wait up to this long)"},
	"SWITCHBOARD_RELAY_STUCK_AFTER": {meaning: "`/health` reports `relay: unhealthy` while an outbox row has " +
		"waited longer than this"},
	"SWITCHBOARD_DEDUP_WINDOW": {meaning: "how long the bus remembers an event's idempotency key (outbox and " +
		"stream inbox): an event published again within it reaches no subscriber twice (at most 100 000 keys per topic)"},
	"SWITCHBOARD_INBOX_CLAIM_AFTER": {meaning: "with Redis: stream inbox entries a node took and did not " +
		"acknowledge for this long (the node died) are taken over by another"},
	"SWITCHBOARD_DEV_ISSUER_PUBLIC": {meaning: "`true` lets the development issuer (and its `/login`) " +
		"serve on an address other machines reach; refused otherwise"},
}

// Vars returns every variable Load reads, in order, with its documented default.
func Vars() []Var {
	c := Default()
	p := parser{}
	bind(&p, &c)
	out := make([]Var, 0, len(p.bound))
	for _, b := range p.bound {
		d := docs[b.name]
		def := d.defaultText
		if def == "" {
			def = "`" + b.show() + "`"
			if b.show() == "" {
				def = "empty"
			}
		}
		out = append(out, Var{Name: b.name, Default: def, Meaning: d.meaning, Secret: d.secret})
	}
	return out
}

// Setting is one variable's value in effect, as `switchboard config` shows it.
type Setting struct {
	Name   string
	Value  string // secrets and URL passwords redacted; "" when empty
	Source Source
}

// Redacted stands in for a secret's value.
const Redacted = "[REDACTED]"

func settings(bound []binding) []Setting {
	out := make([]Setting, 0, len(bound))
	for _, b := range bound {
		out = append(out, Setting{Name: b.name, Value: redact(docs[b.name], b.show()), Source: b.source})
	}
	return out
}

func redact(d doc, v string) string {
	switch {
	case v == "":
		return ""
	case d.secret:
		return Redacted
	case d.redactURL:
		return RedactURL(v)
	}
	return v
}

// RedactURL returns u with its password replaced, in the user information and in query
// parameters whose name holds "password" or "secret" (go-redis's password=, sentinel_password=),
// or the whole value replaced when it cannot be read (the password could be anywhere in it).
// A comma-separated host list (Redis Sentinel and Cluster URLs) is kept as it is.
func RedactURL(u string) string {
	scheme, rest, ok := strings.Cut(u, "://")
	if !ok {
		return Redacted
	}
	authority, tail := rest, ""
	if i := strings.IndexAny(rest, "/?#"); i >= 0 {
		authority, tail = rest[:i], rest[i:]
	}
	userinfo, hosts := "", authority
	if i := strings.LastIndex(authority, "@"); i >= 0 {
		userinfo, hosts = authority[:i], authority[i+1:]
	}
	// Parse with the first host only: url.Parse refuses some host lists.
	first, _, _ := strings.Cut(hosts, ",")
	probe := scheme + "://" + first + tail
	if userinfo != "" {
		probe = scheme + "://" + userinfo + "@" + first + tail
	}
	parsed, err := url.Parse(probe)
	if err != nil {
		return Redacted
	}
	changed := false
	if _, has := parsed.User.Password(); has {
		userinfo = url.UserPassword(parsed.User.Username(), "xxxxx").String()
		changed = true
	}
	if parsed.RawQuery != "" {
		q := parsed.Query()
		for k := range q {
			if l := strings.ToLower(k); strings.Contains(l, "password") || strings.Contains(l, "secret") {
				q[k] = []string{"xxxxx"}
				changed = true
			}
		}
		parsed.RawQuery = q.Encode()
	}
	if !changed {
		return u
	}
	out := scheme + "://"
	if userinfo != "" {
		out += userinfo + "@"
	}
	out += hosts + parsed.EscapedPath()
	if parsed.RawQuery != "" {
		out += "?" + parsed.RawQuery
	}
	return out
}

// Known reports whether name is a variable Load reads.
func Known(name string) bool {
	_, ok := docs[name]
	return ok
}

// Plain strips README's markdown from a meaning or default, for a terminal.
func Plain(s string) string { return strings.ReplaceAll(s, "`", "") }
