package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lxzan/gws"
)

// The stress scenario's client connection: every frame decoded as a JSON envelope and handed
// to its owner, the close recorded as the client saw it. Unlike the other scenarios, whose
// clients only look for "seq": in the bytes, stress reads everything: it checks the contract,
// at rates of thousands of frames a second, not hundreds of thousands.

// envelope is a frame from the server: an answer (status_code present) or a broadcast.
type envelope struct {
	PkgID      int             `json:"pkg_id"`
	ReqID      string          `json:"req_id"`
	StatusCode *int            `json:"status_code"`
	Data       json.RawMessage `json:"data"`
	Msg        *string         `json:"msg"`
	Topic      string          `json:"topic"`
	Seq        uint64          `json:"seq"`
	Epoch      string          `json:"epoch"`
}

func (e *envelope) msg() string {
	if e.Msg == nil {
		return ""
	}
	return *e.Msg
}

// stressPayload is the data of the tool's own broadcasts: the run, the producer and its
// serial (each producer numbers its POSTs 1, 2, 3…).
type stressPayload struct {
	Run string `json:"run"`
	P   int    `json:"p"`
	N   uint64 `json:"n"`
}

const zeroUUID = "00000000-0000-0000-0000-000000000000"

// sconn is one client connection. onFrame runs on gws's read goroutine; the owner goroutine
// writes and, at the end, closes and waits for closed.
type sconn struct {
	c       *gws.Conn
	st      *stressState
	who     string
	onFrame func(*envelope)
	closed  chan struct{}
	seen    closeSeen // written once before closed is closed
}

// dialStress opens one connection for who with token; onFrame receives every decoded frame.
func dialStress(st *stressState, who, token string, onFrame func(*envelope)) (*sconn, error) {
	s := &sconn{st: st, who: who, onFrame: onFrame, closed: make(chan struct{})}
	st.dials.Add(1)
	st.open.Add(1)
	c, _, err := st.dialer.dial(s, http.Header{"Authorization": {"Bearer " + token}})
	if err != nil {
		st.open.Add(-1)
		st.dialFails.Add(1)
		st.dialErrs.add(classify(err))
		return nil, err
	}
	s.c = c
	return s, nil
}

func (s *sconn) OnOpen(*gws.Conn) {}

func (s *sconn) OnClose(_ *gws.Conn, err error) {
	seen := closeSeen{at: time.Now()}
	var ce *gws.CloseError
	if errors.As(err, &ce) {
		seen.code, seen.reason = int(ce.Code), string(ce.Reason)
	}
	s.seen = seen
	s.st.open.Add(-1)
	close(s.closed)
}

func (s *sconn) OnPing(c *gws.Conn, p []byte) { _ = c.WritePong(p) }
func (s *sconn) OnPong(*gws.Conn, []byte)     {}

func (s *sconn) OnMessage(_ *gws.Conn, m *gws.Message) {
	var e envelope
	err := json.Unmarshal(m.Bytes(), &e)
	if err != nil {
		s.st.v.add(vUndecodable, "%s: %v: %.80q", s.who, err, m.Bytes())
	}
	_ = m.Close()
	if err == nil && s.onFrame != nil {
		s.onFrame(&e)
	}
}

// send writes one text frame.
func (s *sconn) send(frame []byte) error { return s.c.WriteMessage(gws.OpcodeText, frame) }

// waitClosed waits up to d for the connection to end; false when it is still open.
func (s *sconn) waitClosed(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-s.closed:
		return true
	case <-t.C:
		return false
	}
}

// drop ends the TCP connection without a close frame and waits for the read loop to notice.
func (s *sconn) drop() {
	_ = s.c.NetConn().Close()
	<-s.closed
}

// closeNormal sends close 1000 without closing the socket (gws's WriteClose would drop it at
// once and never read the answer) and waits up to d for the server's close frame, which the
// contract says echoes 1000. It returns what the client saw; a server that did not answer in
// time is dropped and reported as no close frame.
func (s *sconn) closeNormal(d time.Duration) closeSeen {
	_ = s.c.WriteMessage(gws.OpcodeCloseConnection, []byte{0x03, 0xe8})
	if !s.waitClosed(d) {
		s.drop()
		return closeSeen{at: time.Now()}
	}
	return s.seen
}

// stressState is what every worker of one run shares: counters for the samples and the
// report, the violations, the fault log and the event log.
type stressState struct {
	run    string // names this run's topics, authors and broadcasts
	start  time.Time
	dialer *dialer
	minter *minter
	v      *violations
	faults *faultLog
	events *eventLog

	delivered, topicMsgs, allMsgs atomic.Int64 // frames the subscribers got from the tool's producers
	answers                       atomic.Int64 // answers to requests (rpc clients, churners, subscribers)
	open                          atomic.Int64 // client connections open now
	dials, dialFails              atomic.Int64
	published, publishFailed      atomic.Int64
	dialErrs, pubErrs             errorCounts
	closes                        errorCounts // "role action: close as seen"
	told                          errorCounts

	uncertainMu sync.Mutex
	uncertain   map[[2]uint64]bool // producer, serial of POSTs whose outcome the producer does not know
}

func newStressState(run string, start time.Time, d *dialer, m *minter) *stressState {
	return &stressState{run: run, start: start, dialer: d, minter: m, v: newViolations(start),
		faults: &faultLog{}, events: &eventLog{start: start}, uncertain: map[[2]uint64]bool{}}
}

func (st *stressState) markUncertain(p int, n uint64) {
	st.uncertainMu.Lock()
	st.uncertain[[2]uint64{uint64(p), n}] = true
	st.uncertainMu.Unlock()
}

func (st *stressState) isUncertain(p int, n uint64) bool {
	st.uncertainMu.Lock()
	defer st.uncertainMu.Unlock()
	return st.uncertain[[2]uint64{uint64(p), n}]
}

// noteClose counts how a connection ended, by role and action.
func (st *stressState) noteClose(role string, seen closeSeen) {
	st.closes.add(role + ": " + seen.String())
}

// noteTold counts a notice from the server and logs it for the fault summaries.
func (st *stressState) noteTold(kind string) {
	st.told.add(kind)
	st.events.add(kind)
}

// stressReqID is a request id in UUID form: worker kind and number, request number.
func stressReqID(kind byte, worker, k int) string {
	return fmt.Sprintf("%08x-%04x-4000-8000-%012x", worker, int(kind), k)
}

// request builds one request frame.
func request(pkgID int, reqID, data string) []byte {
	return []byte(fmt.Sprintf(`{"pkg_id":%d,"req_id":%q,"data":%s}`, pkgID, reqID, data))
}
