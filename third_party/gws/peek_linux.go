package gws

import (
	"syscall"
	"unsafe"
)

// peekSupported: a read loop can wait for a socket's bytes without a buffer (Config.IdleReadBuffer).
// (Patched in.)
const peekSupported = true

// peekReady is the syscall.RawConn.Read callback of awaitBytes: true once the socket has a byte
// to read, has reached its end or has an error (the read that follows reports both); false
// while a read would block, so that RawConn.Read waits for the socket to become readable. The
// byte is peeked (MSG_PEEK), not taken. (Patched in.)
func peekReady(fd uintptr) bool {
	var b byte
	for {
		_, _, errno := syscall.RawSyscall6(syscall.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&b)), 1,
			syscall.MSG_PEEK|syscall.MSG_DONTWAIT, 0, 0)
		switch errno {
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			return false
		}
		return true
	}
}
