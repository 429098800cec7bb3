package transport

import (
	"errors"
	"net"
	"sync"
	"syscall"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/asynkron/protoactor-go/actor"
	"github.com/lxzan/gws"

	"switchboard/actors"
	"switchboard/hub"
)

// Close codes used by the server.
const (
	CloseGoingAway       = 1001
	CloseUnsupportedData = 1003
	ClosePolicyViolation = 1008
	CloseTryAgainLater   = 1013
	CloseTokenExpired    = 4001
)

// closeGrace bounds how long a close frame may take to leave; after it the socket is dropped.
const closeGrace = time.Second

var pingFrame = controlFrame(opPing, nil)

// wsConn is one socket's bounded writer. Frames are queued without blocking; whoever writes
// next — the connection's flusher (flusher.go), or a drain goroutine of its own while the peer
// reads slowly — takes everything queued and writes it with a single writev, so a connection
// with many frames waiting costs one syscall instead of one per frame (each frame stays its own
// WebSocket frame). Queued bytes over the budget close the connection as a slow consumer.
//
// Frames are written to the raw net.Conn, not through gws: gws itself only writes close and
// error frames, and a net.Conn serialises whole Write calls, so frames never interleave.
type wsConn struct {
	id     uint64
	ws     *gws.Conn
	raw    net.Conn
	rc     syscall.RawConn // for non-blocking writes; nil: always write from a drain goroutine
	fl     *flusher
	codec  hub.Codec // the connection's wireCodec; see Codec
	budget int
	wt     time.Duration // write timeout of one flush
	m      *wsMetrics

	mu          sync.Mutex
	queue       [][]byte
	spare       [][]byte
	queued      int // bytes queued or being written
	state       writeState
	closing     bool
	flushFirst  bool // on close, write what is queued before the close frame
	closeCode   uint16
	closeReason string
	done        chan struct{} // closed when closing starts
	deadline    time.Time     // the write deadline in force (the drain moves it)

	// Read side, touched by the read goroutine (and the actor through release).
	inflight chan struct{}
	pid      *actor.PID // set before ReadLoop starts
	user     *actors.User
	counted  bool // holds a slot of the per-user connection limit
	// remote and userAgent come from the handshake, for limits and the audit log.
	remote, userAgent string
}

// writeState says who writes a connection's queue next; exactly one of them at a time.
type writeState uint8

const (
	writeIdle      writeState = iota // nothing queued, nobody writing
	writeScheduled                   // on the flusher's list, or being written by it
	writeDraining                    // a drain goroutine owns the socket's writes
)

var (
	_ hub.Conn      = (*wsConn)(nil)
	_ actors.Socket = (*wsConn)(nil)
)

func (c *wsConn) ID() uint64 { return c.id }

// Codec returns the connection's frame codec (hub.Conn). It is kept as the hub's interface
// because the hub asks for it once per delivery: this way that is a plain load, not an
// interface-to-interface conversion. The read and answer paths reach the rest of the format
// through wire.
func (c *wsConn) Codec() hub.Codec { return c.codec }

// wire is the connection's codec as the transport uses it; newConn only sets wireCodecs.
func (c *wsConn) wire() wireCodec { return c.codec.(wireCodec) }

// EncodeResponse encodes an answer in the connection's codec (actors.Socket).
func (c *wsConn) EncodeResponse(r *actors.Response) ([]byte, error) {
	return c.wire().EncodeResponse(r)
}

// Send queues a frame addressed to this connection only (a response).
func (c *wsConn) Send(frame []byte) bool { return c.Enqueue(frame) }

// Ping queues a keepalive ping.
func (c *wsConn) Ping() { c.Enqueue(pingFrame) }

// Enqueue queues a complete frame; see hub.Conn.
func (c *wsConn) Enqueue(frame []byte) bool {
	c.mu.Lock()
	if c.closing {
		c.mu.Unlock()
		return false
	}
	// The budget bounds the backlog: a lone frame larger than the budget still goes out, so a
	// big broadcast does not cut off every connection at once.
	if c.queued > 0 && c.queued+len(frame) > c.budget {
		c.m.slow.Inc()
		c.startCloseLocked(CloseTryAgainLater, "slow consumer", false)
		return false
	}
	c.queue = append(c.queue, frame)
	c.queued += len(frame)
	if c.state != writeIdle {
		c.mu.Unlock()
		return true
	}
	c.schedule()
	return true
}

