package fasttimeout

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/valyala/fasthttp"
)

// A request whose deadline has passed has timed out, even if nothing has
// acted on it yet: in racing mode its timer is late (a starved or stopped
// process: here the test stops it). A server shutdown seen after the
// deadline must not end its context with ErrShutdown: the client gets the
// timeout response, and the context's cause says so.
//
// The housekeeper's tick reads the clock once, then scans, and under load
// (or a stopped process) may stall between the two, past the deadline and
// past a shutdown that began after it (stalled rows). The scan must not take
// that shutdown for one that came first. In cooperative mode the test stalls
// the real housekeeper's tick by holding the lock of the context's shard;
// in racing mode, whose scan takes no lock, it runs the tick's scan itself,
// with a clock reading taken after the deadline, or (stalled) before it.
func TestHousekeeper_a_shutdown_after_the_deadline_is_not_the_cause(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		mode    Mode
		stalled bool
	}{
		{mode: Racing},
		{mode: Racing, stalled: true},
		{mode: Cooperative, stalled: true},
	} {
		t.Run(fmt.Sprintf("%v/stalled=%v", tc.mode, tc.stalled), func(t *testing.T) {
			t.Parallel()
			past := make(chan struct{})
			causes := make(chan error, 1)
			stats := new(Stats)
			h := New(func(ctx *fasthttp.RequestCtx) {
				call := lookup(ctx)
				c := Context(ctx)
				b := c.(*requestContext)
				tick := now() // a stalled tick's clock reading, before the deadline
				if tc.mode == Racing {
					call.timer.Stop() // the timer is late
				} else {
					// The housekeeper's next tick, at most a Precision
					// from now, stalls on the lock until after the shutdown.
					call.m.housekeeper.shards[b.shard].mu.Lock()
				}
				deadline, _ := c.Deadline()
				for time.Now().Before(deadline) {
					<-time.After(time.Until(deadline))
				}
				close(past)
				<-ctx.Done() // the server shuts down, after the deadline
				if tc.mode == Racing {
					if !tc.stalled {
						tick = now()
					}
					call.m.housekeeper.cancelRacingAtShutdown(tick) // a scan sees it before the timer runs
					call.timer.Reset(0)
				} else {
					call.m.housekeeper.shards[b.shard].mu.Unlock()
				}
				select {
				case <-c.Done():
				case <-time.After(10 * time.Second): // a hang detector
				}
				causes <- context.Cause(c)
			}, Config{Mode: tc.mode, Timeout: actInTime, IgnoreHangups: true, Stats: stats}) // the handler must run
			client, shutdown := serveInMemoryToShutdown(t, h)

			answered := getAsync(t, client, "/")
			receive(t, past, "the handler past its deadline")
			shutdown()

			require.ErrorIs(t, receive(t, causes, "the context's cause"), ErrTimeout, "the deadline came before the shutdown")
			require.Equal(t, DefaultStatusCode, receive(t, answered, "the answer"))
			require.EqualValues(t, 1, stats.Snapshot().Timeouts)
		})
	}
}
