package config

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"path/filepath"
	"strings"
	"time"
)

// Config is the whole server configuration. Field comments name the environment variable.
type Config struct {
	Addr               string         // SWITCHBOARD_ADDR
	DatabaseURL        string         // SWITCHBOARD_DATABASE_URL; empty = sqlite under DataDir
	RedisURL           string         // SWITCHBOARD_REDIS_URL; empty = in-process, single node
	RedisPrefix        string         // SWITCHBOARD_REDIS_PREFIX: namespace of the keys and the bus channels
	RedisBusShards     int            // SWITCHBOARD_REDIS_BUS_SHARDS: shard channels the bus spreads topics over
	OIDCIssuer         string         // SWITCHBOARD_OIDC_ISSUER; empty = built-in development issuer
	OIDCClientID       string         // SWITCHBOARD_OIDC_CLIENT_ID
	OIDCClientSecret   string         // SWITCHBOARD_OIDC_CLIENT_SECRET
	OIDCRoleClaims     []string       // SWITCHBOARD_OIDC_ROLE_CLAIMS: dot paths to role lists; "{client_id}" is replaced
	JWTLeeway          time.Duration  // SWITCHBOARD_JWT_LEEWAY (at most 30s)
	AllowedOrigins     []string       // SWITCHBOARD_ALLOWED_ORIGINS, comma-separated; empty = any
	RateLimitPerMinute int            // SWITCHBOARD_RATE_LIMIT_PER_MINUTE (HTTP, per user)
	WSMessageRateLimit int            // SWITCHBOARD_WS_MESSAGE_RATE_LIMIT (frames per user per minute)
	LoginRateLimit     int            // SWITCHBOARD_LOGIN_RATE_LIMIT (POST /login per username and per client IP per minute)
	WSMaxConnsPerUser  int            // SWITCHBOARD_WS_MAX_CONNECTIONS_PER_USER
	WSMaxMessageBytes  int            // SWITCHBOARD_WS_MAX_MESSAGE_BYTES (inbound, after reassembly)
	WSSendQueueBytes   int            // SWITCHBOARD_WS_SEND_QUEUE_BYTES (outbound budget per connection)
	WSMaxInFlight      int            // SWITCHBOARD_WS_MAX_IN_FLIGHT (unanswered requests per connection)
	WSPingInterval     time.Duration  // SWITCHBOARD_WS_PING_INTERVAL; a peer silent for 2x this is dropped
	WSWriteTimeout     time.Duration  // SWITCHBOARD_WS_WRITE_TIMEOUT (one flush to one socket)
	MaxRequestBytes    int64          // SWITCHBOARD_MAX_REQUEST_BYTES (HTTP bodies)
	MaxHeaderBytes     int            // SWITCHBOARD_MAX_HEADER_BYTES (request line and headers; over it: 431)
	HeaderTimeout      time.Duration  // SWITCHBOARD_HEADER_TIMEOUT (to receive a request's line and headers; then: 408)
	MaxPreAuthConnsIP  int            // SWITCHBOARD_MAX_PREAUTH_CONNECTIONS_PER_IP (connections not yet authenticated, per client address)
	HandlerPoolSize    int            // SWITCHBOARD_HANDLER_POOL_SIZE (handler actors for pkg_ids that use the database)
	ControlPoolSize    int            // SWITCHBOARD_CONTROL_POOL_SIZE (handler actors for pkg_ids that do not)
	HandlerTimeout     time.Duration  // SWITCHBOARD_HANDLER_TIMEOUT (a request's deadline, from admission)
	AuditFlush         time.Duration  // SWITCHBOARD_AUDIT_FLUSH_INTERVAL (longest wait of an audit entry for its batch to fill)
	RBACFile           string         // SWITCHBOARD_RBAC_FILE; empty = built-in policy
	TrustedProxies     []netip.Prefix // SWITCHBOARD_TRUSTED_PROXIES: CIDRs whose X-Forwarded-For is believed
	MetricsAddr        string         // SWITCHBOARD_METRICS_ADDR
	PprofAddr          string         // SWITCHBOARD_PPROF_ADDR: net/http/pprof for profiling; empty = off
	DataDir            string         // SWITCHBOARD_DATA_DIR
	LogLevel           string         // SWITCHBOARD_LOG_LEVEL: debug|info|warn|error
	LogFormat          string         // SWITCHBOARD_LOG_FORMAT: text|json
	DBConnectTimeout   time.Duration  // SWITCHBOARD_DB_CONNECT_TIMEOUT (PostgreSQL retries at start)
	ShutdownTimeout    time.Duration  // SWITCHBOARD_SHUTDOWN_TIMEOUT (one deadline over the whole shutdown)
	OutboxPoll         time.Duration  // SWITCHBOARD_OUTBOX_POLL_INTERVAL (the relay's poll under NOTIFY)
	RelayStuckAfter    time.Duration  // SWITCHBOARD_RELAY_STUCK_AFTER (/health: an outbox row waiting longer)
	DedupWindow        time.Duration  // SWITCHBOARD_DEDUP_WINDOW (how long the bus remembers an event's key)
	InboxClaimAfter    time.Duration  // SWITCHBOARD_INBOX_CLAIM_AFTER (a dead node's stream entries are taken over after this)
	// DevIssuerPublic (SWITCHBOARD_DEV_ISSUER_PUBLIC) lets the built-in development issuer
	// serve on an address other machines reach; without it such a configuration is refused.
	DevIssuerPublic bool
}