// schedule hands an idle connection's writes to its flusher (or, without one, to a drain
// goroutine). Called with c.mu held; unlocks it.
func (c *wsConn) schedule() {
	if c.rc == nil || c.fl == nil {
		c.state = writeDraining
		c.mu.Unlock()
		go c.drain()
		return
	}
	c.state = writeScheduled
	c.mu.Unlock()
	c.fl.push(c)
}

// flush runs on the flusher: it writes everything queued without waiting for the socket.
// When the socket is full, or the connection is closing, a drain goroutine takes over.
func (c *wsConn) flush(w *nbWriter) {
	c.mu.Lock()
	if c.closing {
		c.state = writeDraining
		c.mu.Unlock()
		go c.drain() // the close frame may have to wait for the socket
		return
	}
	if len(c.queue) == 0 {
		c.state = writeIdle
		c.keepSmallBuffers()
		c.mu.Unlock()
		return
	}
	batch := c.takeLocked()
	c.mu.Unlock()

	total := 0
	for _, f := range batch {
		total += len(f)
	}
	n, err := w.writev(c.rc, batch)
	if err == nil {
		c.m.sent.Add(len(batch))
		clear(batch)
		c.mu.Lock()
		c.wroteLocked(batch, total)
		switch {
		case c.closing:
			c.state = writeDraining
			c.mu.Unlock()
			go c.drain()
		case len(c.queue) > 0:
			c.mu.Unlock()
			c.fl.push(c) // still scheduled: back of the line, behind the others
		default:
			c.state = writeIdle
			c.keepSmallBuffers()
			c.mu.Unlock()
		}
		return
	}
	if !errors.Is(err, errWouldBlock) {
		c.fail()
		return
	}
	// The socket is full: a goroutine of its own waits for it, with the rest first in line.
	rest := unwritten(batch, n)
	c.m.sent.Add(len(batch) - len(rest))
	c.mu.Lock()
	c.queued -= n
	c.queue = append(rest, c.queue...)
	c.state = writeDraining
	c.mu.Unlock()
	go c.drain()
}

// takeLocked moves everything queued out for writing; new frames go to the spare array.
func (c *wsConn) takeLocked() [][]byte {
	batch := c.queue
	c.queue = c.spare[:0]
	c.spare = nil
	return batch
}

// wroteLocked accounts for a written batch (already cleared) of n bytes and keeps its array
// as the next spare.
func (c *wsConn) wroteLocked(batch [][]byte, n int) {
	c.queued -= n
	if c.spare == nil {
		c.spare = batch[:0]
	}
}

// keepSmallBuffers is for a connection going idle: small queue arrays are kept, so the next
// frame (a broadcast every few seconds, say) is queued without allocating; large ones left by
// a burst are let go. The arrays hold no frames here (written batches are cleared). Called with
// c.mu held.
func (c *wsConn) keepSmallBuffers() {
	const small = 4
	if cap(c.queue) > small {
		c.queue = nil
	}
	if cap(c.spare) > small {
		c.spare = nil
	}
}

// fail handles a write error: the peer is gone, no close frame can get through.
func (c *wsConn) fail() {
	c.mu.Lock()
	if !c.closing {
		c.closing = true
		close(c.done)
	}
	c.state = writeDraining // nobody writes any more
	c.queue, c.spare = nil, nil
	c.mu.Unlock()
	c.finishClose(0, "")
}

// Close starts closing: frames already queued are written first (within the close grace), then
// the close frame. It does not wait.
func (c *wsConn) Close(code uint16, reason string) {
	c.mu.Lock()
	if c.closing {
		c.mu.Unlock()
		return
	}
	c.startCloseLocked(code, reason, true)
}

