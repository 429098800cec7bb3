package client

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lxzan/gws"
)

// conn is one WebSocket connection of a client. Its goroutines: gws's read loop (the gws.Event
// methods below), the writer (writeLoop); the client's run goroutine serves it (serve) and
// stops and waits for both before the next connection starts.
type conn struct {
	c     *Client
	id    uint64
	url   string
	token string // the token the handshake presented
	ws    *gws.Conn

	ctrl      chan ctrlFrame // frames of this connection only (pongs, resubscribes, refresh); bounded
	stop      chan struct{}  // closed to stop the writer
	stopOnce  sync.Once
	abort     chan struct{} // closed when the client gives this connection up (see giveUp)
	abortOnce sync.Once
	readDone  chan struct{} // the read loop has returned
	writeDone chan struct{} // the writer has returned

	// Read goroutine only.
	deadlineSet time.Time

	gotFrame   atomic.Bool // a data frame arrived: the connection worked
	overflowed atomic.Bool // the inbound queue overflowed: topic messages are no longer taken

	// Set before readDone / writeDone close, read after.
	unsent []*pending // requests the writer took and could not write (not sent at all)
	endMu  sync.Mutex
	end    connEnd
	local  error // why the client gave the connection up itself (nil when it did not)
}

// connEnd is how a connection ended.
type connEnd struct {
	code   uint16 // the server's close code; 0 without a close frame
	reason string
	err    error // never nil
	local  bool  // the client gave the connection up itself (err says why)
}

// ctrlFrame is a frame for one connection's writer.
type ctrlFrame struct {
	op gws.Opcode
	b  []byte
}

// ctrlQueue bounds the control frames of a connection beyond one resubscribe per topic.
const ctrlQueue = 64

func (c *Client) connect(url string) (*conn, error) {
	tctx, cancel := context.WithTimeout(c.ctx, c.cfg.HandshakeTimeout)
	defer cancel()
	tok, err := c.currentToken(tctx)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	nsubs := len(c.subs)
	c.mu.Unlock()
	cn := &conn{
		c: c, id: c.nextConn.Add(1), url: url, token: tok,
		ctrl: make(chan ctrlFrame, ctrlQueue+nsubs),
		stop: make(chan struct{}), abort: make(chan struct{}),
		readDone: make(chan struct{}), writeDone: make(chan struct{}),
	}
	header := c.cfg.Header.Clone()
	if header == nil {
		header = http.Header{}
	}
	header.Set("Authorization", "Bearer "+tok)

	// gws's handshake takes no context: the dialer hands over the raw connection, and closing it
	// when the client stops (or the handshake times out) ends a handshake stuck on the network.
	var raw atomic.Pointer[net.Conn]
	stopWatch := context.AfterFunc(tctx, func() {
		if nc := raw.Load(); nc != nil {
			_ = (*nc).Close()
		}
	})
	ws, resp, err := gws.NewClient(cn, &gws.ClientOption{
		Addr:                dialURL(url, c.cfg.Format),
		RequestHeader:       header,
		HandshakeTimeout:    c.cfg.HandshakeTimeout,
		ReadMaxPayloadSize:  c.cfg.MaxInboundBytes,
		WriteMaxPayloadSize: c.maxRequestBytes(),
		Logger:              gwsLogger{c},
		NewDialer: func() (gws.Dialer, error) {
			return dialFunc(func(network, addr string) (net.Conn, error) {
				nc, err := c.cfg.Dialer(tctx, network, addr)
				if err == nil {
					raw.Store(&nc)
				}
				return nc, err
			}), nil
		},
	})
	watching := stopWatch()
	if err != nil {
		if he := handshakeError(resp); he != nil {
			return nil, he
		}
		if tctx.Err() != nil && c.ctx.Err() == nil {
			return nil, errors.Join(context.DeadlineExceeded, err)
		}
		return nil, err
	}
	if !watching { // the watch fired: the socket is closed under the new connection
		_ = ws.NetConn().Close()
		return nil, context.Cause(tctx)
	}
	cn.ws = ws
	return cn, nil
}

type dialFunc func(network, addr string) (net.Conn, error)

func (f dialFunc) Dial(network, addr string) (net.Conn, error) { return f(network, addr) }

// handshakeError reads the server's refusal of an upgrade (docs/protocol.md §1.1: 401 with
// {"detail"}, 403, 400), or returns nil when there was no HTTP answer.
func handshakeError(resp *http.Response) *HandshakeError {
	if resp == nil || resp.StatusCode == http.StatusSwitchingProtocols {
		return nil
	}
	he := &HandshakeError{StatusCode: resp.StatusCode}
	if resp.Body != nil {
		// The body is read from what gws buffered; the socket itself is already closed.
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		_ = resp.Body.Close()
		var d struct {
			Detail string `json:"detail"`
		}
		if json.Unmarshal(b, &d) == nil && d.Detail != "" {
			he.Detail = d.Detail
		} else {
			he.Detail = strings.TrimSpace(string(b))
		}
	}
	return he
}

