package main

import (
	"context"
	"fmt"
	"time"
)

// slowMetric counts the connections the server cut off for exceeding their send budget.
const slowMetric = "ws_slow_consumer_disconnects_total"

// runSlow measures the slow-consumer effect on Switchboard: the same fan-out twice, first with
// every subscriber reading, then with --slow extra connections that never read. The second
// result carries the ratio of the readers' p99 (target: within 10%) and how many slow
// connections the server cut off. The baseline is not run: a naive broadcaster blocks on the
// first full socket, which is the point of the comparison but would only measure the timeout.
func runSlow(ctx context.Context, o *options, rep *reporter) error {
	tg, err := switchboardTarget(ctx, o, rep, o.n+o.slow)
	if err != nil {
		return err
	}
	before, err := fanoutOnce(ctx, o, rep, tg, 0)
	if err != nil {
		return err
	}
	rep.emit(before)
	sleepCtx(ctx, 3*time.Second)
	with, err := fanoutOnce(ctx, o, rep, tg, o.slow)
	if err != nil {
		return err
	}
	if before.P99ms > 0 {
		with.Ratio, with.RatioOf = with.P99ms/before.P99ms, " p99 without slow"
	}
	clean := with.Lost == 0 && with.OutOfOrder == 0 && with.Duplicated == 0
	with.goal("readers' p99 within 10%, slow ones cut off", with.Ratio <= 1.10 && clean && with.SlowClosed >= int64(o.slow))
	if with.SlowClosed < int64(o.slow) {
		with.note("%d of %d slow consumers were still connected: their backlog stayed under the send budget "+
			"(SWITCHBOARD_WS_SEND_QUEUE_BYTES) plus the socket buffers; send more or larger broadcasts", int64(o.slow)-with.SlowClosed, o.slow)
	}
	rep.emit(with)
	if with.Lost > 0 {
		return fmt.Errorf("readers lost %d broadcasts while slow consumers were connected", with.Lost)
	}
	return nil
}