// startCloseLocked marks the connection closing and hands the close to the drain goroutine
// (starting one if none runs). It bounds every write from now on by closeGrace, which also cuts
// short a write that a stalled peer is blocking. Called with c.mu held; unlocks it.
func (c *wsConn) startCloseLocked(code uint16, reason string, flush bool) {
	c.closing = true
	c.flushFirst = flush
	c.closeCode, c.closeReason = code, reason
	if !flush {
		clear(c.queue)
		c.queue = c.queue[:0]
	}
	close(c.done)
	_ = c.raw.SetWriteDeadline(time.Now().Add(closeGrace))
	if c.state != writeIdle {
		c.mu.Unlock() // the flusher hands over to a drain, or the drain sees closing
		return
	}
	c.state = writeDraining
	c.mu.Unlock()
	go c.drain()
}

// markClosed records that the socket is gone (read loop ended) so nothing more is queued.
func (c *wsConn) markClosed() {
	c.mu.Lock()
	if !c.closing {
		c.closing = true
		c.closeCode = 0 // nothing to send: the socket is closed
		close(c.done)
	}
	clear(c.queue)
	c.queue = c.queue[:0]
	c.mu.Unlock()
}

// drain writes batches with blocking writes until the queue is empty, then exits; when
// closing, it finishes with the close frame. It runs only in the writeDraining state, so it is
// the connection's only writer.
func (c *wsConn) drain() {
	for {
		c.mu.Lock()
		if c.closing && (!c.flushFirst || len(c.queue) == 0) {
			code, reason := c.closeCode, c.closeReason
			c.queue = nil
			c.spare = nil
			c.mu.Unlock()
			c.finishClose(code, reason)
			return
		}
		if len(c.queue) == 0 {
			c.state = writeIdle
			c.keepSmallBuffers()
			c.mu.Unlock()
			return
		}
		batch := c.takeLocked()
		if !c.closing {
			// Moving the deadline costs a timer update; a deadline at least half a write
			// timeout away is good enough, so most flushes skip it.
			if now := time.Now(); c.deadline.Sub(now) < c.wt/2 {
				c.deadline = now.Add(c.wt)
				_ = c.raw.SetWriteDeadline(c.deadline)
			}
		}
		c.mu.Unlock()

		n := 0
		for _, f := range batch {
			n += len(f)
		}
		bufs := net.Buffers(batch)
		_, err := bufs.WriteTo(c.raw)
		if err == nil {
			c.m.sent.Add(len(batch))
		}
		clear(batch)

		c.mu.Lock()
		c.wroteLocked(batch, n)
		c.mu.Unlock()
		if err != nil {
			// The peer is gone or stalled past the deadline.
			c.fail()
			return
		}
	}
}

// finishClose sends the close frame (code 0: none) through gws so its state agrees, then drops
// the socket; the read loop then ends and OnClose cleans up.
func (c *wsConn) finishClose(code uint16, reason string) {
	if code != 0 {
		_ = c.ws.WriteClose(code, []byte(reason))
	}
	_ = c.raw.Close()
}

// acquire takes an in-flight slot for one request, waiting while the connection has
// WSMaxInFlight requests unanswered; false when the connection closed meanwhile.
func (c *wsConn) acquire() bool {
	// A closing connection runs nothing more, even when a slot is free: select would pick at
	// random between a free slot and done.
	select {
	case <-c.done:
		return false
	default:
	}
	select {
	case c.inflight <- struct{}{}:
		return true
	case <-c.done:
		return false
	}
}

// RequestDone frees an in-flight slot; the connection actor calls it once an answer is queued.
func (c *wsConn) RequestDone() {
	select {
	case <-c.inflight:
	default:
	}
}

type wsMetrics struct {
	sent, received, slow         *metrics.Counter
	accepted, rejAuth, rejOrigin *metrics.Counter
	rejLimit                     *metrics.Counter
}

func newWSMetrics(set *metrics.Set) *wsMetrics {
	return &wsMetrics{
		sent:      set.GetOrCreateCounter("ws_messages_sent_total"),
		received:  set.GetOrCreateCounter("ws_messages_received_total"),
		slow:      set.GetOrCreateCounter("ws_slow_consumer_disconnects_total"),
		accepted:  set.GetOrCreateCounter(`ws_connections_total{status="accepted"}`),
		rejAuth:   set.GetOrCreateCounter(`ws_connections_total{status="rejected_auth"}`),
		rejOrigin: set.GetOrCreateCounter(`ws_connections_total{status="rejected_origin"}`),
		rejLimit:  set.GetOrCreateCounter(`ws_connections_total{status="rejected_limit"}`),
	}
}
