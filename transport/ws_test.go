package transport

import (
	"bufio"
	"context"
	"encoding/binary"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/asynkron/protoactor-go/actor"
	"github.com/lxzan/gws"

	"switchboard/actors"
	"switchboard/hub"
	"switchboard/transport/auth"
)

// anyToken accepts every token as user "u"; these tests are about frames, not identity.
type anyToken struct{}

func (anyToken) Verify(context.Context, string) (*auth.Claims, error) {
	return &auth.Claims{Subject: "u", Username: "u", ExpiresAt: time.Now().Add(time.Hour)}, nil
}

// panicOn makes OnMessage panic for a frame holding "panic".
type panicOn struct{ *wsEvents }

func (p panicOn) OnMessage(socket *gws.Conn, msg *gws.Message) {
	if strings.Contains(msg.Data.String(), "panic") {
		panic("handler bug")
	}
	p.wsEvents.OnMessage(socket, msg)
}

// testWS is a WSServer on an httptest listener with a real hub and a handler actor that
// answers every request OK: enough for tests of frames, not of handlers.
type testWS struct {
	s   *WSServer
	srv *httptest.Server
	set *metrics.Set
}

func newTestWS(t testing.TB, events func(*WSServer) gws.Event) *testWS {
	t.Helper()
	quiet := slog.New(slog.DiscardHandler)
	system := actor.NewActorSystem(actor.WithLoggerFactory(func(*actor.ActorSystem) *slog.Logger { return quiet }))
	set := metrics.NewSet()
	h := hub.Start(system.Root, hub.Options{Logger: quiet, Metrics: set})
	handler := system.Root.Spawn(actor.PropsFromFunc(func(ctx actor.Context) {
		if r, ok := ctx.Message().(*actors.Request); ok {
			ctx.Respond(&actors.Response{PkgID: r.PkgID, ReqID: r.ReqID, Status: actors.StatusOK})
		}
	}))
	s := NewWSServer(WSConfig{Verifier: anyToken{}, Hub: h, Root: system.Root, Handlers: handler, MaxMessageBytes: 1 << 16,
		SendQueueBytes: 1 << 20, MaxInFlight: 4, WriteTimeout: time.Second, Logger: quiet, Metrics: set})
	if events != nil {
		s.upgrader = gws.NewUpgrader(events(s), s.upgraderOptions())
	}
	srv := httptest.NewServer(s)
	t.Cleanup(func() {
		srv.Close()
		s.BeginShutdown()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, _ = h.Stop(ctx, CloseGoingAway, "bye")
		if err := s.Wait(ctx); err != nil {
			t.Errorf("wait: %v", err)
		}
		system.Shutdown()
	})
	return &testWS{s: s, srv: srv, set: set}
}

// dial upgrades a bare TCP connection.
func (w *testWS) dial(t testing.TB) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("tcp", strings.TrimPrefix(w.srv.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	_, _ = c.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nAuthorization: Bearer t\r\n\r\n"))
	br := bufio.NewReader(c)
	if resp, err := http.ReadResponse(br, nil); err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("handshake: %v %v", resp, err)
	}
	return c, br
}

// masked is a final masked text frame (zero mask key) for payloads under 126 bytes.
func masked(payload string) []byte {
	return append([]byte{0x81, 0x80 | byte(len(payload)), 0, 0, 0, 0}, payload...)
}

// A panic on one connection's read goroutine closes that connection with 1011, is logged and
// counted, and leaves the server serving the others (PROTOCOL §1.3).
func TestReadPathPanicClosesWith1011(t *testing.T) {
	w := newTestWS(t, func(s *WSServer) gws.Event { return panicOn{&wsEvents{s: s}} })
	c, br := w.dial(t)
	_, _ = c.Write(masked("panic"))
	all, err := io.ReadAll(br)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	if len(all) < 4 || all[0] != 0x88 || binary.BigEndian.Uint16(all[2:4]) != CloseInternalError {
		t.Fatalf("after a panic the peer read % x, want close 1011", all)
	}
	if n := w.set.GetOrCreateCounter("ws_connection_panics_total").Get(); n != 1 {
		t.Fatalf("ws_connection_panics_total = %d", n)
	}

	// Another connection is unaffected: its ping is answered.
	c2, br2 := w.dial(t)
	_, _ = c2.Write([]byte{0x89, 0x80, 0, 0, 0, 0})
	var pong [2]byte
	if _, err := io.ReadFull(br2, pong[:]); err != nil || pong[0] != 0x8A {
		t.Fatalf("second connection: % x %v", pong, err)
	}
}