// Default returns the configuration used when no variable is set: the embedded default
// (SQLite, in-process limits, development issuer) on 127.0.0.1:8000.
func Default() Config {
	return Config{
		Addr:               "127.0.0.1:8000",
		OIDCClientID:       "switchboard",
		OIDCRoleClaims:     []string{"realm_access.roles", "resource_access.{client_id}.roles"},
		JWTLeeway:          10 * time.Second,
		RateLimitPerMinute: 60,
		WSMessageRateLimit: 100,
		LoginRateLimit:     10,
		WSMaxConnsPerUser:  5,
		WSMaxMessageBytes:  64 << 10,
		WSSendQueueBytes:   1 << 20,
		WSMaxInFlight:      32,
		WSPingInterval:     25 * time.Second,
		WSWriteTimeout:     10 * time.Second,
		MaxRequestBytes:    1 << 20,
		MaxHeaderBytes:     16 << 10,
		HeaderTimeout:      5 * time.Second,
		MaxPreAuthConnsIP:  256,
		HandlerPoolSize:    64,
		ControlPoolSize:    16,
		HandlerTimeout:     10 * time.Second,
		AuditFlush:         time.Second,
		RedisPrefix:        DefaultRedisPrefix,
		RedisBusShards:     16,
		DataDir:            "./data",
		LogLevel:           "info",
		LogFormat:          "text",
		DBConnectTimeout:   30 * time.Second,
		ShutdownTimeout:    15 * time.Second,
		OutboxPoll:         2 * time.Second,
		RelayStuckAfter:    time.Minute,
		DedupWindow:        10 * time.Minute,
		InboxClaimAfter:    30 * time.Second,
	}
}

// DefaultRedisPrefix is SWITCHBOARD_REDIS_PREFIX's default. Deployments that share one Redis
// form one cluster unless each has its own prefix.
const DefaultRedisPrefix = "switchboard:"

// redisScheme reports whether s is a scheme of SWITCHBOARD_REDIS_URL (store/redisconn parses
// the rest).
func redisScheme(s string) bool {
	switch strings.ToLower(s) {
	case "redis", "rediss", "redis-sentinel", "rediss-sentinel", "redis+sentinel", "rediss+sentinel",
		"redis-cluster", "rediss-cluster", "redis+cluster", "rediss+cluster":
		return true
	}
	return false
}

