package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"strings"
	"sync"
	"time"
)

// runHeaderFlood opens --n connections at once that each send an unfinished request of
// --header-bytes header bytes (the final CRLF never comes) to /web, and samples the server's RSS
// before, during (peak) and --settle after they are gone. Each peer keeps writing until the
// server answers or closes, and holds its connection until the server closes it or --duration
// ends. The server must bound what such peers make it hold.
func runHeaderFlood(ctx context.Context, o *options, rep *reporter) error {
	if o.serverPID <= 0 {
		// /metrics is served on the flooded listener, where this address is over its cap.
		return errors.New("headerflood needs --server-pid to read the server's RSS from /proc")
	}
	u, err := url.Parse(o.http)
	if err != nil {
		return err
	}
	before, err := procRSS(o.serverPID)
	if err != nil {
		return fmt.Errorf("server RSS: %w", err)
	}
	rep.progress("headerflood: %d connections, %d header bytes each, for at most %s; server RSS %.1f MiB",
		o.n, o.headerBytes, o.duration, mib(before))

	pad := []byte(strings.Repeat("a", 16<<10))
	deadline := time.Now().Add(o.duration)
	outcomes := map[string]int{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	start := time.Now()
	peakDone := make(chan int64, 1)
	sampling, stopSampling := context.WithCancel(ctx)
	go func() { peakDone <- samplePeakRSS(sampling, o.serverPID, before) }()
	for range o.n {
		wg.Go(func() {
			out := floodPeer(ctx, u.Host, pad, o.headerBytes, deadline)
			mu.Lock()
			outcomes[out]++
			mu.Unlock()
		})
	}
	wg.Wait()
	took := time.Since(start)
	stopSampling()
	peak := <-peakDone
	rep.progress("headerflood: every peer done after %s; idle for %s before reading RSS", took.Round(time.Millisecond), o.settle)
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(o.settle):
	}
	after, err := procRSS(o.serverPID)
	if err != nil {
		return fmt.Errorf("server RSS: %w", err)
	}
	answered := int64(0)
	for k, v := range outcomes {
		if strings.HasPrefix(k, "answered ") {
			answered += int64(v)
		}
	}
	res := &result{
		Scenario: "headerflood", Target: "switchboard", Mode: fmt.Sprintf("%d KiB headers", o.headerBytes>>10),
		N: o.n, OK: answered, Failed: int64(o.n) - answered, Seconds: took.Seconds(),
		PerSecond: float64(o.n) / took.Seconds(), Unit: "conns", Errors: outcomes,
		RSSBeforeMiB: mib(before), RSSAfterMiB: mib(after), RSSPeakMiB: mib(peak), RSSSource: "/proc VmRSS",
	}
	grow, held := mib(peak-before), mib(after-before)
	res.goal("RSS +≤100 MiB during and after", grow <= 100 && held <= 100)
	res.note("server RSS %.1f MiB before, peak %.1f MiB (+%.1f), %.1f MiB %s after (+%.1f)",
		res.RSSBeforeMiB, res.RSSPeakMiB, grow, res.RSSAfterMiB, o.settle, held)
	rep.emit(res)
	return nil
}

func mib(b int64) float64 { return float64(b) / (1 << 20) }

// samplePeakRSS reads the server's RSS every 50 ms until ctx ends and returns the highest.
func samplePeakRSS(ctx context.Context, pid int, peak int64) int64 {
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		if v, err := procRSS(pid); err == nil && v > peak {
			peak = v
		}
		select {
		case <-ctx.Done():
			return peak
		case <-tick.C:
		}
	}
}

// floodPeer is one peer: it writes a request line and headers of about size bytes without the
// blank line that ends them, and reports how the server answered ("answered 431") or what
// happened instead.
func floodPeer(ctx context.Context, addr string, pad []byte, size int, deadline time.Time) string {
	d := net.Dialer{Timeout: 5 * time.Second}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return "dial: " + classify(err)
	}
	defer c.Close()
	_ = c.SetDeadline(deadline)
	answer := make(chan string, 1)
	go func() {
		br := bufio.NewReaderSize(c, 512)
		line, err := br.ReadString('\n')
		switch {
		case strings.HasPrefix(line, "HTTP/1.1 ") && len(line) >= 12:
			answer <- "answered " + line[9:12]
		case err != nil:
			answer <- "no answer: " + readOutcome(err)
		default:
			answer <- "no answer: not HTTP"
		}
		_, _ = io.Copy(io.Discard, br) // hold the connection until the server closes it
	}()
	_, err = io.WriteString(c, "GET /web HTTP/1.1\r\nHost: "+addr+"\r\nX-Pad: ")
	for sent := 0; err == nil && sent < size; {
		n := min(len(pad), size-sent)
		_, err = c.Write(pad[:n])
		sent += n
	}
	out := <-answer
	if err != nil && strings.HasPrefix(out, "no answer") {
		out += " (write: " + readOutcome(err) + ")"
	}
	return out
}

func readOutcome(err error) string {
	var ne net.Error
	switch {
	case errors.Is(err, io.EOF):
		return "closed"
	case errors.As(err, &ne) && ne.Timeout():
		return "still open at the end"
	case strings.Contains(err.Error(), "reset"):
		return "reset"
	case strings.Contains(err.Error(), "broken pipe"):
		return "broken pipe"
	}
	return classify(err)
}
