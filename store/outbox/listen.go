package outbox

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/uptrace/bun/driver/pgdriver"
)

// Listener turns the table's NOTIFY into wake-ups on C (capacity 1: several notifications
// between two reads are one wake-up). It reconnects by itself; a notification lost meanwhile
// is covered by the relay's poll.
type Listener struct {
	C      <-chan struct{}
	ln     *pgdriver.Listener
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// Listen starts listening; nil on SQLite (no NOTIFY: the relay polls).
func (o *Outbox) Listen(log *slog.Logger) *Listener {
	if !o.Postgres() {
		return nil
	}
	c := make(chan struct{}, 1)
	ctx, cancel := context.WithCancel(context.Background())
	l := &Listener{C: c, ln: pgdriver.NewListener(o.db), cancel: cancel}
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		listening := false
		for ctx.Err() == nil {
			if !listening {
				if err := l.ln.Listen(ctx, Channel); err != nil {
					if ctx.Err() == nil {
						log.Debug("outbox: LISTEN failed; polling meanwhile", "err", err)
						sleep(ctx, time.Second)
					}
					continue
				}
				listening = true
			}
			if _, _, err := l.ln.Receive(ctx); err != nil {
				if ctx.Err() == nil {
					sleep(ctx, 100*time.Millisecond)
				}
				continue
			}
			select {
			case c <- struct{}{}:
			default:
			}
		}
	}()
	return l
}

// Close stops listening and waits for the goroutine.
func (l *Listener) Close() {
	if l == nil {
		return
	}
	l.cancel()
	_ = l.ln.Close() // unblocks Receive
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