// maxRequestBytes is the largest request frame the client writes.
func (c *Client) maxRequestBytes() int {
	if c.cfg.MaxMessageBytes > 0 {
		return c.cfg.MaxMessageBytes
	}
	return 16 << 20
}

// serve runs one connection until it ends: it starts the read loop and the writer, resubscribes,
// and refreshes the token ahead of its expiry; it returns once both goroutines have stopped,
// with the requests the writer took but could not write.
func (c *Client) serve(cn *conn, resend []*pending) []*pending {
	c.mu.Lock()
	c.cur = cn
	close(c.up)
	c.mu.Unlock()

	go func() {
		defer close(cn.readDone)
		cn.ws.ReadLoop()
	}()
	go cn.writeLoop(resend)
	c.resubscribeAll(cn)

	var (
		refresh    *time.Timer
		refreshC   <-chan time.Time
		resub      *time.Timer
		resubC     <-chan time.Time
		resubRound int
	)
	scheduleRefresh := func(d time.Duration) {
		if refresh != nil {
			refresh.Stop()
		}
		refresh, refreshC = nil, nil
		if d >= 0 {
			refresh = time.NewTimer(d)
			refreshC = refresh.C
		}
	}
	scheduleRefresh(c.refreshDelay())
	defer func() {
		scheduleRefresh(-1)
		if resub != nil {
			resub.Stop()
		}
	}()

	closing, abort := c.closing, cn.abort // set to nil once acted on: a closed channel is always ready
loop:
	for {
		select {
		case <-cn.readDone:
			break loop
		case <-closing:
			closing, abort = nil, nil
			cn.closeWith(closeNormal, "client closed")
		case <-abort:
			closing, abort = nil, nil
			cn.closeWith(closeNormal, "client gave up the connection")
		case <-refreshC:
			scheduleRefresh(c.refreshToken(cn))
		case <-c.resubNow:
			if resubC == nil {
				resub = time.NewTimer(backoff(resubRound, time.Second, c.cfg.ReconnectMax))
				resubC = resub.C
				resubRound++
			}
		case <-resubC:
			resub, resubC = nil, nil
			c.resubscribeWaiting(cn)
		}
	}
	cn.stopWriter()
	<-cn.writeDone

	c.mu.Lock()
	c.cur = nil
	c.up = make(chan struct{})
	c.mu.Unlock()
	return cn.unsent
}

// closeWith stops the writer and closes the connection with a close frame; the read loop then
// ends. The close write is bounded: the writer is stopped first, and a deadline is set.
func (cn *conn) closeWith(code uint16, reason string) {
	cn.stopWriter()
	select {
	case <-cn.writeDone:
	case <-time.After(time.Second):
		// The writer is stuck in a write to a server that takes nothing: cut the socket, which
		// ends that write (and leaves no room for a close frame).
		_ = cn.ws.NetConn().Close()
		<-cn.writeDone
		return
	}
	_ = cn.ws.SetWriteDeadline(time.Now().Add(time.Second))
	if err := cn.ws.WriteClose(code, []byte(reason)); err != nil {
		_ = cn.ws.NetConn().Close()
	}
}

func (cn *conn) stopWriter() { cn.stopOnce.Do(func() { close(cn.stop) }) }

// giveUp makes the client replace the connection, for reason (set once). Any goroutine may call
// it; it does not block.
func (cn *conn) giveUp(reason error) {
	cn.abortOnce.Do(func() {
		cn.endMu.Lock()
		cn.local = reason
		cn.endMu.Unlock()
		close(cn.abort)
	})
}

// ending returns how the connection ended; valid after readDone.
func (cn *conn) ending() connEnd {
	cn.endMu.Lock()
	defer cn.endMu.Unlock()
	e := cn.end
	if cn.local != nil {
		e.err, e.local = cn.local, true
	}
	if e.err == nil {
		e.err = errors.New("connection closed")
	}
	return e
}

// sendCtrl queues a frame for this connection's writer without blocking; false when the queue
// is full.
func (cn *conn) sendCtrl(op gws.Opcode, b []byte) bool {
	select {
	case cn.ctrl <- ctrlFrame{op: op, b: b}:
		return true
	default:
		return false
	}
}

