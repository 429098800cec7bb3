package config

import (
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// Every variable Load reads is documented, and nothing is documented that Load does not read.
func TestEveryVariableIsDocumented(t *testing.T) {
	c := Default()
	p := parser{}
	bind(&p, &c)
	seen := map[string]bool{}
	for _, b := range p.bound {
		if seen[b.name] {
			t.Errorf("%s is bound twice", b.name)
		}
		seen[b.name] = true
		if d, ok := docs[b.name]; !ok || d.meaning == "" {
			t.Errorf("%s has no meaning in docs", b.name)
		}
	}
	for name := range docs {
		if !seen[name] {
			t.Errorf("docs describe %s, which Load does not read", name)
		}
	}
}

// README.md's configuration table lists exactly Vars(), with the same defaults and meanings.
func TestReadmeTableMatchesConfig(t *testing.T) {
	b, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	row := regexp.MustCompile("(?m)^\\| `(SWITCHBOARD_[A-Z_]+)` \\| (.*) \\| (.*) \\|$")
	readme := map[string][2]string{}
	var order []string
	for _, m := range row.FindAllStringSubmatch(string(b), -1) {
		readme[m[1]] = [2]string{m[2], m[3]}
		order = append(order, m[1])
	}
	var want strings.Builder
	var names []string
	for _, v := range Vars() {
		names = append(names, v.Name)
		want.WriteString("| `" + v.Name + "` | " + v.Default + " | " + v.Meaning + " |\n")
		got, ok := readme[v.Name]
		switch {
		case !ok:
			t.Errorf("README.md has no row for %s", v.Name)
		case got[0] != v.Default:
			t.Errorf("README.md: %s default %q, config says %q", v.Name, got[0], v.Default)
		case got[1] != v.Meaning:
			t.Errorf("README.md: %s meaning %q, config says %q", v.Name, got[1], v.Meaning)
		}
	}
	for name := range readme {
		if !slices.Contains(names, name) {
			t.Errorf("README.md lists %s, which config does not read", name)
		}
	}
	if !slices.Equal(order, names) && !t.Failed() {
		t.Errorf("README.md rows are in another order than config's")
	}
	if t.Failed() {
		t.Logf("the table config describes:\n%s", want.String())
	}
}

func TestResolveReportsSourcesAndRedacts(t *testing.T) {
	c, settings, err := Resolve(env(map[string]string{
		"SWITCHBOARD_ADDR":               "127.0.0.1:9000",
		"SWITCHBOARD_DATABASE_URL":       "postgres://app:hunter2@db:5432/sb",
		"SWITCHBOARD_REDIS_URL":          "redis://:redispw@cache:6379/0",
		"SWITCHBOARD_OIDC_ISSUER":        "https://id.example/realms/x",
		"SWITCHBOARD_OIDC_CLIENT_SECRET": "s3cret",
		"SWITCHBOARD_DATA_DIR":           "/from/env",
	}), map[string]string{"SWITCHBOARD_DATA_DIR": "/from/flag"})
	if err != nil {
		t.Fatal(err)
	}
	if c.DataDir != "/from/flag" || c.Addr != "127.0.0.1:9000" {
		t.Fatalf("flag should beat the environment: %+v", c)
	}
	got := map[string]Setting{}
	for _, s := range settings {
		got[s.Name] = s
	}
	for name, want := range map[string]Setting{
		"SWITCHBOARD_ADDR":               {Value: "127.0.0.1:9000", Source: SourceEnv},
		"SWITCHBOARD_DATA_DIR":           {Value: "/from/flag", Source: SourceFlag},
		"SWITCHBOARD_LOG_LEVEL":          {Value: "info", Source: SourceDefault},
		"SWITCHBOARD_OIDC_CLIENT_SECRET": {Value: Redacted, Source: SourceEnv},
		"SWITCHBOARD_DATABASE_URL":       {Value: "postgres://app:xxxxx@db:5432/sb", Source: SourceEnv},
		"SWITCHBOARD_REDIS_URL":          {Value: "redis://:xxxxx@cache:6379/0", Source: SourceEnv},
		"SWITCHBOARD_RBAC_FILE":          {Value: "", Source: SourceDefault},
	} {
		if g := got[name]; g.Value != want.Value || g.Source != want.Source {
			t.Errorf("%s: got %q from %s, want %q from %s", name, g.Value, g.Source, want.Value, want.Source)
		}
	}
	if len(settings) != len(Vars()) {
		t.Errorf("%d settings, %d variables", len(settings), len(Vars()))
	}
	for _, s := range settings {
		for _, secret := range []string{"hunter2", "redispw", "s3cret"} {
			if strings.Contains(s.Value, secret) {
				t.Errorf("%s shows a secret: %q", s.Name, s.Value)
			}
		}
	}
	if RedactURL("postgres://a:%zz@x/y") != Redacted {
		t.Error("a URL that does not parse must be redacted whole")
	}
}

// The development issuer's /login would hand out an all-roles admin to anyone who reaches the
// listener: on an address other machines reach it needs SWITCHBOARD_DEV_ISSUER_PUBLIC.
func TestDevIssuerOnPublicAddressNeedsOptIn(t *testing.T) {
	for _, addr := range []string{"0.0.0.0:8000", ":8000", "[::]:8000", "192.168.1.10:8000", "example.com:8000"} {
		_, err := Load(env(map[string]string{"SWITCHBOARD_ADDR": addr}))
		if err == nil || !strings.Contains(err.Error(), "SWITCHBOARD_DEV_ISSUER_PUBLIC=true") || !strings.HasPrefix(err.Error(), "SWITCHBOARD_ADDR: ") {
			t.Errorf("%s without opt-in: got %v", addr, err)
		}
		if _, err := Load(env(map[string]string{"SWITCHBOARD_ADDR": addr, "SWITCHBOARD_DEV_ISSUER_PUBLIC": "true"})); err != nil {
			t.Errorf("%s with opt-in: %v", addr, err)
		}
		if _, err := Load(env(map[string]string{"SWITCHBOARD_ADDR": addr, "SWITCHBOARD_OIDC_ISSUER": "https://id.example/realms/x"})); err != nil {
			t.Errorf("%s with an external issuer: %v", addr, err)
		}
	}
	for _, addr := range []string{"127.0.0.1:8000", "127.0.0.2:0", "[::1]:8000", "localhost:8000"} {
		if _, err := Load(env(map[string]string{"SWITCHBOARD_ADDR": addr})); err != nil {
			t.Errorf("%s is loopback: %v", addr, err)
		}
	}
	if _, err := Load(env(map[string]string{"SWITCHBOARD_DEV_ISSUER_PUBLIC": "yes please"})); err == nil ||
		!strings.Contains(err.Error(), "SWITCHBOARD_DEV_ISSUER_PUBLIC: want true or false") {
		t.Errorf("bad boolean: %v", err)
	}
}

func TestWarnings(t *testing.T) {
	c, err := Load(env(map[string]string{
		"SWITCHBOARD_ALLOWED_ORIGINS": "example.com,https://ok.example,https://app.example/,HTTPS://Up.Example,*,http://localhost:3000",
	}))
	if err != nil {
		t.Fatal(err)
	}
	ws := c.Warnings([]string{
		"SWITCHBOARD_ADRR=0.0.0.0:1", "SWITCHBOARD_REDIS_ULR=x", "SWITCHBOARD_TEST_LOG=1", "SWITCHBOARD_ADDR=x",
		"SWITCHBOARD_COMPLETELY_DIFFERENT=1", "PATH=/bin", "SWITCHBOARD_DATADIR=/x",
	})
	want := []string{
		"SWITCHBOARD_ADRR is not a Switchboard setting and is ignored; did you mean SWITCHBOARD_ADDR?",
		"SWITCHBOARD_COMPLETELY_DIFFERENT is not a Switchboard setting and is ignored",
		"SWITCHBOARD_DATADIR is not a Switchboard setting and is ignored; did you mean SWITCHBOARD_DATA_DIR?",
		"SWITCHBOARD_REDIS_ULR is not a Switchboard setting and is ignored; did you mean SWITCHBOARD_REDIS_URL?",
		`SWITCHBOARD_ALLOWED_ORIGINS: "example.com" has no scheme, so it never matches a browser's Origin; write it as https://example.com`,
		`SWITCHBOARD_ALLOWED_ORIGINS: "https://app.example/" is not an origin (browsers send scheme://host[:port] only); write it as https://app.example`,
		`SWITCHBOARD_ALLOWED_ORIGINS: "HTTPS://Up.Example" has upper-case letters, but browsers send origins in lower case; write it as https://up.example`,
		`SWITCHBOARD_ALLOWED_ORIGINS: "*" matches only an Origin header that is literally *; leave the variable empty to allow any origin`,
	}
	if !slices.Equal(ws, want) {
		t.Errorf("warnings:\n%s\nwant:\n%s", strings.Join(ws, "\n"), strings.Join(want, "\n"))
	}
	c.DevIssuerPublic, c.OIDCIssuer = true, "https://id.example/realms/x"
	if ws := c.Warnings(nil); len(ws) != 5 || !strings.Contains(ws[4], "SWITCHBOARD_DEV_ISSUER_PUBLIC has no effect") {
		t.Errorf("opt-in with an external issuer: %q", ws)
	}
}

func TestEditDistance(t *testing.T) {
	for _, c := range []struct {
		a, b string
		d    int
	}{{"", "", 0}, {"ab", "ba", 1}, {"ADRR", "ADDR", 1}, {"kitten", "sitting", 3}, {"abc", "", 3}, {"ca", "abc", 3}} {
		if got := editDistance(c.a, c.b); got != c.d {
			t.Errorf("editDistance(%q, %q) = %d, want %d", c.a, c.b, got, c.d)
		}
	}
}

func TestRedactRedisURLs(t *testing.T) {
	for in, want := range map[string]string{
		"redis://u:pw@h:6379/0": "redis://u:xxxxx@h:6379/0",
		"redis://h:6379/0":      "redis://h:6379/0",
		"redis://:pw@a:1,b:2":   "redis://:xxxxx@a:1,b:2",
		"redis://a:1,[::1]:2/0": "redis://a:1,[::1]:2/0",
		"redis-sentinel://u:pw@s1,s2/0?master_name=m&sentinel_password=spw": "redis-sentinel://u:xxxxx@s1,s2/0?master_name=m&sentinel_password=xxxxx",
		"redis-sentinel://s1?password=pw&master_name=m":                     "redis-sentinel://s1?master_name=m&password=xxxxx",
	} {
		if got := RedactURL(in); got != want {
			t.Errorf("RedactURL(%q) = %q, want %q", in, got, want)
		}
	}
}
