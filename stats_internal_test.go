package fasttimeout

import (
	"math"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/valyala/fasthttp"
)

// The timer that times a racing call out wins the call's compare-and-swap
// (settle) and only then counts the timeout and marks the handler late
// (settled: overAt, LateRunning, its context). A handler returning in
// between finds the call timed out and goes on with its late return, which
// must wait for those: else it reads an overAt never stored for this
// request (OnLateReturn and the LateRun histogram get the time since the
// process started, or since the worker's previous timeout), takes
// LateRunning below zero, and leaves InFlight before the timeout is
// counted, against Snapshot's promise. Here the timer is held between the
// two while the handler returns. Not parallel: it sets the process's test
// hooks.
func TestStats_a_late_return_waits_for_its_timeout_to_be_counted(t *testing.T) {
	stats := new(Stats)
	settled, resume, returnNow := make(chan struct{}), make(chan struct{}), make(chan struct{})
	waiting := make(chan struct{}, 1)
	type report struct {
		late time.Duration
		seen Counters
	}
	reports := make(chan report, 1)
	var held atomic.Bool
	settle := func(c *call, outcome uint64) {
		if c.m.stats != stats || outcome != callTimedOut || !held.CompareAndSwap(false, true) {
			return // another test's call, or not the timer's timeout
		}
		close(settled)
		<-resume
	}
	await := func(c *call) {
		if c.m.stats == stats {
			select {
			case waiting <- struct{}{}:
			default:
			}
		}
	}
	testHookSettled.Store(&settle)
	testHookAwaitCounted.Store(&await)
	defer testHookSettled.Store(nil)
	defer testHookAwaitCounted.Store(nil)

	h := New(func(*fasthttp.RequestCtx) { <-returnNow }, Config{
		Timeout: actInTime, Stats: stats, IgnoreHangups: true, // the handler must run
		OnLateReturn: func(_ *fasthttp.RequestCtx, late time.Duration) {
			reports <- report{late, stats.Snapshot()}
		},
	})
	client := serveInMemory(t, h)

	sent := time.Now()
	answered := make(chan int, 1)
	go func() {
		status, _, err := client.GetTimeout(nil, "http://test/", time.Minute)
		if err != nil {
			status = 0
		}
		answered <- status
	}()
	receive(t, settled, "the timer's settling of the call") // the timer has decided the call, and not counted it yet
	close(returnNow)                                        // the handler returns now
	var got report
	returned := false
	select {
	case got = <-reports: // its late return went on without the count
		returned = true
	case <-waiting: // its late return waits for the count
	}
	close(resume)
	if !returned {
		got = receive(t, reports, "OnLateReturn's report")
	}
	require.Equal(t, fasthttp.StatusGatewayTimeout, receive(t, answered, "the answer"))

	assert.EqualValues(t, 1, got.seen.Timeouts, "the timeout counted before the late return")
	assert.EqualValues(t, 0, got.seen.LateRunning, "LateRunning never below zero")
	assert.EqualValues(t, 1, got.seen.LateFinished)
	assert.GreaterOrEqual(t, got.late, time.Duration(0))
	assert.Less(t, got.late, time.Since(sent), "OnLateReturn's lateness within the request's life")
	lateRun := stats.LateRun()
	assert.EqualValues(t, 1, lateRun.Count)
	assert.Less(t, lateRun.Sum, time.Since(sent), "LateRun within the request's life")
	require.Eventually(t, func() bool { return stats.Snapshot().InFlight == 0 }, 10*time.Second, time.Millisecond)
	c := stats.Snapshot()
	assert.EqualValues(t, 1, c.Timeouts)
	assert.Zero(t, c.LateRunning)
}

// The sum of a histogram stays at the largest Duration rather than wrap
// below zero, which a Prometheus _sum would read as a counter reset.
func TestHistogramSumSaturates(t *testing.T) {
	t.Parallel()
	var h histogram
	half := time.Duration(math.MaxInt64/2 + 1)
	for range 3 {
		h.observe(half)
	}
	s := h.snapshot()
	require.EqualValues(t, 3, s.Count)
	require.Equal(t, time.Duration(math.MaxInt64), s.Sum)
}
