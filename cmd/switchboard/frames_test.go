package main

import (
	"bufio"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"switchboard/config"
)

// rawWS is a WebSocket client made of a bare TCP connection: it sends exactly the bytes a test
// gives it, however malformed, and reads the server's frames one by one.
type rawWS struct {
	t  testing.TB
	c  net.Conn
	br *bufio.Reader
}

// rawDial upgrades a bare TCP connection to /web with token.
func (s *testServer) rawDial(t testing.TB, token string) *rawWS {
	t.Helper()
	host := strings.TrimPrefix(s.base, "http://")
	c, err := net.DialTimeout("tcp", host, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	req := "GET /web HTTP/1.1\r\nHost: " + host + "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n" +
		"Authorization: Bearer " + token + "\r\n\r\n"
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write([]byte(req)); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("handshake: %v %v", resp, err)
	}
	return &rawWS{t: t, c: c, br: br}
}

func (r *rawWS) write(b []byte) {
	r.t.Helper()
	_ = r.c.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if _, err := r.c.Write(b); err != nil {
		r.t.Fatalf("write: %v", err)
	}
}

// clientFrame builds a masked client frame.
func clientFrame(fin bool, opcode byte, payload []byte) []byte {
	b0 := opcode
	if fin {
		b0 |= 0x80
	}
	f := []byte{b0}
	switch n := len(payload); {
	case n < 126:
		f = append(f, 0x80|byte(n))
	case n <= 0xFFFF:
		f = append(f, 0x80|126)
		f = binary.BigEndian.AppendUint16(f, uint16(n))
	default:
		f = append(f, 0x80|127)
		f = binary.BigEndian.AppendUint64(f, uint64(n))
	}
	var key [4]byte
	_, _ = rand.Read(key[:])
	f = append(f, key[:]...)
	for i, b := range payload {
		f = append(f, b^key[i%4])
	}
	return f
}

// readFrame reads one server frame.
func (r *rawWS) readFrame(d time.Duration) (opcode byte, payload []byte, err error) {
	_ = r.c.SetReadDeadline(time.Now().Add(d))
	var h [2]byte
	if _, err := io.ReadFull(r.br, h[:]); err != nil {
		return 0, nil, err
	}
	if h[1]&0x80 != 0 {
		return 0, nil, errors.New("server frame is masked")
	}
	n := uint64(h[1] & 0x7F)
	switch n {
	case 126:
		var b [2]byte
		if _, err := io.ReadFull(r.br, b[:]); err != nil {
			return 0, nil, err
		}
		n = uint64(binary.BigEndian.Uint16(b[:]))
	case 127:
		var b [8]byte
		if _, err := io.ReadFull(r.br, b[:]); err != nil {
			return 0, nil, err
		}
		n = binary.BigEndian.Uint64(b[:])
	}
	if n > 64<<20 {
		return 0, nil, fmt.Errorf("server frame of %d bytes", n)
	}
	payload = make([]byte, n)
	if _, err := io.ReadFull(r.br, payload); err != nil {
		return 0, nil, err
	}
	return h[0] & 0x0F, payload, nil
}

// closeCode reads frames until the server's close frame and returns its code and reason; the
// server must then close the socket without sending anything else.
func (r *rawWS) closeCode() (uint16, string) {
	r.t.Helper()
	for {
		op, p, err := r.readFrame(10 * time.Second)
		if err != nil {
			r.t.Fatalf("no close frame: %v", err)
		}
		if op != 0x8 {
			continue // answers and pings sent before the close
		}
		if len(p) < 2 {
			return 0, ""
		}
		if op, _, err := r.readFrame(10 * time.Second); err == nil {
			r.t.Fatalf("frame with opcode %d after the close frame", op)
		}
		return binary.BigEndian.Uint16(p), string(p[2:])
	}
}

// expectAlive checks that the server still answers a new connection.
func expectAlive(t *testing.T, s *testServer, token string) {
	t.Helper()
	c := s.dial(t, token)
	defer c.conn.WriteClose(1000, nil)
	if e := c.call(11, map[string]any{"topic": "dashboards.alive"}); e.status() != 0 {
		t.Fatalf("server no longer answers: %+v", e)
	}
}

