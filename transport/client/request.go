package client

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/google/uuid"
)

// Response is a successful answer (status_code 0).
type Response struct {
	PkgID int
	ReqID string
	Data  json.RawMessage // the answer's data ("null" when it had none)
	Meta  json.RawMessage // pagination meta; nil when null
}

// Decode unmarshals the answer's data into v.
func (r *Response) Decode(v any) error { return json.Unmarshal(r.Data, v) }

// RequestOption adjusts one request.
type RequestOption func(*requestOptions)

type requestOptions struct {
	timeout time.Duration
	retry   bool
}

// WithTimeout bounds the request (queueing, writing and waiting for the answer), instead of
// Config.RequestTimeout when ctx has no deadline. The earlier of ctx's deadline and this wins.
func WithTimeout(d time.Duration) RequestOption {
	return func(o *requestOptions) { o.timeout = d }
}

// WithRetry writes the request again on the next connection if the connection ends after it
// was written and before its answer, instead of failing with ErrConnectionLost. Only for
// requests that may run twice (reads, idempotent writes). Still bounded by the request's
// timeout; never done when the server closed for something the client sent (1002, 1003, 1007,
// 1009), since this request may be the cause.
func WithRetry() RequestOption {
	return func(o *requestOptions) { o.retry = true }
}

// pending is a request from its registration to its answer or failure.
type pending struct {
	reqID string
	pkgID int
	frame []byte
	order uint64 // creation order, kept when requests are carried to the next connection
	retry bool
	// hook, when set, runs on the read goroutine with the answer before the caller is told, so
	// that what the answer changes (a subscription's position) is in place before the next frame
	// is read.
	hook func(cn *conn, f *frame)
	done chan result // buffered: finish never blocks

	connID uint64 // guarded by Client.mu: the connection it was written on, 0 while not written
}

type result struct {
	f   *frame
	err error
}

func (p *pending) finish(r result) { p.done <- r }

func sortPending(ps []*pending) {
	slices.SortFunc(ps, func(a, b *pending) int { return cmp.Compare(a.order, b.order) })
}

// Request sends a request with pkgID and data (marshalled to a JSON object; nil for none) and
// returns the answer. A refusal (status_code ≠ 0) is an *Error. Requests made while the client
// is reconnecting wait for the connection within their timeout; a request in flight when the
// connection ends fails with ErrConnectionLost (or is written again, WithRetry).
func (c *Client) Request(ctx context.Context, pkgID int, data any, opts ...RequestOption) (*Response, error) {
	var o requestOptions
	for _, opt := range opts {
		opt(&o)
	}
	raw, err := marshalData(data)
	if err != nil {
		return nil, err
	}
	p, err := c.newPending(pkgID, raw, o.retry, nil)
	if err != nil {
		return nil, err
	}
	f, err := c.roundTrip(ctx, p, o.timeout)
	if err != nil {
		return nil, err
	}
	if f.Status != StatusOK {
		return nil, errorFromAnswer(f)
	}
	data2 := f.Data
	if data2 == nil {
		data2 = json.RawMessage("null")
	}
	return &Response{PkgID: f.PkgID, ReqID: f.ReqID, Data: data2, Meta: f.Meta}, nil
}

// Call is Request that unmarshals the answer's data into out (when out is not nil).
func (c *Client) Call(ctx context.Context, pkgID int, in, out any, opts ...RequestOption) error {
	r, err := c.Request(ctx, pkgID, in, opts...)
	if err != nil {
		return err
	}
	if out == nil {
		return nil
	}
	if err := r.Decode(out); err != nil {
		return fmt.Errorf("client: pkg_id %d answer: %w", pkgID, err)
	}
	return nil
}

func marshalData(data any) (json.RawMessage, error) {
	if data == nil {
		return nil, nil
	}
	raw, err := json.Marshal(data)
	if err != nil {
		return nil, fmt.Errorf("client: request data: %w", err)
	}
	if string(raw) == "null" {
		return nil, nil
	}
	return raw, nil
}