// writeLoop is the connection's only writer: the requests to resend first, then control frames
// before requests, and a ping every PingInterval. It returns when stopped or when a write fails
// (the connection is then closed, which ends the read loop).
func (cn *conn) writeLoop(resend []*pending) {
	defer close(cn.writeDone)
	c := cn.c
	ping := time.NewTicker(c.cfg.PingInterval)
	defer ping.Stop()
	for i, p := range resend {
		if !cn.writeRequest(p) {
			cn.unsent = append(cn.unsent, resend[i+1:]...)
			return
		}
	}
	for {
		select { // control frames first: a resubscribe must not wait behind a queue of requests
		case f := <-cn.ctrl:
			if !cn.write(f.op, f.b) {
				return
			}
			continue
		default:
		}
		select {
		case <-cn.stop:
			return
		case f := <-cn.ctrl:
			if !cn.write(f.op, f.b) {
				return
			}
		case <-ping.C:
			if !cn.write(gws.OpcodePing, nil) {
				return
			}
		case p := <-c.out:
			if !cn.writeRequest(p) {
				return
			}
		}
	}
}

// writeRequest writes a request and marks it as in flight on this connection. A request whose
// caller gave up meanwhile is skipped. When the connection was already closed, nothing was
// written and the request goes to the next connection.
func (cn *conn) writeRequest(p *pending) bool {
	c := cn.c
	c.mu.Lock()
	if c.pending[p.reqID] != p {
		c.mu.Unlock()
		return true
	}
	p.connID = cn.id
	c.mu.Unlock()
	err := cn.writeErr(c.cfg.Format.opcode(), p.frame)
	if err == nil {
		return true
	}
	if errors.Is(err, gws.ErrConnClosed) {
		c.mu.Lock()
		p.connID = 0
		c.mu.Unlock()
		cn.unsent = append(cn.unsent, p)
	}
	return false
}

func (cn *conn) write(op gws.Opcode, b []byte) bool { return cn.writeErr(op, b) == nil }

// writeErr writes one frame within WriteTimeout. On an error gws closes the connection.
func (cn *conn) writeErr(op gws.Opcode, b []byte) error {
	_ = cn.ws.SetWriteDeadline(time.Now().Add(cn.c.cfg.WriteTimeout))
	err := cn.ws.WriteMessage(op, b)
	if err != nil {
		_ = cn.ws.NetConn().Close()
	}
	return err
}

// gws.Event, on the read goroutine.

func (cn *conn) OnOpen(ws *gws.Conn) { cn.alive(ws) }

func (cn *conn) OnPing(ws *gws.Conn, payload []byte) {
	cn.alive(ws)
	// Through the writer, never from here: a write could block the read loop. A pong that does
	// not fit is dropped; the next ping is answered.
	cn.sendCtrl(gws.OpcodePong, append([]byte(nil), payload...))
}

func (cn *conn) OnPong(ws *gws.Conn, _ []byte) { cn.alive(ws) }

func (cn *conn) OnClose(_ *gws.Conn, err error) {
	cn.endMu.Lock()
	defer cn.endMu.Unlock()
	var ce *gws.CloseError
	if errors.As(err, &ce) {
		cn.end = connEnd{code: ce.Code, reason: string(ce.Reason), err: &CloseError{Code: ce.Code, Reason: string(ce.Reason)}}
		return
	}
	cn.end = connEnd{err: err}
}

func (cn *conn) OnMessage(ws *gws.Conn, m *gws.Message) {
	defer func() { _ = m.Close() }()
	cn.alive(ws)
	c := cn.c
	if m.Opcode != c.cfg.Format.opcode() {
		c.log.Warn("switchboard client: frame of the other format ignored", "opcode", m.Opcode)
		return
	}
	f, err := decodeFrame(c.cfg.Format, m.Bytes())
	if err != nil {
		c.log.Warn("switchboard client: frame ignored", "err", err)
		return
	}
	cn.gotFrame.Store(true)
	if f.HasStatus {
		c.answer(cn, f)
		return
	}
	c.broadcast(cn, f)
}

// alive pushes the read deadline out: a connection on which nothing arrives for ReadTimeout is
// dead. Only when a quarter of ReadTimeout has passed since the last push, to keep a syscall
// off every frame; the deadline is then never nearer than 3/4 of ReadTimeout after a frame.
func (cn *conn) alive(ws *gws.Conn) {
	now := time.Now()
	if now.Sub(cn.deadlineSet) < cn.c.cfg.ReadTimeout/4 {
		return
	}
	cn.deadlineSet = now
	_ = ws.SetReadDeadline(now.Add(cn.c.cfg.ReadTimeout))
}

// gwsLogger sends gws's own complaints to the client's logger.
type gwsLogger struct{ c *Client }

func (g gwsLogger) Error(v ...any) { g.c.log.Error("switchboard client: gws", "msg", v) }
