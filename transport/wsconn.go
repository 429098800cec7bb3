package transport

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"runtime/debug"
	"sync"
	"sync/atomic"
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
	CloseNormal          = 1000
	CloseGoingAway       = 1001
	CloseProtocolError   = 1002
	CloseUnsupportedData = 1003
	CloseInvalidPayload  = 1007
	ClosePolicyViolation = 1008
	CloseMessageTooBig   = 1009
	CloseInternalError   = 1011
	CloseTryAgainLater   = 1013
	CloseTokenExpired    = 4001
)

// closeGrace bounds how long a close frame may take to leave; after it the socket is dropped.
const closeGrace = time.Second

var pingFrame = controlFrame(opPing, nil)

// wsConn is one socket's bounded writer, and the only writer of that socket: frames are queued
// without blocking; whoever writes next — the connection's flusher (flusher.go), or a drain
// goroutine of its own while the peer reads slowly — takes everything queued and writes it
// with a single writev, so a connection with many frames waiting costs one syscall instead of
// one per frame (each frame stays its own WebSocket frame). Queued bytes over the budget close
// the connection as a slow consumer.
//
// Frames never interleave. gws writes nothing itself (its close frames come here through
// closeFromGWS), and a frame that a non-blocking write started is finished before any other
// byte goes out: its unwritten rest stays at the head of the queue (midFrame) through a close,
// and a connection whose rest cannot leave within the deadline is cut without another byte.
//
// State machine (guarded by mu): writeIdle → writeScheduled (on the flusher's list, or being
// written by it) → back to writeIdle when the queue is empty, or → writeDraining when the
// socket is full or the connection closes; the drain goroutine owns every write until the
// queue is empty (→ writeIdle) or the close frame is out and the socket closed (it stays
// writeDraining: nothing is written any more).
type wsConn struct {
	id    uint64
	raw   net.Conn
	rc    syscall.RawConn // for non-blocking writes; nil: always write from a drain goroutine
	fl    *flusher        // nil: always write from a drain goroutine
	codec hub.Codec       // the connection's wireCodec; see Codec
	m     *connShared     // with the send budget and write timeout, the same for every connection

	mu         sync.Mutex
	queue      [][]byte
	spare      [][]byte
	queued     int // bytes queued or being written
	state      writeState
	midFrame   bool // queue[0] is the unwritten rest of a frame already partly on the wire
	closing    bool
	flushFirst bool // on close, write what is queued before the close frame
	// inFlight counts the requests read and not yet answered (at most m.maxInFlight); the read
	// goroutine waits on waiter, made only when it has to wait, for a slot or the close.
	inFlight   int32
	waiter     chan struct{}
	deadline   int64  // the write deadline in force, Unix nanoseconds; 0: none
	framesOut  uint32 // frames written whole
	sentCode   uint16 // the close code sent (1005: a close without status; 1006: none)
	sentReason string

	// Read side, touched by the read goroutine (and the actor through release).
	pid  *actor.PID // set before ReadLoop starts
	user *actors.User
	// remote and userAgent come from the handshake, for limits and the audit log.
	remote, userAgent string
	opened            int64        // Unix nanoseconds of the upgrade, for the close log
	seen              atomic.Int64 // Unix nanoseconds of the last frame received (see Ping)
	framesIn          uint32       // data frames received
	counted           bool         // holds a slot of the per-user connection limit
	// closeSend: once closing, a close frame of sentCode and sentReason is to go out (1005: one
	// without a status); false: none (the peer is gone), or it is out. Guarded by mu.
	closeSend bool
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

// Ping queues a keepalive ping, or drops the connection without a close frame (1006) when its
// peer has sent nothing, not even a pong, for longer than the silence allowed: the keepalive
// reaps dead peers here, at the hub's ping, rather than with a read deadline, whose renewal on
// every inbound frame cost time and grew the read goroutine's stack.
func (c *wsConn) Ping() {
	if s := c.m.silence; s > 0 && time.Now().UnixNano()-c.seen.Load() > int64(s) {
		c.fail()
		return
	}
	c.Enqueue(pingFrame)
}

// heard notes that the peer sent a frame (for Ping's silence check).
func (c *wsConn) heard() {
	if c.m.silence > 0 {
		c.seen.Store(time.Now().UnixNano())
	}
}

// Enqueue queues a complete frame; see hub.Conn.
func (c *wsConn) Enqueue(frame []byte) bool {
	c.mu.Lock()
	if c.closing {
		c.mu.Unlock()
		return false
	}
	// The budget bounds the backlog: a lone frame larger than the budget still goes out, so a
	// big broadcast does not cut off every connection at once.
	if c.queued > 0 && c.queued+len(frame) > c.m.budget {
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
		c.startDrainLocked()
		return
	}
	c.state = writeScheduled
	c.mu.Unlock()
	c.fl.push(c)
}

// startDrainLocked hands the socket's writes to a new drain goroutine. Called with c.mu held;
// unlocks it.
func (c *wsConn) startDrainLocked() {
	c.state = writeDraining
	c.m.drains.Add(1)
	c.mu.Unlock()
	go c.drain()
}

// flush runs on the flusher: it writes everything queued without waiting for the socket.
// When the socket is full, or the connection is closing, a drain goroutine takes over.
func (c *wsConn) flush(w *nbWriter) {
	c.mu.Lock()
	if c.closing {
		c.startDrainLocked() // the close frame may have to wait for the socket
		return
	}
	if len(c.queue) == 0 {
		c.goIdleLocked()
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
			c.startDrainLocked()
		case len(c.queue) > 0:
			c.mu.Unlock()
			c.fl.push(c) // still scheduled: back of the line, behind the others
		default:
			c.goIdleLocked()
			c.mu.Unlock()
		}
		return
	}
	if !errors.Is(err, errWouldBlock) {
		c.fail()
		return
	}
	// The socket is full: a goroutine of its own waits for it, with the rest first in line.
	rest, partial := unwritten(batch, n)
	c.m.sent.Add(len(batch) - len(rest))
	c.mu.Lock()
	c.framesOut += uint32(len(batch) - len(rest))
	c.queued -= n
	c.queue = append(rest, c.queue...)
	c.midFrame = partial
	c.startDrainLocked()
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
	c.framesOut += uint32(len(batch))
	if c.spare == nil {
		c.spare = batch[:0]
	}
}