// newPending builds a request (its frame encoded once, in the client's format).
func (c *Client) newPending(pkgID int, data json.RawMessage, retry bool, hook func(*conn, *frame)) (*pending, error) {
	id := uuid.NewString()
	p := &pending{
		reqID: id, pkgID: pkgID, frame: encodeRequest(c.cfg.Format, pkgID, id, data),
		order: c.nextReq.Add(1), retry: retry, hook: hook, done: make(chan result, 1),
	}
	if len(p.frame) > c.maxRequestBytes() {
		return nil, fmt.Errorf("%w: pkg_id %d is %d bytes, the limit is %d", ErrTooLarge, pkgID, len(p.frame), c.maxRequestBytes())
	}
	return p, nil
}

// roundTrip registers p, queues it for the writer and waits for its answer, its failure, the
// timeout or the client's end, whichever comes first.
func (c *Client) roundTrip(ctx context.Context, p *pending, timeout time.Duration) (*frame, error) {
	var cancel context.CancelFunc
	if timeout > 0 {
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	} else if _, ok := ctx.Deadline(); !ok {
		ctx, cancel = context.WithTimeout(ctx, c.cfg.RequestTimeout)
		defer cancel()
	}
	c.mu.Lock()
	if c.finalErr != nil {
		c.mu.Unlock()
		return nil, c.stoppedErr()
	}
	c.pending[p.reqID] = p
	c.mu.Unlock()

	select {
	case c.out <- p:
	case <-ctx.Done():
		c.abandon(p)
		return nil, c.ctxErr(ctx, p)
	case <-c.closing:
		c.abandon(p)
		return nil, c.stoppedErr()
	}
	select {
	case r := <-p.done:
		return r.f, r.err
	case <-ctx.Done():
		if c.abandon(p) {
			return nil, c.ctxErr(ctx, p)
		}
	case <-c.runDone: // the client stopped; failAll has run or p was queued after it
		if c.abandon(p) {
			return nil, c.stoppedErr()
		}
	}
	r := <-p.done // the answer (or failure) won the race and is on its way
	return r.f, r.err
}

// abandon forgets p; false when p was already answered or failed (its result is then on p.done).
func (c *Client) abandon(p *pending) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.pending[p.reqID] != p {
		return false
	}
	delete(c.pending, p.reqID)
	return true
}

func (c *Client) ctxErr(ctx context.Context, p *pending) error {
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return fmt.Errorf("%w: pkg_id %d: %w", ErrTimeout, p.pkgID, ctx.Err())
	}
	return fmt.Errorf("client: pkg_id %d: %w", p.pkgID, ctx.Err())
}

// sendOn registers an internal request on cn and queues it on that connection's control queue:
// it is written on cn or not at all. False when the queue is full (nothing registered).
func (c *Client) sendOnLocked(cn *conn, p *pending) bool {
	p.connID = cn.id
	c.pending[p.reqID] = p
	if !cn.sendCtrl(c.cfg.Format.opcode(), p.frame) {
		delete(c.pending, p.reqID)
		return false
	}
	return true
}

// answer hands an answer to its request, on the read goroutine. Answers come in request order
// (docs/protocol.md §1.2) but are matched by req_id all the same; one nobody waits for any more (its
// caller timed out) is dropped.
func (c *Client) answer(cn *conn, f *frame) {
	c.mu.Lock()
	p := c.pending[f.ReqID]
	if p == nil || p.connID != cn.id {
		c.mu.Unlock()
		c.log.Debug("switchboard client: answer without a waiting request", "req_id", f.ReqID, "pkg_id", f.PkgID, "status", f.Status)
		return
	}
	delete(c.pending, f.ReqID)
	c.mu.Unlock()
	if p.hook != nil {
		p.hook(cn, f)
	}
	p.finish(result{f: f})
}
