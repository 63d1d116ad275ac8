package fasttimeout

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/fasthttputil"
)

// A housekeeper's tick reads the clock once, then scans: under load (or a
// stopped process) it may stall between the two, past a request's deadline
// and past a server shutdown that began after that deadline. The scan must
// not take the shutdown for one that came first: the request timed out
// before it, and its context ends with ErrTimeout, as the client's 504
// says (see TestHousekeeper_shutdown_after_a_racing_deadline, where the
// scan's clock is fresh). In cooperative mode the test stalls the real
// housekeeper's tick by holding the lock of the context's shard; in racing
// mode, whose scan takes no lock, it runs the stalled tick's scan itself
// with the clock reading taken before the deadline.
func TestHousekeeper_a_stalled_tick_takes_no_later_shutdown_for_one_before_the_deadline(t *testing.T) {
	t.Parallel()
	for _, mode := range []Mode{Racing, Cooperative} {
		t.Run(mode.String(), func(t *testing.T) {
			t.Parallel()
			past := make(chan struct{})
			causes := make(chan error, 1)
			stats := new(Stats)
			h := New(func(ctx *fasthttp.RequestCtx) {
				call := lookup(ctx)
				c := Context(ctx)
				b := c.(*requestContext)
				tick := now() // a tick's clock reading, before the deadline
				if mode == Racing {
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
				if mode == Racing {
					call.m.housekeeper.cancelRacingAtShutdown(tick) // the stalled tick's scan
					call.timer.Reset(0)
				} else {
					call.m.housekeeper.shards[b.shard].mu.Unlock()
				}
				select {
				case <-c.Done():
				case <-time.After(10 * time.Second): // a hang detector
				}
				causes <- context.Cause(c)
			}, Config{Mode: mode, Timeout: actInTime, IgnoreHangups: true, Stats: stats}) // the handler must run

			ln := fasthttputil.NewInmemoryListener()
			server := &fasthttp.Server{Handler: h}
			served := make(chan error, 1)
			go func() { served <- server.Serve(ln) }()
			client := &fasthttp.Client{Dial: func(string) (net.Conn, error) { return ln.Dial() }}
			answered := make(chan int, 1)
			go func() {
				status, _, err := client.Get(nil, "http://test/")
				if err != nil {
					status = -1
				}
				answered <- status
			}()
			receive(t, past, "the handler past its deadline")
			shutdown := make(chan error, 1)
			go func() { shutdown <- server.Shutdown() }()

			require.ErrorIs(t, receive(t, causes, "the context's cause"), ErrTimeout, "the deadline came before the shutdown")
			require.Equal(t, DefaultStatusCode, receive(t, answered, "the answer"))
			require.EqualValues(t, 1, stats.Snapshot().Timeouts)
			client.CloseIdleConnections()
			require.NoError(t, receive(t, shutdown, "the shutdown"))
			require.NoError(t, <-served)
		})
	}
}
