package fasttimeout_test

import (
	"testing"
	"time"

	"github.com/fasttimeout/fasttimeout"
	"github.com/stretchr/testify/assert"
	"github.com/valyala/fasthttp"
)

// TestAllocs pins the allocations per request of the fast path (requests
// that finish before their deadline), in steady state: the worker, the call
// and the connection's slot are reused from the previous request.
// AllocsPerRun counts every goroutine's allocations, so this test must not
// run in parallel with others.
func neverSkip(*fasthttp.RequestCtx) bool               { return false }
func defaultTimeout(*fasthttp.RequestCtx) time.Duration { return 0 }

func TestAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector allocates on its own")
	}
	cases := []struct {
		name string
		h    fasthttp.RequestHandler
		max  float64
	}{
		{"racing_fast_path_allocates_nothing", fasttimeout.New(trivialFast, fasttimeout.Config{Timeout: time.Minute}), 0},
		{"cooperative_fast_path_allocates_nothing", fasttimeout.New(trivialFast, fasttimeout.Config{Timeout: time.Minute, Mode: fasttimeout.Cooperative}), 0},
		{"racing_with_adaptive_admission_allocates_nothing", fasttimeout.New(trivialFast, fasttimeout.Config{Timeout: time.Minute, AdaptiveConcurrency: true}), 0},
		{"cooperative_with_adaptive_admission_allocates_nothing", fasttimeout.New(trivialFast, fasttimeout.Config{Timeout: time.Minute, Mode: fasttimeout.Cooperative, AdaptiveConcurrency: true}), 0},
		// Skip and TimeoutFunc are called through a closure that must not
		// escape to the heap.
		{"racing_with_Skip_and_TimeoutFunc_allocates_nothing", fasttimeout.New(trivialFast, fasttimeout.Config{Timeout: time.Minute, Skip: neverSkip, TimeoutFunc: defaultTimeout}), 0},
		{"cooperative_with_Skip_and_TimeoutFunc_allocates_nothing", fasttimeout.New(trivialFast, fasttimeout.Config{Timeout: time.Minute, Mode: fasttimeout.Cooperative, Skip: neverSkip, TimeoutFunc: defaultTimeout}), 0},
		{"racing_with_Context_allocates_at_most_2", fasttimeout.New(contextFast, fasttimeout.Config{Timeout: time.Minute}), 2},
		{"cooperative_with_Context_allocates_at_most_2", fasttimeout.New(contextFast, fasttimeout.Config{Timeout: time.Minute, Mode: fasttimeout.Cooperative}), 2},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ctx := newBenchRequestCtx()
			for range 100 { // warm up: worker, slot, user-value storage
				c.h(ctx)
			}
			allocs := testing.AllocsPerRun(1000, func() { c.h(ctx) })
			assert.LessOrEqual(t, allocs, c.max, "allocations per request")
			assert.Equal(t, fasthttp.StatusOK, ctx.Response.StatusCode())
		})
	}
}