// validRedisPrefix keeps the prefix printable and free of the braces Redis Cluster reads as a
// hash tag (the keys carry their own).
func validRedisPrefix(p string) bool {
	if len(p) == 0 || len(p) > 64 {
		return false
	}
	for _, r := range p {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("_.:-", r)) {
			return false
		}
	}
	return true
}

// Database returns the database URL in effect: DatabaseURL, or the SQLite file under DataDir.
func (c Config) Database() string {
	if c.DatabaseURL != "" {
		return c.DatabaseURL
	}
	return "sqlite://" + filepath.ToSlash(filepath.Join(c.DataDir, "switchboard.db"))
}

// DevIssuer reports whether the built-in development issuer is in use.
func (c Config) DevIssuer() bool { return c.OIDCIssuer == "" }

// Load starts from Default, applies the SWITCHBOARD_* variables that getenv returns, and
// validates the result. getenv is os.Getenv in main and a map lookup in tests.
func Load(getenv func(string) string) (Config, error) {
	c, _, err := Resolve(getenv, nil)
	return c, err
}

// Resolve is Load with command-line overrides, keyed by variable name and stronger than the
// environment, that also reports every variable's value in effect and where it came from
// (secrets redacted), for `switchboard config`.
func Resolve(getenv func(string) string, overrides map[string]string) (Config, []Setting, error) {
	c := Default()
	p := parser{getenv: getenv, overrides: overrides}
	bind(&p, &c)
	// Report parse and validation problems together; a field that failed to parse keeps its
	// default, so Validate does not repeat it.
	err := errors.Join(append(p.errs, c.Validate())...)
	return c, settings(p.bound), err
}

