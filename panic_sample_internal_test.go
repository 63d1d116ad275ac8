package fasttimeout

import (
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/valyala/fasthttp"
)

// A handler that panics or calls runtime.Goexit before its deadline gives
// its slot back without a latency sample for the adaptive limit: its
// latency says nothing about congestion, and a burst of fast panics would
// drag the limit's idea of the unloaded latency down. Nor is it a drop. A
// handler that returns, after them, is the one sample.
func TestAdmission_a_panic_in_time_is_no_latency_sample(t *testing.T) {
	const throws = 5
	for _, mode := range []Mode{Racing, Cooperative} {
		for _, goexit := range []bool{false, true} {
			name := mode.String() + "/panic"
			if goexit {
				name = mode.String() + "/goexit"
			}
			t.Run(name, func(t *testing.T) {
				t.Parallel()
				stats := new(Stats)
				var l atomic.Pointer[limiter]
				h := New(func(ctx *fasthttp.RequestCtx) {
					l.Store(lookup(ctx).m.limiter)
					if string(ctx.Path()) == "/returns" {
						return
					}
					if goexit {
						runtime.Goexit()
					}
					panic("in time")
				}, Config{Timeout: 5 * time.Minute, Mode: mode, AdaptiveConcurrency: true, Stats: stats, IgnoreHangups: true})
				client := serveInMemory(t, func(ctx *fasthttp.RequestCtx) {
					defer func() {
						if recover() != nil { // re-raised in time on the server goroutine
							ctx.Response.Reset()
							ctx.SetStatusCode(fasthttp.StatusInternalServerError)
						}
					}()
					h(ctx)
				})
				for range throws {
					// A cooperative Goexit closes the connection: no answer.
					status, _, err := client.GetTimeout(nil, "http://test/throws", 2*time.Minute)
					if mode == Cooperative && goexit {
						assert.Error(t, err)
					} else if assert.NoError(t, err) {
						assert.Equal(t, fasthttp.StatusInternalServerError, status)
					}
				}
				status, _, err := client.GetTimeout(nil, "http://test/returns", 2*time.Minute)
				require.NoError(t, err)
				assert.Equal(t, fasthttp.StatusOK, status)
				// InFlight is left after the slot is given back.
				require.Eventually(t, func() bool { return stats.Snapshot().InFlight == 0 }, 30*time.Second, time.Millisecond)

				got := stats.Snapshot()
				assert.EqualValues(t, throws, got.Panics)
				assert.EqualValues(t, throws+1, got.Admitted)
				assert.Zero(t, l.Load().holding(), "every slot given back")
				// Every return is sampled (every is 0) until a window of at
				// least minWindowSamples closes.
				assert.EqualValues(t, 1, l.Load().served.Load(), "samples: the handler that returned")
				assert.Zero(t, l.Load().drops.Load(), "drops")
			})
		}
	}
}
