package transport

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/lxzan/gws"
)

// The writer's state machine against a real TCP socket pair with small buffers, so that
// non-blocking writes are partial and blocking ones wait. Each test asserts the exact bytes
// the peer reads.

// writerPair is a wsConn writing to one end of a loopback TCP connection and the peer end,
// which reads only when a test says so.
type writerPair struct {
	c    *wsConn
	peer *net.TCPConn
	fl   *flusher
}

func newWriterPair(t *testing.T, budget int, writeTimeout time.Duration) *writerPair {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	peer, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	raw := (<-accepted).(*net.TCPConn)
	if raw == nil {
		t.Fatal("accept failed")
	}
	// A small send buffer makes a large frame leave in pieces while the peer does not read.
	// (The peer's receive buffer keeps its size: a tiny window meets delayed ACKs and slows
	// loopback to a crawl.)
	_ = raw.SetWriteBuffer(4096)
	rc, err := raw.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	fl := newFlusher()
	shared := newConnShared(metrics.NewSet(), slog.New(slog.DiscardHandler))
	shared.maxInFlight, shared.budget, shared.wt = 1, budget, writeTimeout
	c := &wsConn{id: 1, raw: raw, rc: rc, fl: fl, codec: jsonCodec{}, m: shared}
	p := &writerPair{c: c, peer: peer.(*net.TCPConn), fl: fl}
	t.Cleanup(func() {
		_ = peer.Close()
		_ = raw.Close()
		fl.close()
		shared.drains.Wait()
	})
	return p
}

// readAll reads what the peer gets until the server closes the socket.
func (p *writerPair) readAll(t *testing.T) []byte {
	t.Helper()
	_ = p.peer.SetReadDeadline(time.Now().Add(10 * time.Second))
	b, err := io.ReadAll(p.peer)
	if err != nil && !isReset(err) {
		t.Fatalf("peer read: %v (after %d bytes)", err, len(b))
	}
	return b
}

// readN reads exactly n bytes.
func (p *writerPair) readN(t *testing.T, n int) []byte {
	t.Helper()
	_ = p.peer.SetReadDeadline(time.Now().Add(10 * time.Second))
	b := make([]byte, n)
	if _, err := io.ReadFull(p.peer, b); err != nil {
		t.Fatalf("peer read %d bytes: %v", n, err)
	}
	return b
}

func isReset(err error) bool {
	return err != nil && strings.Contains(err.Error(), "connection reset")
}

// textFrame is a complete server text frame with a payload of n bytes of a repeating pattern.
func textFrame(n int, fill byte) []byte {
	buf := newFrameBuf(n)
	buf = append(buf, bytes.Repeat([]byte{fill}, n)...)
	return sealFrame(buf, opText)
}

// waitState polls until the connection's writer reaches st.
func waitState(t *testing.T, c *wsConn, st writeState, midFrame bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		c.mu.Lock()
		got, mid := c.state, c.midFrame
		c.mu.Unlock()
		if got == st && mid == midFrame {
			return
		}
		time.Sleep(time.Millisecond)
	}
	t.Fatalf("writer never reached state %d (midFrame %v)", st, midFrame)
}

func concat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

// A large frame is only partly taken by the socket; the slow-consumer close that follows must
// come after the frame's last byte, not inside it.
func TestWriterSlowConsumerCloseAfterPartialWrite(t *testing.T) {
	p := newWriterPair(t, 64<<10, 10*time.Second)
	big := textFrame(1<<20, 'a') // partly written, and the rest fits in the close grace
	if !p.c.Enqueue(big) {
		t.Fatal("first frame refused")
	}
	// The flusher wrote part of the frame and handed the rest to a drain.
	waitState(t, p.c, writeDraining, false)
	if p.c.Enqueue(textFrame(128<<10, 'b')) {
		t.Fatal("a frame over the budget was queued")
	}
	got := p.readAll(t)
	want := concat(big, closeFrame(CloseTryAgainLater, "slow consumer"))
	if !bytes.Equal(got, want) {
		t.Fatalf("peer read %d bytes, want the whole frame then the close frame (%d bytes); first difference at %d",
			len(got), len(want), firstDiff(got, want))
	}
}

