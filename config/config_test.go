package config

import (
	"strings"
	"testing"
	"time"
)

func env(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

func TestDefaultIsValidAndEmbedded(t *testing.T) {
	c, err := Load(env(nil))
	if err != nil {
		t.Fatalf("Load with no env: %v", err)
	}
	if c.Addr != "127.0.0.1:8000" || !c.DevIssuer() || c.RedisURL != "" {
		t.Fatalf("unexpected defaults: %+v", c)
	}
	if got, want := c.Database(), "sqlite://data/switchboard.db"; got != want {
		t.Fatalf("Database() = %q, want %q", got, want)
	}
	if c.WSMaxMessageBytes != 65536 || c.WSSendQueueBytes != 1048576 || c.WSMaxConnsPerUser != 5 {
		t.Fatalf("protocol defaults drifted: %+v", c)
	}
}

func TestOverrides(t *testing.T) {
	c, err := Load(env(map[string]string{
		"SWITCHBOARD_ADDR":                  "0.0.0.0:9000",
		"SWITCHBOARD_DEV_ISSUER_PUBLIC":     "true",
		"SWITCHBOARD_DATABASE_URL":          "postgres://postgres@127.0.0.1:5432/x",
		"SWITCHBOARD_ALLOWED_ORIGINS":       " https://a.example , https://b.example,",
		"SWITCHBOARD_TRUSTED_PROXIES":       "10.0.0.0/8, 127.0.0.1",
		"SWITCHBOARD_WS_PING_INTERVAL":      "5s",
		"SWITCHBOARD_WS_MESSAGE_RATE_LIMIT": "7",
		"SWITCHBOARD_DATA_DIR":              "/var/lib/sb",
		"SWITCHBOARD_REDIS_PREFIX":          "tenant-a:",
		"SWITCHBOARD_CONTROL_POOL_SIZE":     "4",
	}))
	if err != nil {
		t.Fatal(err)
	}
	if c.ControlPoolSize != 4 || Default().ControlPoolSize != 16 {
		t.Fatalf("control pool: %d (default %d)", c.ControlPoolSize, Default().ControlPoolSize)
	}
	if c.Addr != "0.0.0.0:9000" || c.WSPingInterval != 5*time.Second || c.WSMessageRateLimit != 7 {
		t.Fatalf("overrides not applied: %+v", c)
	}
	if len(c.AllowedOrigins) != 2 || c.AllowedOrigins[1] != "https://b.example" {
		t.Fatalf("origins: %q", c.AllowedOrigins)
	}
	if len(c.TrustedProxies) != 2 || c.TrustedProxies[1].String() != "127.0.0.1/32" {
		t.Fatalf("proxies: %v", c.TrustedProxies)
	}
	if c.Database() != "postgres://postgres@127.0.0.1:5432/x" {
		t.Fatalf("database: %s", c.Database())
	}
	if c.RedisPrefix != "tenant-a:" || Default().RedisPrefix != DefaultRedisPrefix {
		t.Fatalf("redis prefix: %q (default %q)", c.RedisPrefix, Default().RedisPrefix)
	}
}

func TestRedisPrefixIsChecked(t *testing.T) {
	for _, bad := range []string{"has space:", "brace{tag}:", strings.Repeat("x", 65)} {
		_, err := Load(env(map[string]string{"SWITCHBOARD_REDIS_PREFIX": bad}))
		if err == nil || !strings.Contains(err.Error(), "SWITCHBOARD_REDIS_PREFIX") {
			t.Errorf("prefix %q: want an error naming SWITCHBOARD_REDIS_PREFIX, got %v", bad, err)
		}
	}
	c := Default()
	c.RedisPrefix = "" // an unset variable keeps the default; a Config built in code must set one
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "SWITCHBOARD_REDIS_PREFIX") {
		t.Errorf("empty prefix: got %v", err)
	}
}

func TestEdgeLimits(t *testing.T) {
	d := Default()
	if d.MaxHeaderBytes != 16384 || d.HeaderTimeout != 5*time.Second || d.MaxPreAuthConnsIP != 256 {
		t.Fatalf("edge defaults drifted: %d %s %d", d.MaxHeaderBytes, d.HeaderTimeout, d.MaxPreAuthConnsIP)
	}
	c, err := Load(env(map[string]string{
		"SWITCHBOARD_MAX_HEADER_BYTES":               "65536",
		"SWITCHBOARD_HEADER_TIMEOUT":                 "2s",
		"SWITCHBOARD_MAX_PREAUTH_CONNECTIONS_PER_IP": "4000",
	}))
	if err != nil || c.MaxHeaderBytes != 65536 || c.HeaderTimeout != 2*time.Second || c.MaxPreAuthConnsIP != 4000 {
		t.Fatalf("overrides: %d %s %d, %v", c.MaxHeaderBytes, c.HeaderTimeout, c.MaxPreAuthConnsIP, err)
	}
	for name, bad := range map[string]string{
		"SWITCHBOARD_MAX_HEADER_BYTES":               "1024",
		"SWITCHBOARD_HEADER_TIMEOUT":                 "0s",
		"SWITCHBOARD_MAX_PREAUTH_CONNECTIONS_PER_IP": "0",
	} {
		_, err := Load(env(map[string]string{name: bad}))
		if err == nil || !strings.Contains(err.Error(), name+": must be between") {
			t.Errorf("%s=%s: want an error naming the variable and its range, got %v", name, bad, err)
		}
	}
	if _, err := Load(env(map[string]string{"SWITCHBOARD_MAX_HEADER_BYTES": "2MiB"})); err == nil ||
		!strings.Contains(err.Error(), "SWITCHBOARD_MAX_HEADER_BYTES: want a whole number") {
		t.Errorf("unparsable header limit: %v", err)
	}
}