// goIdleLocked is for a connection whose queue is empty and that nobody writes any more.
// A write deadline a drain left behind is cleared: it would fail the flusher's next write
// long after the slow moment passed. Small queue arrays are kept, so the next frame (a
// broadcast every few seconds, say) is queued without allocating; large ones left by a burst
// are let go. The arrays hold no frames here (written batches are cleared). Called with c.mu
// held.
func (c *wsConn) goIdleLocked() {
	c.state = writeIdle
	if c.deadline != 0 {
		c.deadline = 0
		_ = c.raw.SetWriteDeadline(time.Time{})
	}
	const small = 4
	if cap(c.queue) > small {
		c.queue = nil
	}
	if cap(c.spare) > small {
		c.spare = nil
	}
}

// dropQueuedLocked forgets the queued frames of a connection closing without flushing,
// except the rest of a frame already started: it goes out before the close frame.
func (c *wsConn) dropQueuedLocked() {
	keep := 0
	if c.midFrame && len(c.queue) > 0 {
		keep = 1
	}
	clear(c.queue[keep:])
	c.queue = c.queue[:keep]
}

// fail handles a write error or a peer that is gone: the socket is closed and nothing more
// is written, not even a close frame.
func (c *wsConn) fail() {
	c.mu.Lock()
	if !c.closing {
		c.closing = true
		c.wakeReaderLocked()
	}
	c.state = writeDraining // nobody writes any more
	if c.closeSend || c.sentCode == 0 {
		c.sentCode, c.sentReason = 1006, "" // the close frame, if any, did not get out
	}
	c.queue, c.spare, c.midFrame, c.closeSend = nil, nil, false, false
	c.mu.Unlock()
	_ = c.raw.Close()
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

// closeFromGWS is gws's CloseWriter: the read side answers a peer's close, or fails the
// connection (protocol error 1002, invalid UTF-8 1007, message too big 1009, a panic 1011).
// The close frame goes out through this writer, after the rest of a frame already started;
// queued frames are dropped. A read that ended without a close frame (the peer went away, or
// stayed silent past the keepalive) gets none either: the socket is dropped (1006).
func (c *wsConn) closeFromGWS(payload []byte, cause error) {
	code := uint16(0)
	if len(payload) >= 2 {
		code = binary.BigEndian.Uint16(payload)
	}
	var peer *gws.CloseError
	if code == CloseNormal && !errors.As(cause, &peer) {
		c.fail()
		return
	}
	c.mu.Lock()
	if c.closing {
		c.mu.Unlock()
		return
	}
	c.startCloseLocked(code, closeReasons[code], false)
}

// closeReasons are the reasons sent with the close codes gws produces (its own texts name the
// library, or carry a read error with addresses in it).
var closeReasons = map[uint16]string{
	CloseGoingAway:      "going away",
	CloseProtocolError:  "protocol error",
	CloseInvalidPayload: "invalid UTF-8",
	CloseMessageTooBig:  "message too big",
	CloseInternalError:  "internal error",
}

// startCloseLocked marks the connection closing and hands the close to the drain goroutine
// (starting one if none runs). It bounds every write from now on by closeGrace, which also cuts
// short a write that a stalled peer is blocking. code 0 sends a close frame without a status
// (the answer to a peer's close that had none). Called with c.mu held; unlocks it.
func (c *wsConn) startCloseLocked(code uint16, reason string, flush bool) {
	c.closing = true
	c.flushFirst = flush
	c.closeSend = true
	c.sentCode, c.sentReason = code, reason
	if code == 0 {
		c.sentCode = 1005 // no status
	}
	if !flush {
		c.dropQueuedLocked()
	}
	c.wakeReaderLocked()
	deadline := time.Now().Add(closeGrace)
	c.deadline = deadline.UnixNano()
	_ = c.raw.SetWriteDeadline(deadline)
	if c.state != writeIdle {
		c.mu.Unlock() // the flusher hands over to a drain, or the drain sees closing
		return
	}
	c.startDrainLocked()
}

// closeFrame builds a close frame with code and reason; code 0: no status, no reason.
func closeFrame(code uint16, reason string) []byte {
	if code == 0 {
		return controlFrame(opClose, nil)
	}
	payload := binary.BigEndian.AppendUint16(make([]byte, 0, 2+len(reason)), code)
	return controlFrame(opClose, append(payload, reason...))
}

// markClosed is told that the read loop ended. A close under way finishes by itself (within
// the close grace); otherwise the socket is dropped.
func (c *wsConn) markClosed() {
	c.mu.Lock()
	closing := c.closing
	c.mu.Unlock()
	if !closing {
		c.fail()
	}
}

// drain writes batches with blocking writes until the queue is empty, then exits; when
// closing, it finishes with the close frame. It runs only in the writeDraining state, so it is
// the connection's only writer.
func (c *wsConn) drain() {
	defer c.m.drains.Done()
	defer c.recoverWrite()
	for {
		c.mu.Lock()
		if c.closing && !c.flushFirst {
			c.dropQueuedLocked() // frames queued by a flusher that handed over after the close
		}
		if len(c.queue) == 0 {
			if c.closing {
				send, code, reason := c.closeSend, c.sentCode, c.sentReason
				c.queue, c.spare, c.closeSend = nil, nil, false
				c.mu.Unlock()
				if send {
					if code == 1005 {
						code, reason = 0, "" // no status
					}
					if _, err := c.raw.Write(closeFrame(code, reason)); err != nil {
						c.mu.Lock()
						c.sentCode, c.sentReason = 1006, ""
						c.mu.Unlock()
					}
				}
				_ = c.raw.Close()
				return
			}
			c.goIdleLocked()
			c.mu.Unlock()
			return
		}
		batch := c.takeLocked()
		c.midFrame = false // the batch goes out whole, or the connection is cut
		if !c.closing {
			// Moving the deadline costs a timer update; a deadline at least half a write
			// timeout away is good enough, so most writes skip it.
			if now := time.Now(); time.Duration(c.deadline-now.UnixNano()) < c.m.wt/2 {
				deadline := now.Add(c.m.wt)
				c.deadline = deadline.UnixNano()
				_ = c.raw.SetWriteDeadline(deadline)
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

// recoverWrite contains a panic on the connection's write path (a flush or a drain): it is
// logged and counted, and the connection is cut without another byte, since what is on the
// wire at that moment is unknown. Used deferred.
func (c *wsConn) recoverWrite() {
	if v := recover(); v != nil {
		c.m.panics.Inc()
		c.m.log.Error("websocket write path panicked; connection dropped",
			"conn", c.id, "panic", fmt.Sprint(v), "stack", string(debug.Stack()))
		c.fail()
	}
}

// acquire takes an in-flight slot for one request, waiting while the connection has
// WSMaxInFlight requests unanswered; false when the connection closes (or has closed) meanwhile.
// A channel is made only for a wait, so an idle connection holds none.
func (c *wsConn) acquire() bool {
	c.mu.Lock()
	for {
		if c.closing {
			c.mu.Unlock()
			return false
		}
		if c.inFlight < c.m.maxInFlight {
			c.inFlight++
			c.mu.Unlock()
			return true
		}
		w := make(chan struct{})
		c.waiter = w
		c.mu.Unlock()
		<-w
		c.mu.Lock()
	}
}

// RequestDone frees an in-flight slot; the connection actor calls it once an answer is queued.
func (c *wsConn) RequestDone() {
	c.mu.Lock()
	if c.inFlight > 0 {
		c.inFlight--
	}
	c.wakeReaderLocked()
	c.mu.Unlock()
}

// wakeReaderLocked lets a read goroutine waiting in acquire look again. Called with c.mu held.
func (c *wsConn) wakeReaderLocked() {
	if c.waiter != nil {
		close(c.waiter)
		c.waiter = nil
	}
}

// connShared is what every connection of one server shares: its counters, its logger and the
// drain goroutines it has started (Wait waits for them).
type connShared struct {
	sent, received, slow         *metrics.Counter
	accepted, rejAuth, rejOrigin *metrics.Counter
	rejLimit                     *metrics.Counter
	panics                       *metrics.Counter
	closeCounts                  map[uint16]*metrics.Counter // ws_closes_total by code; 0: other
	log                          *slog.Logger
	drains                       sync.WaitGroup
	maxInFlight                  int32         // requests a connection may have unanswered (WSMaxInFlight)
	budget                       int           // bytes a connection may have queued (WSSendQueueBytes)
	wt                           time.Duration // write timeout of one blocking write
	// silence is how long a peer may send nothing before its next keepalive ping drops it
	// (twice the ping interval); 0: never.
	silence time.Duration
}

// closeCodes are the close codes ws_closes_total has a series of its own for; the peer's
// own codes (3000–4999, echoed back) share "other", so the label set stays bounded.
var closeCodes = []uint16{CloseNormal, CloseGoingAway, CloseProtocolError, CloseUnsupportedData, 1005, 1006,
	CloseInvalidPayload, ClosePolicyViolation, CloseMessageTooBig, CloseInternalError, CloseTryAgainLater, CloseTokenExpired}

// closes returns the ws_closes_total counter of code.
func (m *connShared) closes(code uint16) *metrics.Counter {
	if c, ok := m.closeCounts[code]; ok {
		return c
	}
	return m.closeCounts[0]
}

func newConnShared(set *metrics.Set, log *slog.Logger) *connShared {
	counts := map[uint16]*metrics.Counter{0: set.GetOrCreateCounter(`ws_closes_total{code="other"}`)}
	for _, code := range closeCodes {
		counts[code] = set.GetOrCreateCounter(fmt.Sprintf(`ws_closes_total{code="%d"}`, code))
	}
	return &connShared{
		sent:      set.GetOrCreateCounter("ws_messages_sent_total"),
		received:  set.GetOrCreateCounter("ws_messages_received_total"),
		slow:      set.GetOrCreateCounter("ws_slow_consumer_disconnects_total"),
		accepted:  set.GetOrCreateCounter(`ws_connections_total{status="accepted"}`),
		rejAuth:   set.GetOrCreateCounter(`ws_connections_total{status="rejected_auth"}`),
		rejOrigin: set.GetOrCreateCounter(`ws_connections_total{status="rejected_origin"}`),
		rejLimit:  set.GetOrCreateCounter(`ws_connections_total{status="rejected_limit"}`),
		panics:    set.GetOrCreateCounter("ws_connection_panics_total"),
		log:       log,

		closeCounts: counts,
	}
}