// Between frames a connection holds no read buffer (gws IdleReadBuffer): it waits for the
// socket's next bytes and takes a buffer when they come. Frames split anywhere (one byte at a
// time, a header cut in two), frames larger than the buffer and several frames in one write
// all still arrive whole and in order.
func TestFramesReadWithoutIdleBuffer(t *testing.T) {
	w := newTestWS(t, nil)
	c, br := w.dial(t)
	pingWith := func(payload string) []byte {
		return append([]byte{0x89, 0x80 | byte(len(payload)), 0, 0, 0, 0}, payload...)
	}
	readFrame := func() (byte, []byte) {
		t.Helper()
		var h [2]byte
		if _, err := io.ReadFull(br, h[:]); err != nil {
			t.Fatalf("read header: %v", err)
		}
		n := int(h[1] & 0x7f)
		switch n {
		case 126:
			var ext [2]byte
			_, _ = io.ReadFull(br, ext[:])
			n = int(binary.BigEndian.Uint16(ext[:]))
		case 127:
			t.Fatalf("unexpected 64-bit length")
		}
		p := make([]byte, n)
		if _, err := io.ReadFull(br, p); err != nil {
			t.Fatalf("read payload: %v", err)
		}
		return h[0], p
	}
	wantPong := func(payload string) {
		t.Helper()
		op, p := readFrame()
		if op != 0x8A || string(p) != payload {
			t.Fatalf("got opcode %#x payload %q, want pong %q", op, p, payload)
		}
	}

	// One byte at a time, with pauses, so every byte finds the buffer empty.
	for _, b := range pingWith("slow") {
		_, _ = c.Write([]byte{b})
		time.Sleep(2 * time.Millisecond)
	}
	wantPong("slow")

	// Three frames in one write: the first leaves the rest buffered.
	var three []byte
	for _, p := range []string{"a", "bb", "ccc"} {
		three = append(three, pingWith(p)...)
	}
	_, _ = c.Write(three)
	wantPong("a")
	wantPong("bb")
	wantPong("ccc")

	// A text frame far larger than the 512-byte buffer (not an envelope: it gets an error
	// answer), its header cut after the first byte, then a ping in the same write as its tail.
	big := strings.Repeat("x", 3000)
	frame := append([]byte{0x81, 0x80 | 126, byte(len(big) >> 8), byte(len(big)), 0, 0, 0, 0}, big...)
	_, _ = c.Write(frame[:1])
	time.Sleep(5 * time.Millisecond)
	_, _ = c.Write(frame[1:1500])
	time.Sleep(5 * time.Millisecond)
	_, _ = c.Write(append(frame[1500:], pingWith("after")...))
	// The pong leaves from the read loop, the answer from the connection actor: either first.
	var gotAnswer, gotPong bool
	for range 2 {
		switch op, p := readFrame(); {
		case op == 0x81 && strings.Contains(string(p), `"status_code":2`):
			gotAnswer = true
		case op == 0x8A && string(p) == "after":
			gotPong = true
		default:
			t.Fatalf("got opcode %#x payload %q", op, p)
		}
	}
	if !gotAnswer || !gotPong {
		t.Fatalf("answer %v, pong %v: want both", gotAnswer, gotPong)
	}

	// A peer that closes while the connection waits without a buffer gets the close answered.
	_, _ = c.Write([]byte{0x88, 0x82, 0, 0, 0, 0, 0x03, 0xE8})
	op, p := readFrame()
	if op != 0x88 || len(p) < 2 || binary.BigEndian.Uint16(p) != CloseNormal {
		t.Fatalf("got opcode %#x payload % x, want close 1000", op, p)
	}
}
