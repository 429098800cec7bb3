package client

import (
	"encoding/base64"
	"errors"
	"fmt"
	"testing"
	"time"
)

func TestBackoffBounds(t *testing.T) {
	min, max := 100*time.Millisecond, 2*time.Second
	for attempt := 0; attempt < 40; attempt++ {
		want := min << min2(attempt, 20)
		if want > max {
			want = max
		}
		for i := 0; i < 50; i++ {
			d := backoff(attempt, min, max)
			if d < want/2 || d > want {
				t.Fatalf("attempt %d: %s outside [%s, %s]", attempt, d, want/2, want)
			}
		}
	}
	if d := backoff(3, 0, time.Second); d != 0 {
		t.Fatalf("zero minimum: %s", d)
	}
}

func min2(a, b int) int {
	if a < b {
		return a
	}
	return b
}

func TestCloseCodeActions(t *testing.T) {
	cases := map[uint16]closeAction{
		0: actBackoff, 1000: actBackoff, 1006: actBackoff, 1011: actBackoff,
		1001: actSoon, 1013: actSoon,
		1008: actConnLimit,
		4001: actFreshToken,
		1002: actClientFault, 1003: actClientFault, 1007: actClientFault, 1009: actClientFault,
	}
	for code, want := range cases {
		if got := actionFor(code); got != want {
			t.Errorf("close %d: action %d, want %d", code, got, want)
		}
	}
	cfg := Config{ReconnectMin: 10 * time.Millisecond, ReconnectMax: time.Second, ConnLimitDelay: 3 * time.Second}
	for attempt := 0; attempt < 10; attempt++ {
		if d := cfg.reconnectDelay(actConnLimit, attempt); d < cfg.ConnLimitDelay {
			t.Fatalf("1008 after attempt %d: %s, less than ConnLimitDelay", attempt, d)
		}
		if d := cfg.reconnectDelay(actSoon, attempt); d > cfg.ReconnectMin {
			t.Fatalf("1001/1013 after attempt %d waits %s", attempt, d)
		}
	}
}

func jwtWith(payload string) string {
	enc := base64.RawURLEncoding.EncodeToString
	return enc([]byte(`{"alg":"RS256"}`)) + "." + enc([]byte(payload)) + ".sig"
}

func TestTokenExpiry(t *testing.T) {
	if got := tokenExpiry(jwtWith(`{"sub":"a","exp":1767225600}`)); !got.Equal(time.Unix(1767225600, 0)) {
		t.Fatalf("exp: %v", got)
	}
	for _, tok := range []string{"opaque", jwtWith(`{"sub":"a"}`), jwtWith(`not json`), "a.!!!.c", jwtWith(`{"exp":"soon"}`)} {
		if got := tokenExpiry(tok); !got.IsZero() {
			t.Errorf("%q: exp %v, want unknown", tok, got)
		}
	}
}

func TestRefreshSchedule(t *testing.T) {
	now := time.Unix(1000, 0)
	cases := []struct {
		exp    time.Time
		before time.Duration
		want   time.Duration
		ok     bool
	}{
		{now.Add(time.Hour), 30 * time.Second, time.Hour - 30*time.Second, true},
		{now.Add(4 * time.Second), 30 * time.Second, 2 * time.Second, true}, // half of what is left
		{now.Add(-time.Second), 30 * time.Second, 0, true},
		{time.Time{}, 30 * time.Second, 0, false},
		{now.Add(time.Hour), -1, 0, false},
	}
	for _, tc := range cases {
		d, ok := refreshIn(tc.exp, now, tc.before)
		if d != tc.want || ok != tc.ok {
			t.Errorf("refreshIn(%v, %s) = %s %v, want %s %v", tc.exp.Sub(now), tc.before, d, ok, tc.want, tc.ok)
		}
	}
	if needsFresh(time.Time{}, now) || needsFresh(now.Add(time.Minute), now) || !needsFresh(now.Add(500*time.Millisecond), now) {
		t.Fatal("needsFresh")
	}
}

func TestConfigDefaultsAndErrors(t *testing.T) {
	cfg, err := Config{URL: "ws://127.0.0.1:8000/web", Token: "t"}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	if cfg.HTTPBase != "http://127.0.0.1:8000" || cfg.RequestTimeout != 10*time.Second || cfg.InboundQueue != 1024 {
		t.Fatalf("defaults: %+v", cfg)
	}
	if b := httpBaseOf("wss://example.com/sb/web?x=1"); b != "https://example.com/sb" {
		t.Fatalf("https base: %s", b)
	}
	if u := dialURL("ws://h/web?a=b", Protobuf); u != "ws://h/web?a=b&format=protobuf" {
		t.Fatalf("dial URL: %s", u)
	}
	for _, bad := range []Config{
		{Token: "t"},
		{URL: "http://h/web", Token: "t"},
		{URL: "ws://h/web"},
		{URL: "ws://h/web", Token: "t", PingInterval: time.Minute, ReadTimeout: time.Second},
		{URL: "ws://h/web", Token: "t", Format: Format(9)},
		{URL: "ws://h/web", Token: "t", FallbackURLs: []string{"h2:80"}},
	} {
		if _, err := bad.withDefaults(); err == nil {
			t.Errorf("%+v: no error", bad)
		}
	}
}

func TestErrorHelpers(t *testing.T) {
	wrap := func(e *Error) error { return fmt.Errorf("call: %w", e) }
	if !IsPermissionDenied(wrap(&Error{Status: 3})) || !IsPermissionDenied(wrap(&Error{HTTPStatus: 403})) || IsPermissionDenied(wrap(&Error{Status: 2})) {
		t.Fatal("IsPermissionDenied")
	}
	if !IsInvalidData(wrap(&Error{Status: 2})) || !IsInvalidData(wrap(&Error{HTTPStatus: 409})) || IsInvalidData(errors.New("x")) {
		t.Fatal("IsInvalidData")
	}
	if !IsRateLimited(wrap(&Error{Status: 1, Msg: "Rate limit exceeded"})) || !IsRateLimited(wrap(&Error{HTTPStatus: 429})) || IsRateLimited(wrap(&Error{Status: 1, Msg: "Internal error"})) {
		t.Fatal("IsRateLimited")
	}
	f := &frame{PkgID: 3, ReqID: "r", HasStatus: true, Status: 2, Msg: "Invalid data",
		Data: []byte(`{"errors":[{"path":"/name","message":"too long"}]}`)}
	e := errorFromAnswer(f)
	if len(e.Errors) != 1 || e.Errors[0].Path != "/name" || e.Error() != "switchboard: pkg_id 3: status 2: Invalid data; /name: too long" {
		t.Fatalf("%+v: %s", e, e)
	}
	he := httpError(422, []byte(`{"detail":"Invalid data","errors":[{"path":"/data","message":"x"}]}`))
	if he.Status != StatusInvalidData || he.Msg != "Invalid data" || len(he.Errors) != 1 {
		t.Fatalf("%+v", he)
	}
}