// bind applies every variable to its field. It is the one list of the variables: Vars, the
// help text and `switchboard config` are built from what it binds.
func bind(p *parser, c *Config) {
	p.str("SWITCHBOARD_ADDR", &c.Addr)
	p.str("SWITCHBOARD_DATABASE_URL", &c.DatabaseURL)
	p.str("SWITCHBOARD_REDIS_URL", &c.RedisURL)
	p.str("SWITCHBOARD_REDIS_PREFIX", &c.RedisPrefix)
	p.integer("SWITCHBOARD_REDIS_BUS_SHARDS", &c.RedisBusShards)
	p.str("SWITCHBOARD_OIDC_ISSUER", &c.OIDCIssuer)
	p.str("SWITCHBOARD_OIDC_CLIENT_ID", &c.OIDCClientID)
	p.str("SWITCHBOARD_OIDC_CLIENT_SECRET", &c.OIDCClientSecret)
	p.list("SWITCHBOARD_OIDC_ROLE_CLAIMS", &c.OIDCRoleClaims)
	p.duration("SWITCHBOARD_JWT_LEEWAY", &c.JWTLeeway)
	p.list("SWITCHBOARD_ALLOWED_ORIGINS", &c.AllowedOrigins)
	p.integer("SWITCHBOARD_RATE_LIMIT_PER_MINUTE", &c.RateLimitPerMinute)
	p.integer("SWITCHBOARD_WS_MESSAGE_RATE_LIMIT", &c.WSMessageRateLimit)
	p.integer("SWITCHBOARD_LOGIN_RATE_LIMIT", &c.LoginRateLimit)
	p.integer("SWITCHBOARD_WS_MAX_CONNECTIONS_PER_USER", &c.WSMaxConnsPerUser)
	p.integer("SWITCHBOARD_WS_MAX_MESSAGE_BYTES", &c.WSMaxMessageBytes)
	p.integer("SWITCHBOARD_WS_SEND_QUEUE_BYTES", &c.WSSendQueueBytes)
	p.integer("SWITCHBOARD_WS_MAX_IN_FLIGHT", &c.WSMaxInFlight)
	p.duration("SWITCHBOARD_WS_PING_INTERVAL", &c.WSPingInterval)
	p.duration("SWITCHBOARD_WS_WRITE_TIMEOUT", &c.WSWriteTimeout)
	p.int64("SWITCHBOARD_MAX_REQUEST_BYTES", &c.MaxRequestBytes)
	p.integer("SWITCHBOARD_MAX_HEADER_BYTES", &c.MaxHeaderBytes)
	p.duration("SWITCHBOARD_HEADER_TIMEOUT", &c.HeaderTimeout)
	p.integer("SWITCHBOARD_MAX_PREAUTH_CONNECTIONS_PER_IP", &c.MaxPreAuthConnsIP)
	p.integer("SWITCHBOARD_HANDLER_POOL_SIZE", &c.HandlerPoolSize)
	p.integer("SWITCHBOARD_CONTROL_POOL_SIZE", &c.ControlPoolSize)
	p.duration("SWITCHBOARD_HANDLER_TIMEOUT", &c.HandlerTimeout)
	p.duration("SWITCHBOARD_AUDIT_FLUSH_INTERVAL", &c.AuditFlush)
	p.str("SWITCHBOARD_RBAC_FILE", &c.RBACFile)
	p.prefixes("SWITCHBOARD_TRUSTED_PROXIES", &c.TrustedProxies)
	p.str("SWITCHBOARD_METRICS_ADDR", &c.MetricsAddr)
	p.str("SWITCHBOARD_PPROF_ADDR", &c.PprofAddr)
	p.str("SWITCHBOARD_DATA_DIR", &c.DataDir)
	p.str("SWITCHBOARD_LOG_LEVEL", &c.LogLevel)
	p.str("SWITCHBOARD_LOG_FORMAT", &c.LogFormat)
	p.duration("SWITCHBOARD_DB_CONNECT_TIMEOUT", &c.DBConnectTimeout)
	p.duration("SWITCHBOARD_SHUTDOWN_TIMEOUT", &c.ShutdownTimeout)
	p.duration("SWITCHBOARD_OUTBOX_POLL_INTERVAL", &c.OutboxPoll)
	p.duration("SWITCHBOARD_RELAY_STUCK_AFTER", &c.RelayStuckAfter)
	p.duration("SWITCHBOARD_DEDUP_WINDOW", &c.DedupWindow)
	p.duration("SWITCHBOARD_INBOX_CLAIM_AFTER", &c.InboxClaimAfter)
	p.boolean("SWITCHBOARD_DEV_ISSUER_PUBLIC", &c.DevIssuerPublic)
}