// The same with the rest of the frame still queued at the moment of the close (the flusher's
// non-blocking write stopped inside the frame and no drain has taken the rest yet).
func TestWriterCloseKeepsRestOfStartedFrame(t *testing.T) {
	p := newWriterPair(t, 64<<10, 10*time.Second)
	big := textFrame(1<<20, 'a')
	small := textFrame(10, 'b')
	// Drive the non-blocking write by hand, as the flusher does, and hold the drain back by
	// keeping the lock while closing.
	p.c.mu.Lock()
	p.c.queue = append(p.c.queue, big, small)
	p.c.queued = len(big) + len(small)
	p.c.state = writeScheduled
	batch := p.c.takeLocked()
	p.c.mu.Unlock()
	n, err := newNBWriter().writev(p.c.rc, batch)
	if err == nil || n == 0 || n >= len(big) {
		t.Fatalf("want a partial write inside the first frame, got n=%d err=%v", n, err)
	}
	rest, partial := unwritten(batch, n)
	if !partial || len(rest) != 2 {
		t.Fatalf("unwritten: %d buffers, partial %v", len(rest), partial)
	}
	p.c.mu.Lock()
	p.c.queue = append(rest, p.c.queue...)
	p.c.midFrame = true
	p.c.queued -= n
	// gws's read side fails the connection now (say, a protocol error) before the drain runs.
	p.c.mu.Unlock()
	p.c.closeFromGWS(binary.BigEndian.AppendUint16(nil, CloseProtocolError), errors.New("protocol error"))
	p.c.mu.Lock()
	p.c.startDrainLocked()
	got := p.readAll(t)
	want := concat(big, closeFrame(CloseProtocolError, "protocol error"))
	if !bytes.Equal(got, want) {
		t.Fatalf("peer read %d bytes, want the whole first frame then the close frame (%d); first difference at %d",
			len(got), len(want), firstDiff(got, want))
	}
}

// A drain sets a write deadline while the peer is slow; once the peer catches up and the
// connection idles past it, the next frame must still go out.
func TestWriterDeadlineClearedWhenIdle(t *testing.T) {
	const wt = time.Second
	p := newWriterPair(t, 8<<20, wt)
	big := textFrame(512<<10, 'a')
	p.c.Enqueue(big)
	waitState(t, p.c, writeDraining, false)
	if got := p.readN(t, len(big)); !bytes.Equal(got, big) {
		t.Fatal("first frame corrupted")
	}
	waitState(t, p.c, writeIdle, false)
	time.Sleep(wt + wt/2) // the point of the test: idle past the deadline the drain had set
	small := textFrame(10, 'b')
	if !p.c.Enqueue(small) {
		t.Fatal("frame refused after idling")
	}
	if got := p.readN(t, len(small)); !bytes.Equal(got, small) {
		t.Fatalf("second frame: got %q", got)
	}
	p.c.mu.Lock()
	closing := p.c.closing
	p.c.mu.Unlock()
	if closing {
		t.Fatal("connection closed after idling past an old write deadline")
	}
}

// A socket that is already full takes nothing (EAGAIN): the frames wait in the drain and
// arrive whole and in order, a keepalive ping queued meanwhile among them.
func TestWriterFullSocketThenPingDuringDrain(t *testing.T) {
	p := newWriterPair(t, 16<<20, 10*time.Second)
	big := textFrame(2<<20, 'a')
	p.c.Enqueue(big)
	waitState(t, p.c, writeDraining, false)
	next := textFrame(300, 'b')
	p.c.Enqueue(next)
	p.c.Ping()
	last := textFrame(70000, 'c')
	p.c.Enqueue(last)
	want := concat(big, next, pingFrame, last)
	if got := p.readN(t, len(want)); !bytes.Equal(got, want) {
		t.Fatalf("peer read frames out of order or corrupted; first difference at %d", firstDiff(got, want))
	}
	waitState(t, p.c, writeIdle, false)
}

