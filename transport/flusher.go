package transport

import (
	"errors"
	"runtime"
	"sync"
	"syscall"
	"unsafe"

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
	w       *nbWriter // used by run alone
	mu      sync.Mutex
	pending []*wsConn
	wake    chan struct{} // capacity 1: "the list is not empty"
	stop    chan struct{}
	done    chan struct{}
}

func newFlusher() *flusher {
	f := &flusher{w: newNBWriter(), wake: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{})}
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
		stopping := false
		select {
		case <-f.wake:
		case <-f.stop:
			// Connections still listed get one last turn: a closing one hands its close
			// frame to a drain goroutine, which closes the socket.
			stopping = true
		}
		for {
			f.mu.Lock()
			batch, f.pending = f.pending, batch[:0]
			f.mu.Unlock()
			if len(batch) == 0 {
				break
			}
			for i, c := range batch {
				flushOne(c, f.w)
				batch[i] = nil
			}
		}
		if stopping {
			return
		}
	}
}

// flushOne flushes c; a panic on its write path drops that connection alone.
func flushOne(c *wsConn, w *nbWriter) {
	defer c.recoverWrite()
	c.flush(w)
}

// close stops the flusher and waits for it. Connections still on its list get one last
// non-blocking flush; the server only stops its flushers once every read loop has ended.
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

// nbWriter writes batches without waiting for the socket. It belongs to one flusher (it is not
// safe for concurrent use) and reuses its iovec array and its callback, so a write allocates
// nothing.
type nbWriter struct {
	iov  []unix.Iovec
	bufs [][]byte
	n    int
	err  error
	fn   func(fd uintptr) bool
}

func newNBWriter() *nbWriter {
	w := &nbWriter{iov: make([]unix.Iovec, 0, 64)}
	w.fn = w.write
	return w
}

// writev writes bufs to the socket behind rc: it returns how many bytes the kernel took, and
// errWouldBlock when that was not all of them.
func (w *nbWriter) writev(rc syscall.RawConn, bufs [][]byte) (int, error) {
	w.bufs, w.n, w.err = bufs, 0, nil
	err := rc.Write(w.fn)
	w.bufs = nil
	clear(w.iov[:cap(w.iov)]) // keep no frame alive
	if err != nil {
		return w.n, err
	}
	return w.n, w.err
}

// write runs with the socket's write lock held; it never asks to wait for writability (that is
// the drain goroutine's job).
func (w *nbWriter) write(fd uintptr) bool {
	for len(w.bufs) > 0 {
		chunk := w.bufs[:min(len(w.bufs), 1024)] // IOV_MAX
		want, n := 0, 0
		var errno syscall.Errno
		if len(chunk) == 1 {
			want = len(chunk[0])
			r, _, e := unix.Syscall(unix.SYS_WRITE, fd, uintptr(unsafe.Pointer(unsafe.SliceData(chunk[0]))), uintptr(want))
			n, errno = int(r), e
		} else {
			w.iov = w.iov[:0]
			for _, b := range chunk {
				if len(b) == 0 {
					continue
				}
				v := unix.Iovec{Base: &b[0]}
				v.SetLen(len(b))
				w.iov = append(w.iov, v)
				want += len(b)
			}
			r, _, e := unix.Syscall(unix.SYS_WRITEV, fd, uintptr(unsafe.Pointer(unsafe.SliceData(w.iov))), uintptr(len(w.iov)))
			n, errno = int(r), e
		}
		switch errno {
		case 0:
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			w.err = errWouldBlock
			return true
		default:
			w.err = errno
			return true
		}
		w.n += n
		if n < want {
			w.err = errWouldBlock
			return true
		}
		w.bufs = w.bufs[len(chunk):]
	}
	return true
}

// unwritten returns the part of bufs after the first n bytes, and whether its first element
// is the rest of a frame already partly written (frames are never modified; the first may be
// resliced).
func unwritten(bufs [][]byte, n int) (rest [][]byte, partial bool) {
	for i, b := range bufs {
		if n < len(b) {
			rest = make([][]byte, 0, len(bufs)-i)
			rest = append(rest, b[n:])
			return append(rest, bufs[i+1:]...), n > 0
		}
		n -= len(b)
	}
	return nil, false
}
