//go:build !linux

package gws

// peekSupported: elsewhere than on Linux a connection keeps its read buffer
// (Config.IdleReadBuffer has no effect). (Patched in.)
const peekSupported = false

func peekReady(uintptr) bool { return true }