func TestErrorsAreCollectedAndActionable(t *testing.T) {
	_, err := Load(env(map[string]string{
		"SWITCHBOARD_ADDR":                  "nonsense",
		"SWITCHBOARD_WS_PING_INTERVAL":      "5",
		"SWITCHBOARD_RATE_LIMIT_PER_MINUTE": "0",
		"SWITCHBOARD_DATABASE_URL":          "mysql://x",
		"SWITCHBOARD_JWT_LEEWAY":            "1m",
		"SWITCHBOARD_LOG_FORMAT":            "xml",
		"SWITCHBOARD_CONTROL_POOL_SIZE":     "0",
	}))
	if err == nil {
		t.Fatal("want errors")
	}
	for _, want := range []string{
		"SWITCHBOARD_WS_PING_INTERVAL: want a duration",
		"SWITCHBOARD_RATE_LIMIT_PER_MINUTE: must be at least 1",
		"SWITCHBOARD_DATABASE_URL",
		"SWITCHBOARD_JWT_LEEWAY",
		"SWITCHBOARD_LOG_FORMAT",
		"SWITCHBOARD_CONTROL_POOL_SIZE: must be at least 1",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
	_, err = Load(env(map[string]string{"SWITCHBOARD_ADDR": "nonsense"}))
	if err == nil || !strings.Contains(err.Error(), "SWITCHBOARD_ADDR") {
		t.Fatalf("want addr error, got %v", err)
	}
}

func TestRedisURLAndShards(t *testing.T) {
	for _, ok := range []string{"redis://h:6379/0", "rediss://h", "redis-sentinel://s1,s2?master_name=m",
		"redis-cluster://a:1,b:2", "redis://a:1,b:2", "REDIS-CLUSTER://a:1"} {
		if _, err := Load(env(map[string]string{"SWITCHBOARD_REDIS_URL": ok})); err != nil {
			t.Errorf("SWITCHBOARD_REDIS_URL=%s: %v", ok, err)
		}
	}
	for _, bad := range []string{"http://h", "h:6379", "sentinel://s1"} {
		_, err := Load(env(map[string]string{"SWITCHBOARD_REDIS_URL": bad}))
		if err == nil || !strings.Contains(err.Error(), "redis-sentinel://") {
			t.Errorf("SWITCHBOARD_REDIS_URL=%s: want an error listing the forms, got %v", bad, err)
		}
	}
	c, err := Load(env(map[string]string{"SWITCHBOARD_REDIS_BUS_SHARDS": "64"}))
	if err != nil || c.RedisBusShards != 64 {
		t.Errorf("SWITCHBOARD_REDIS_BUS_SHARDS=64: %d, %v", c.RedisBusShards, err)
	}
	if Default().RedisBusShards != 16 {
		t.Errorf("default shards %d", Default().RedisBusShards)
	}
	for _, bad := range []string{"0", "-1", "1025", "x"} {
		_, err := Load(env(map[string]string{"SWITCHBOARD_REDIS_BUS_SHARDS": bad}))
		if err == nil || !strings.Contains(err.Error(), "SWITCHBOARD_REDIS_BUS_SHARDS") {
			t.Errorf("SWITCHBOARD_REDIS_BUS_SHARDS=%s: %v", bad, err)
		}
	}
}

func TestRelayVariables(t *testing.T) {
	c, err := Load(env(map[string]string{
		"SWITCHBOARD_OUTBOX_POLL_INTERVAL": "500ms",
		"SWITCHBOARD_RELAY_STUCK_AFTER":    "5m",
		"SWITCHBOARD_DEDUP_WINDOW":         "1h",
		"SWITCHBOARD_INBOX_CLAIM_AFTER":    "10s",
	}))
	if err != nil || c.OutboxPoll != 500*time.Millisecond || c.RelayStuckAfter != 5*time.Minute ||
		c.DedupWindow != time.Hour || c.InboxClaimAfter != 10*time.Second {
		t.Fatalf("overrides: %+v %v", c, err)
	}
	for name, bad := range map[string]string{
		"SWITCHBOARD_OUTBOX_POLL_INTERVAL": "1ms",
		"SWITCHBOARD_RELAY_STUCK_AFTER":    "0s",
		"SWITCHBOARD_DEDUP_WINDOW":         "2000h",
		"SWITCHBOARD_INBOX_CLAIM_AFTER":    "-1s",
	} {
		_, err := Load(env(map[string]string{name: bad}))
		if err == nil || !strings.Contains(err.Error(), name+": must be") {
			t.Errorf("%s=%s: want an error naming the variable, got %v", name, bad, err)
		}
	}
}
