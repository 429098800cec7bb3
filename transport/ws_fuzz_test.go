package transport

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"testing"
	"time"
)

// FuzzWebSocketReadPath sends arbitrary bytes on an upgraded connection to a real WSServer, as
// a hostile client would after a normal handshake, then closes its side. Whatever the bytes,
// the server must answer with well-formed server frames only (a close frame, if any, last),
// close the connection, and never panic — a panic on its read goroutine would end this process,
// a contained one is counted and fails the input too.
func FuzzWebSocketReadPath(f *testing.F) {
	req := `{"pkg_id": 11, "req_id": "550e8400-e29b-41d4-a716-446655440000", "data": {"topic": "dashboards.x"}}`
	seeds := [][]byte{
		masked(req),
		masked("not json"),
		{0x81, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4}, // 64-bit length with its top bit set
		{0x81, 0xFF, 0x7F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 1, 2, 3, 4},
		{0x89, 0x80, 0, 0, 0, 0},                                                 // ping
		{0x88, 0x82, 0, 0, 0, 0, 0x03, 0xE8},                                     // close 1000
		{0x88, 0x81, 0, 0, 0, 0, 0x03},                                           // close with one byte
		{0x01, 0x83, 0, 0, 0, 0, '{', '"', 'a'},                                  // a fragment, never finished
		append(append([]byte{0x01, 0x83, 0, 0, 0, 0}, `{"p`...), masked(req)...), // new message inside a fragmented one
		{0x82, 0x80, 0, 0, 0, 0},                                                 // binary on a JSON connection
		{0x81, 0x82, 0, 0, 0, 0, 0xFF, 0xFE},                                     // invalid UTF-8
		{0x81, 0x05, 'h', 'e', 'l', 'l', 'o'},                                    // unmasked
	}
	for _, s := range seeds {
		f.Add(s)
	}
	w := newTestWS(f, nil)
	f.Fuzz(func(t *testing.T, data []byte) {
		c, br := w.dial(t)
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Write(data); err != nil {
			return // the server may close before reading everything
		}
		_ = c.(*net.TCPConn).CloseWrite()
		out, err := io.ReadAll(br)
		if err != nil && !isReset(err) {
			t.Fatalf("reading the server's answer: %v", err)
		}
		if err := checkServerFrames(out); err != nil {
			t.Fatalf("server sent malformed frames: %v\n% x", err, out)
		}
		if n := w.set.GetOrCreateCounter("ws_connection_panics_total").Get(); n != 0 {
			t.Fatalf("the read path panicked (%d)", n)
		}
	})
}

// checkServerFrames checks that b is a sequence of complete, unmasked server frames with
// valid opcodes and control frames of at most 125 bytes, nothing after a close frame.
func checkServerFrames(b []byte) error {
	closed := false
	for len(b) > 0 {
		if closed {
			return errors.New("bytes after the close frame")
		}
		if len(b) < 2 {
			return errors.New("truncated header")
		}
		op, fin := b[0]&0x0F, b[0]&0x80 != 0
		if b[0]&0x70 != 0 {
			return fmt.Errorf("RSV bits set: %#x", b[0])
		}
		if b[1]&0x80 != 0 {
			return errors.New("masked server frame")
		}
		n, h := uint64(b[1]&0x7F), 2
		switch n {
		case 126:
			if len(b) < 4 {
				return errors.New("truncated length")
			}
			n, h = uint64(binary.BigEndian.Uint16(b[2:])), 4
		case 127:
			if len(b) < 10 {
				return errors.New("truncated length")
			}
			n, h = binary.BigEndian.Uint64(b[2:]), 10
		}
		switch op {
		case opText, opBinary:
		case opClose, opPing, opPong:
			if n > 125 || !fin {
				return fmt.Errorf("bad control frame: opcode %d, %d bytes", op, n)
			}
			closed = op == opClose
		default:
			return fmt.Errorf("opcode %d", op)
		}
		if !fin {
			return errors.New("fragmented server frame")
		}
		if uint64(len(b)-h) < n {
			return fmt.Errorf("frame of %d bytes truncated to %d", n, len(b)-h)
		}
		b = b[h+int(n):]
	}
	return nil
}
