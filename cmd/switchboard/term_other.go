//go:build !linux && !darwin && !freebsd && !netbsd && !openbsd

package main

import "io"

// isTerminal is false where it cannot be told: secrets then go to a file, never to the log.
func isTerminal(io.Writer) bool { return false }
