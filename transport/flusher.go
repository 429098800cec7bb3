package transport

import (
	"errors"
	"runtime"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// flusher writes queued frames for many connections from one goroutine. A connection with
// frames to send is put on its flusher's list once; the flusher takes everything the
// connection has queued and writes it with one non-blocking writev. Only a connection whose
// socket is full (the peer reads slowly) gets a goroutine of its own, which waits for the
// socket with blocking writes. So a broadcast to N idle connections costs N writev calls spread
// over GOMAXPROCS flushers, and no goroutine per connection; when broadcasts come faster than
// the flushers write, frames pile up per connection and leave together.
type flusher struct {
	mu      sync.Mutex
	pending []*wsConn
	wake    chan struct{} // capacity 1: "the list is not empty"
	stop    chan struct{}
	done    chan struct{}
}

func newFlusher() *flusher {
	f := &flusher{wake: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{})}
	go f.run()
	return f
}

// push puts c on the list; the caller has moved c to the scheduled state.
func (f *flusher) push(c *wsConn) {
	f.mu.Lock()
	f.pending = append(f.pending, c)
	f.mu.Unlock()
	select {
	case f.wake <- struct{}{}:
	default:
	}
}

func (f *flusher) run() {
	defer close(f.done)
	var batch []*wsConn
	for {
		select {
		case <-f.wake:
		case <-f.stop:
			return
		}
		for {
			f.mu.Lock()
			batch, f.pending = f.pending, batch[:0]
			f.mu.Unlock()
			if len(batch) == 0 {
				break
			}
			for i, c := range batch {
				c.flush()
				batch[i] = nil
			}
		}
	}
}

// close stops the flusher and waits for it. Connections still on its list are not written:
// the server only stops its flushers after every socket has closed.
func (f *flusher) close() {
	close(f.stop)
	<-f.done
}

// flushers is one flusher per processor the Go scheduler uses.
type flushers []*flusher

func newFlushers() flushers {
	fs := make(flushers, runtime.GOMAXPROCS(0))
	for i := range fs {
		fs[i] = newFlusher()
	}
	return fs
}

func (fs flushers) forConn(id uint64) *flusher { return fs[id%uint64(len(fs))] }

func (fs flushers) close() {
	for _, f := range fs {
		f.close()
	}
}

// errWouldBlock means the socket took only part of a batch: its send buffer is full.
var errWouldBlock = errors.New("socket send buffer full")

// writevNow writes bufs to the socket without waiting for it: it returns how many bytes the
// kernel took, and errWouldBlock when that was not all of them.
func writevNow(rc syscall.RawConn, bufs [][]byte) (int, error) {
	written := 0
	var werr error
	err := rc.Write(func(fd uintptr) bool {
		for len(bufs) > 0 {
			chunk := bufs[:min(len(bufs), 1024)] // IOV_MAX
			want := 0
			for _, b := range chunk {
				want += len(b)
			}
			n, err := unix.Writev(int(fd), chunk)
			switch {
			case err == unix.EINTR:
				continue
			case err == unix.EAGAIN:
				werr = errWouldBlock
				return true
			case err != nil:
				werr = err
				return true
			}
			written += n
			if n < want {
				werr = errWouldBlock
				return true
			}
			bufs = bufs[len(chunk):]
		}
		return true // never wait for writability here: that is the drain goroutine's job
	})
	if err != nil {
		return written, err
	}
	return written, werr
}

// unwritten returns the part of bufs after the first n bytes (frames are never modified; the
// first may be resliced).
func unwritten(bufs [][]byte, n int) [][]byte {
	for i, b := range bufs {
		if n < len(b) {
			rest := make([][]byte, 0, len(bufs)-i)
			rest = append(rest, b[n:])
			return append(rest, bufs[i+1:]...)
		}
		n -= len(b)
	}
	return nil
}
