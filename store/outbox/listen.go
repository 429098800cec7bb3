package outbox

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/uptrace/bun/driver/pgdriver"
)

// Listener turns the table's NOTIFY into wake-ups on C (capacity 1: several notifications
// between two reads are one wake-up). It reconnects by itself; a notification lost meanwhile
// is covered by the relay's poll.
//
// A connection that died without a word (a half-open TCP connection, a database host gone)
// would otherwise wait for notifications that never come until the kernel's keepalive gives
// up, minutes later: after a quiet spell (idle) the listener notifies itself on a channel of
// its own and, when that notification does not come back within the ping wait, replaces the
// connection and wakes the relay once (what was signalled meanwhile is in the table).
type Listener struct {
	C      <-chan struct{}
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu     sync.Mutex
	ln     *pgdriver.Listener // replaced when its connection stops answering
	closed bool
}

// ListenOption tunes Listen.
type ListenOption func(*listenConfig)

type listenConfig struct {
	idle, pingWait time.Duration
}

// WithPing sets how long the listener waits without a notification before it checks its
// connection (idle, 30 s by default), and how long it then waits for its own notification before
// it replaces the connection (wait, 5 s by default).
func WithPing(idle, wait time.Duration) ListenOption {
	return func(c *listenConfig) { c.idle, c.pingWait = idle, wait }
}

// Listen starts listening; nil on SQLite (no NOTIFY: the relay polls).
func (o *Outbox) Listen(log *slog.Logger, opts ...ListenOption) *Listener {
	if !o.Postgres() {
		return nil
	}
	cfg := listenConfig{idle: 30 * time.Second, pingWait: 5 * time.Second}
	for _, opt := range opts {
		opt(&cfg)
	}
	var b [8]byte
	_, _ = rand.Read(b[:])
	ping := Channel + "_ping_" + hex.EncodeToString(b[:]) // this listener's own

	c := make(chan struct{}, 1)
	wake := func() {
		select {
		case c <- struct{}{}:
		default:
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	l := &Listener{C: c, ln: pgdriver.NewListener(o.db), cancel: cancel}
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		listening, pinged := false, false
		for ctx.Err() == nil {
			ln := l.current()
			if ln == nil {
				return
			}
			if !listening {
				lctx, lcancel := context.WithTimeout(ctx, cfg.idle+cfg.pingWait)
				err := ln.Listen(lctx, Channel, ping)
				lcancel()
				if err != nil {
					if ctx.Err() == nil {
						log.Debug("outbox: LISTEN failed; polling meanwhile", "err", err)
						sleep(ctx, time.Second)
					}
					continue
				}
				listening, pinged = true, false
			}
			wait := cfg.idle
			if pinged {
				wait = cfg.pingWait
			}
			channel, _, err := ln.ReceiveTimeout(ctx, wait)
			switch {
			case ctx.Err() != nil:
				return
			case err != nil && isTimeout(err) && !pinged:
				// Quiet: ask the database to notify this connection.
				pctx, pcancel := context.WithTimeout(ctx, cfg.pingWait)
				if _, err := o.db.ExecContext(pctx, "SELECT pg_notify(?, '')", ping); err != nil {
					log.Debug("outbox: LISTEN ping failed", "err", err)
				}
				pcancel()
				pinged = true
			case err != nil && isTimeout(err):
				log.Warn("outbox: the LISTEN connection did not answer its ping; reconnecting",
					"waited", cfg.pingWait)
				l.replace(pgdriver.NewListener(o.db))
				listening = false
				wake() // whatever was signalled while it was dead is in the table
			case err != nil:
				sleep(ctx, 100*time.Millisecond) // pgdriver reconnects by itself on a broken connection
			default:
				pinged = false
				if channel != ping {
					wake()
				}
			}
		}
	}()
	return l
}

// isTimeout reports whether err is a read that ran out of time (the connection may still be
// good), not a broken one.
func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func (l *Listener) current() *pgdriver.Listener {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil
	}
	return l.ln
}

// replace closes the current connection and listens on next from now on.
func (l *Listener) replace(next *pgdriver.Listener) {
	l.mu.Lock()
	old := l.ln
	if l.closed {
		l.mu.Unlock()
		_ = next.Close()
		return
	}
	l.ln = next
	l.mu.Unlock()
	_ = old.Close()
}

// Close stops listening and waits for the goroutine.
func (l *Listener) Close() {
	if l == nil {
		return
	}
	l.cancel()
	l.mu.Lock()
	l.closed = true
	ln := l.ln
	l.mu.Unlock()
	_ = ln.Close() // unblocks Receive
	l.wg.Wait()
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