// Validate checks every field and reports all problems at once.
func (c Config) Validate() error {
	var errs []error
	bad := func(name, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", name, fmt.Sprintf(format, args...)))
	}
	if _, _, err := net.SplitHostPort(c.Addr); err != nil {
		bad("SWITCHBOARD_ADDR", "want host:port such as 127.0.0.1:8000, got %q", c.Addr)
	}
	if c.MetricsAddr != "" {
		if _, _, err := net.SplitHostPort(c.MetricsAddr); err != nil {
			bad("SWITCHBOARD_METRICS_ADDR", "want host:port such as 127.0.0.1:9100, got %q", c.MetricsAddr)
		}
	}
	if c.PprofAddr != "" {
		if _, _, err := net.SplitHostPort(c.PprofAddr); err != nil {
			bad("SWITCHBOARD_PPROF_ADDR", "want host:port such as 127.0.0.1:6060, got %q", c.PprofAddr)
		}
	}
	db := c.Database()
	if !strings.HasPrefix(db, "sqlite://") && !strings.HasPrefix(db, "postgres://") && !strings.HasPrefix(db, "postgresql://") {
		bad("SWITCHBOARD_DATABASE_URL", "want postgres://… or sqlite://path, got a URL with scheme %q", scheme(db))
	}
	if c.RedisURL != "" && !redisScheme(scheme(c.RedisURL)) {
		bad("SWITCHBOARD_REDIS_URL", "want redis://host:port[/db], redis-sentinel://host:26379,…?master_name=NAME "+
			"or redis-cluster://host:port,…, got a URL with scheme %q", scheme(c.RedisURL))
	}
	if !validRedisPrefix(c.RedisPrefix) {
		bad("SWITCHBOARD_REDIS_PREFIX", "want 1 to 64 characters of A-Z a-z 0-9 _ . : -, such as %q, got %q", DefaultRedisPrefix, c.RedisPrefix)
	}
	if c.OIDCIssuer != "" {
		if u, err := url.Parse(c.OIDCIssuer); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			bad("SWITCHBOARD_OIDC_ISSUER", "want the issuer URL, e.g. https://keycloak.example/realms/app, got %q", c.OIDCIssuer)
		}
	}
	for _, path := range c.OIDCRoleClaims {
		if strings.HasPrefix(path, ".") || strings.HasSuffix(path, ".") || strings.Contains(path, "..") {
			bad("SWITCHBOARD_OIDC_ROLE_CLAIMS", "want dot paths such as realm_access.roles, got %q", path)
		}
	}
	if c.OIDCClientID == "" {
		bad("SWITCHBOARD_OIDC_CLIENT_ID", "must not be empty")
	}
	if c.JWTLeeway < 0 || c.JWTLeeway > 30*time.Second {
		bad("SWITCHBOARD_JWT_LEEWAY", "must be between 0s and 30s, got %s", c.JWTLeeway)
	}
	positive := map[string]int{
		"SWITCHBOARD_RATE_LIMIT_PER_MINUTE":       c.RateLimitPerMinute,
		"SWITCHBOARD_WS_MESSAGE_RATE_LIMIT":       c.WSMessageRateLimit,
		"SWITCHBOARD_LOGIN_RATE_LIMIT":            c.LoginRateLimit,
		"SWITCHBOARD_WS_MAX_CONNECTIONS_PER_USER": c.WSMaxConnsPerUser,
		"SWITCHBOARD_WS_MAX_IN_FLIGHT":            c.WSMaxInFlight,
		"SWITCHBOARD_HANDLER_POOL_SIZE":           c.HandlerPoolSize,
		"SWITCHBOARD_CONTROL_POOL_SIZE":           c.ControlPoolSize,
	}
	for _, name := range sortedKeys(positive) {
		if positive[name] < 1 {
			bad(name, "must be at least 1, got %d", positive[name])
		}
	}
	if c.RedisBusShards < 1 || c.RedisBusShards > 1024 {
		bad("SWITCHBOARD_REDIS_BUS_SHARDS", "must be between 1 and 1024 (and the same on every node), got %d", c.RedisBusShards)
	}
	if c.WSMaxMessageBytes < 128 || c.WSMaxMessageBytes > 64<<20 {
		bad("SWITCHBOARD_WS_MAX_MESSAGE_BYTES", "must be between 128 and 67108864, got %d", c.WSMaxMessageBytes)
	}
	if c.WSSendQueueBytes < 4096 {
		bad("SWITCHBOARD_WS_SEND_QUEUE_BYTES", "must be at least 4096, got %d", c.WSSendQueueBytes)
	}
	if c.MaxRequestBytes < 1024 {
		bad("SWITCHBOARD_MAX_REQUEST_BYTES", "must be at least 1024, got %d", c.MaxRequestBytes)
	}
	// Below 4 KiB a large token in the query or the Authorization header no longer fits; above
	// 1 MiB one connection that never finishes its headers can make the server hold megabytes.
	if c.MaxHeaderBytes < 4<<10 || c.MaxHeaderBytes > 1<<20 {
		bad("SWITCHBOARD_MAX_HEADER_BYTES", "must be between 4096 and 1048576, got %d", c.MaxHeaderBytes)
	}
	if c.HeaderTimeout < 100*time.Millisecond || c.HeaderTimeout > time.Minute {
		bad("SWITCHBOARD_HEADER_TIMEOUT", "must be between 100ms and 1m, such as 5s, got %s", c.HeaderTimeout)
	}
	if c.MaxPreAuthConnsIP < 1 || c.MaxPreAuthConnsIP > 1_000_000 {
		bad("SWITCHBOARD_MAX_PREAUTH_CONNECTIONS_PER_IP", "must be between 1 and 1000000, got %d (raise it for clients behind a large NAT)", c.MaxPreAuthConnsIP)
	}
	durations := map[string]time.Duration{
		"SWITCHBOARD_WS_PING_INTERVAL":     c.WSPingInterval,
		"SWITCHBOARD_WS_WRITE_TIMEOUT":     c.WSWriteTimeout,
		"SWITCHBOARD_HANDLER_TIMEOUT":      c.HandlerTimeout,
		"SWITCHBOARD_AUDIT_FLUSH_INTERVAL": c.AuditFlush,
		"SWITCHBOARD_DB_CONNECT_TIMEOUT":   c.DBConnectTimeout,
		"SWITCHBOARD_SHUTDOWN_TIMEOUT":     c.ShutdownTimeout,
	}
	for _, name := range sortedKeys(durations) {
		if durations[name] <= 0 {
			bad(name, "must be a positive duration such as 10s, got %s", durations[name])
		}
	}
	if c.OutboxPoll < 10*time.Millisecond || c.OutboxPoll > time.Hour {
		bad("SWITCHBOARD_OUTBOX_POLL_INTERVAL", "must be between 10ms and 1h, such as 2s, got %s", c.OutboxPoll)
	}
	if c.RelayStuckAfter < time.Second {
		bad("SWITCHBOARD_RELAY_STUCK_AFTER", "must be at least 1s, such as 1m, got %s", c.RelayStuckAfter)
	}
	if c.DedupWindow < time.Second || c.DedupWindow > 7*24*time.Hour {
		bad("SWITCHBOARD_DEDUP_WINDOW", "must be between 1s and 168h, such as 10m, got %s", c.DedupWindow)
	}
	if c.InboxClaimAfter < 100*time.Millisecond {
		bad("SWITCHBOARD_INBOX_CLAIM_AFTER", "must be at least 100ms, such as 30s, got %s", c.InboxClaimAfter)
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		bad("SWITCHBOARD_LOG_LEVEL", "want debug, info, warn or error, got %q", c.LogLevel)
	}
	switch c.LogFormat {
	case "text", "json":
	default:
		bad("SWITCHBOARD_LOG_FORMAT", "want text or json, got %q", c.LogFormat)
	}
	if c.DataDir == "" {
		bad("SWITCHBOARD_DATA_DIR", "must not be empty")
	}
	if c.DevIssuer() && !c.DevIssuerPublic && !IsLoopback(c.Addr) {
		// Anyone who reaches /login could then sign in as the demo admin, who holds every role.
		bad("SWITCHBOARD_ADDR", "%s is reachable from other machines, and without SWITCHBOARD_OIDC_ISSUER the built-in "+
			"development issuer would serve them (its admin user holds every role); set SWITCHBOARD_OIDC_ISSUER, "+
			"listen on 127.0.0.1, or set SWITCHBOARD_DEV_ISSUER_PUBLIC=true to allow it", c.Addr)
	}
	return errors.Join(errs...)
}

// IsLoopback reports whether the listen address addr (host:port) accepts connections only
// from this machine: a loopback IP or "localhost". An empty host, 0.0.0.0, :: or any other name
// or address listens where other machines can reach it.
func IsLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.IsLoopback()
}

func scheme(u string) string {
	if i := strings.Index(u, "://"); i > 0 {
		return u[:i]
	}
	return ""
}