// Frames that break RFC 6455 close that connection with the contract's code and never take
// the server down (PROTOCOL §1.3).
func TestHostileFrames(t *testing.T) {
	s := startServer(t, func(c *config.Config) { c.WSMaxConnsPerUser = 100; c.RateLimitPerMinute = 10000 })
	token := s.token(t, "hostile")
	valid := []byte(`{"pkg_id": 11, "req_id": "550e8400-e29b-41d4-a716-446655440000", "data": {"topic": "dashboards.x"}}`)
	cases := []struct {
		name  string
		bytes []byte
		code  uint16
	}{
		{"64-bit length with its top bit set", []byte{0x81, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0, 0x01, 0x02, 0x03, 0x04}, 1002},
		{"64-bit length of the largest int64", []byte{0x81, 0xFF, 0x7F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 1, 2, 3, 4}, 1009},
		{"invalid UTF-8 in a text frame", clientFrame(true, 0x1, []byte("{\"pkg_id\": 11, \"req_id\": \"\xff\xfe\"}")), 1007},
		{"unmasked client frame", append([]byte{0x81, byte(len(valid))}, valid...), 1002},
		{"reserved data opcode 3", clientFrame(true, 0x3, valid), 1002},
		{"reserved control opcode 11", clientFrame(true, 0xB, nil), 1002},
		{"ping longer than 125 bytes", clientFrame(true, 0x9, make([]byte, 126)), 1002},
		{"fragmented ping", clientFrame(false, 0x9, []byte("x")), 1002},
		{"RSV1 without an extension", func() []byte { f := clientFrame(true, 0x1, valid); f[0] |= 0x40; return f }(), 1002},
		{"continuation without a start", clientFrame(true, 0x0, valid), 1002},
		{"new message inside a fragmented one", append(clientFrame(false, 0x1, valid[:10]), clientFrame(true, 0x1, valid)...), 1002},
		{"close with a one-byte payload", clientFrame(true, 0x8, []byte{3}), 1002},
		{"close with a reserved code", clientFrame(true, 0x8, []byte{0x03, 0xEC}), 1002},
		{"binary frame on a JSON connection", clientFrame(true, 0x2, valid), 1003},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := s.rawDial(t, token)
			r.write(tc.bytes)
			if code, reason := r.closeCode(); code != tc.code {
				t.Fatalf("close %d %q, want %d", code, reason, tc.code)
			}
			expectAlive(t, s, token)
		})
	}
	if n := s.app.metrics.GetOrCreateCounter("ws_connection_panics_total").Get(); n != 0 {
		t.Fatalf("ws_connection_panics_total = %d", n)
	}
}

// A peer's close is answered with the same code through the writer, and nothing follows it.
func TestPeerCloseAnswered(t *testing.T) {
	s := startServer(t, nil)
	r := s.rawDial(t, s.token(t, "closer"))
	r.write(clientFrame(true, 0x8, []byte{0x03, 0xE8, 'b', 'y', 'e'}))
	if code, _ := r.closeCode(); code != 1000 {
		t.Fatalf("close answer %d, want 1000", code)
	}
}

// Every close is logged with its code, reason and frame counts, and counted by code.
func TestCloseLoggedAndCounted(t *testing.T) {
	var buf logBuffer
	s := startServerLogged(t, nil, slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelInfo})))
	r := s.rawDial(t, s.token(t, "logged"))
	r.write(clientFrame(true, 0x1, []byte(`{"pkg_id": 11, "req_id": "550e8400-e29b-41d4-a716-446655440000", "data": {"topic": "dashboards.a"}}`)))
	r.write(clientFrame(true, 0x9, make([]byte, 126))) // a protocol error
	if code, _ := r.closeCode(); code != 1002 {
		t.Fatalf("close %d", code)
	}
	eventually(t, 5*time.Second, "the close log line", func() bool {
		return strings.Contains(buf.String(), `msg="websocket closed"`)
	})
	line := ""
	for _, l := range strings.Split(buf.String(), "\n") {
		if strings.Contains(l, `msg="websocket closed"`) {
			line = l
		}
	}
	for _, want := range []string{"user=logged", "code=1002", `reason="protocol error"`, "frames_in=1", "duration="} {
		if !strings.Contains(line, want) {
			t.Errorf("close log line lacks %s: %s", want, line)
		}
	}
	if n := s.app.metrics.GetOrCreateCounter(`ws_closes_total{code="1002"}`).Get(); n != 1 {
		t.Fatalf(`ws_closes_total{code="1002"} = %d`, n)
	}
}