// Close while a drain waits for the peer: what was queued goes out first, then the close.
func TestWriterCloseWhileDraining(t *testing.T) {
	p := newWriterPair(t, 16<<20, 10*time.Second)
	big := textFrame(1<<20, 'a')
	p.c.Enqueue(big)
	waitState(t, p.c, writeDraining, false)
	after := textFrame(500, 'b')
	p.c.Enqueue(after)
	p.c.Close(CloseGoingAway, "server shutting down")
	if p.c.Enqueue(textFrame(1, 'c')) {
		t.Fatal("frame queued after close")
	}
	got := p.readAll(t)
	want := concat(big, after, closeFrame(CloseGoingAway, "server shutting down"))
	if !bytes.Equal(got, want) {
		t.Fatalf("peer read %d bytes, want %d; first difference at %d", len(got), len(want), firstDiff(got, want))
	}
}

// A peer that never reads: the close cannot finish the started frame within the close grace,
// so the connection is cut with no other byte after the frame's beginning.
func TestWriterCutWithoutAnotherByteWhenFrameCannotFinish(t *testing.T) {
	p := newWriterPair(t, 64<<10, 10*time.Second)
	big := textFrame(4<<20, 'a')
	p.c.Enqueue(big)
	waitState(t, p.c, writeDraining, false)
	p.c.Enqueue(textFrame(128<<10, 'b')) // over budget: slow-consumer close
	// Wait for the cut (close grace), then read what had reached the peer.
	deadline := time.Now().Add(10 * time.Second)
	for {
		p.c.mu.Lock()
		gone := !p.c.closeSend && p.c.closing
		p.c.mu.Unlock()
		if gone || time.Now().After(deadline) {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	got := p.readAll(t)
	if len(got) >= len(big) {
		t.Fatalf("peer read %d bytes; the frame could not have finished", len(got))
	}
	if !bytes.Equal(got, big[:len(got)]) {
		t.Fatalf("bytes after the start of the frame are not the frame's own; first difference at %d", firstDiff(got, big))
	}
}

// gws answers a peer's close (no status) through the writer: an empty close frame.
func TestWriterAnswersPeerCloseWithoutStatus(t *testing.T) {
	p := newWriterPair(t, 64<<10, 10*time.Second)
	p.c.closeFromGWS(nil, &gws.CloseError{})
	if got := p.readAll(t); !bytes.Equal(got, []byte{0x88, 0x00}) {
		t.Fatalf("peer read % x", got)
	}
}

// A panic on the write path drops that connection alone.
func TestWriterPanicDropsConnection(t *testing.T) {
	p := newWriterPair(t, 64<<10, 10*time.Second)
	p.c.rc = nil // force the drain path
	p.c.queue = append(p.c.queue, nil)
	func() {
		defer p.c.recoverWrite()
		panic("boom")
	}()
	if got := p.readAll(t); len(got) != 0 {
		t.Fatalf("peer read % x after a write-path panic", got)
	}
	if n := p.c.m.panics.Get(); n != 1 {
		t.Fatalf("ws_connection_panics_total = %d", n)
	}
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// A read that ended without a close frame (the peer went away or stayed silent) gets none
// either: the socket is dropped and the close counts as 1006.
func TestWriterPeerGoneGetsNoCloseFrame(t *testing.T) {
	p := newWriterPair(t, 64<<10, 10*time.Second)
	p.c.closeFromGWS(binary.BigEndian.AppendUint16(nil, CloseNormal), io.EOF)
	if got := p.readAll(t); len(got) != 0 {
		t.Fatalf("peer read % x", got)
	}
	p.c.mu.Lock()
	code := p.c.sentCode
	p.c.mu.Unlock()
	if code != 1006 {
		t.Fatalf("sent code %d, want 1006", code)
	}
}
