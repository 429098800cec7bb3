package redisconn

import (
	"errors"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	cases := []struct {
		url    string
		kind   Kind
		addrs  string
		master string
	}{
		{"redis://127.0.0.1:6379/0", Single, "127.0.0.1:6379", ""},
		{"redis://u:p@localhost", Single, "localhost:6379", ""},
		{"rediss://h:6380/2?dial_timeout=3s", Single, "h:6380", ""},
		{"redis://a:7000,b:7001,c", Cluster, "a:7000,b:7001,c:6379", ""},
		{"redis-cluster://a:7000", Cluster, "a:7000", ""},
		{"redis+cluster://u:p@a:7000,[::1]:7001/0?read_timeout=2s", Cluster, "a:7000,[::1]:7001", ""},
		{"redis-sentinel://s1,s2:26380,s3/1?master_name=mymaster", Sentinel, "s1:26379,s2:26380,s3:26379", "mymaster"},
		{"rediss-sentinel://u:p@s1?master_name=m&sentinel_password=x", Sentinel, "s1:26379", "m"},
		{"redis://[::1]:6379", Single, "[::1]:6379", ""},
	}
	for _, c := range cases {
		tg, err := Parse(c.url)
		if err != nil {
			t.Errorf("Parse(%q): %v", c.url, err)
			continue
		}
		if tg.Kind != c.kind || strings.Join(tg.Addrs, ",") != c.addrs || tg.Master != c.master {
			t.Errorf("Parse(%q) = %s %v %q, want %s %s %q", c.url, tg.Kind, tg.Addrs, tg.Master, c.kind, c.addrs, c.master)
		}
		cl := tg.NewClient(Settings{})
		_ = cl.Close()
	}
}

func TestParseCredentials(t *testing.T) {
	tg, err := Parse("redis-sentinel://alice:secret@s1,s2?master_name=m&sentinel_username=sen&sentinel_password=spw&db=3")
	if err != nil {
		t.Fatal(err)
	}
	o := tg.failover
	if o.Username != "alice" || o.Password != "secret" || o.SentinelUsername != "sen" || o.SentinelPassword != "spw" || o.DB != 3 {
		t.Errorf("sentinel options: user %q/%q sentinel %q/%q db %d", o.Username, o.Password, o.SentinelUsername, o.SentinelPassword, o.DB)
	}
	if len(o.SentinelAddrs) != 2 || o.MasterName != "m" {
		t.Errorf("sentinel addrs %v master %q", o.SentinelAddrs, o.MasterName)
	}
	tg, err = Parse("redis://bob:pw@a:1,b:2")
	if err != nil {
		t.Fatal(err)
	}
	if c := tg.cluster; c.Username != "bob" || c.Password != "pw" || len(c.Addrs) != 2 {
		t.Errorf("cluster options: %q/%q %v", c.Username, c.Password, c.Addrs)
	}
}

func TestParseRefuses(t *testing.T) {
	for _, raw := range []string{
		"", "localhost:6379", "http://h", "redis://", "redis://a,,b", "redis://a:1,b:x",
		"redis-sentinel://s1", // no master_name
		"redis-cluster://a:1/3",
		"redis://a:1?addr=b:2",
		"redis://u:hunter2@h?no_such_option=1",
		"redis://u:hunter2@h/notadb",
		"redis-sentinel://u:hunter2@s?master_name=m&bogus=1",
		"redis://u:hunter2@h#frag",
	} {
		_, err := Parse(raw)
		if err == nil {
			t.Errorf("Parse(%q) succeeded", raw)
			continue
		}
		if !errors.Is(err, ErrInvalidURL) {
			t.Errorf("Parse(%q): %v is not ErrInvalidURL", raw, err)
		}
		if strings.Contains(err.Error(), "hunter2") {
			t.Errorf("Parse(%q): the error shows the password: %v", raw, err)
		}
	}
}

func FuzzParse(f *testing.F) {
	f.Add("redis-sentinel://u:p@s1,s2:1/0?master_name=m")
	f.Add("redis://[::1]:1,[::2]")
	f.Fuzz(func(t *testing.T, raw string) {
		tg, err := Parse(raw)
		if err == nil && (len(tg.Addrs) == 0 || tg.Kind == "") {
			t.Fatalf("Parse(%q) = %+v", raw, tg)
		}
	})
}
