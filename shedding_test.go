package fasttimeout_test

import (
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/valyala/fasthttp"

	"github.com/fasttimeout/fasttimeout"
)

func TestMaxLateHandlers(t *testing.T) {
	t.Parallel()

	t.Run("a flood of late handlers sheds new requests with 503 until they finish", func(t *testing.T) {
		t.Parallel()
		const maxLate = 4
		release := make(chan struct{})
		returned := make(chan time.Duration, maxLate)
		var handled atomic.Int64
		stats := new(fasttimeout.Stats)
		s := serve(t, fasttimeout.New(func(ctx *fasthttp.RequestCtx) {
			handled.Add(1)
			if string(ctx.Path()) == "/stuck" {
				<-release // ignores its context
			}
		}, fasttimeout.Config{
			// The stuck handlers must run, their budget not spent on
			// arrival on a stalled machine, to fill the cap: a second.
			Timeout:         actInTime,
			TimeoutFunc:     onlyTimingOut("/stuck"), // /ok must not time out on a stalled machine
			MaxLateHandlers: maxLate,
			RetryAfter:      1500 * time.Millisecond,
			Stats:           stats,
			OnLateReturn:    func(_ *fasthttp.RequestCtx, late time.Duration) { returned <- late },
		}))
		releaseOnce := func() {
			select {
			case <-release:
			default:
				close(release)
			}
		}
		t.Cleanup(releaseOnce)

		// Fill the cap: each stuck handler times out and keeps running.
		flood := make(chan int, maxLate)
		for range maxLate {
			go func() {
				flood <- s.status(t, "/stuck")
			}()
		}
		for range maxLate {
			assert.Equal(t, fasthttp.StatusGatewayTimeout, receive(t, flood, "the answer to a stuck request"))
		}
		require.Equal(t, int64(maxLate), stats.Snapshot().LateRunning)

		// Full: new requests are refused at once, without running.
		handledBefore := handled.Load()
		for range 3 {
			req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
			req.SetRequestURI("http://test/ok")
			require.NoError(t, s.client.DoTimeout(req, resp, 10*time.Second))
			assert.Equal(t, fasthttp.StatusServiceUnavailable, resp.StatusCode())
			assert.Equal(t, "2", string(resp.Header.Peek(fasthttp.HeaderRetryAfter)), "1.5 s rounded up")
			assert.Equal(t, fasttimeout.ShedBody, string(resp.Body()))
			assert.Equal(t, "application/json", string(resp.Header.ContentType()))
			fasthttp.ReleaseRequest(req)
			fasthttp.ReleaseResponse(resp)
		}
		assert.Equal(t, handledBefore, handled.Load(), "shed requests do not run the handler")
		assert.Equal(t, int64(3), stats.Snapshot().Shed)

		// The late handlers finish: the server serves normally again.
		releaseOnce()
		for range maxLate {
			select {
			case late := <-returned:
				assert.Greater(t, late, time.Duration(0))
			case <-time.After(10 * time.Second):
				t.Fatal("late handlers did not return within 10s of their release")
			}
		}
		status, _, _ := s.get(t, "/ok")
		assert.Equal(t, fasthttp.StatusOK, status)
		c := stats.Snapshot()
		assert.Zero(t, c.LateRunning)
		assert.Equal(t, int64(maxLate), c.LateFinished)
		assert.Equal(t, int64(maxLate), c.Timeouts)
		assert.Equal(t, int64(3), c.Shed)
		assert.Equal(t, int64(maxLate+3+1), c.Requests)
	})

	t.Run("below the cap requests are served", func(t *testing.T) {
		t.Parallel()
		release := make(chan struct{})
		defer close(release)
		stats := new(fasttimeout.Stats)
		s := serve(t, fasttimeout.New(func(ctx *fasthttp.RequestCtx) {
			if string(ctx.Path()) == "/stuck" {
				<-release
			}
		}, fasttimeout.Config{Timeout: 20 * time.Millisecond, TimeoutFunc: onlyTimingOut("/stuck"), MaxLateHandlers: 2, Stats: stats}))

		status, _, _ := s.get(t, "/stuck")
		require.Equal(t, fasthttp.StatusGatewayTimeout, status)
		status, _, _ = s.get(t, "/ok")
		assert.Equal(t, fasthttp.StatusOK, status)
		assert.Zero(t, stats.Snapshot().Shed)
	})
}

// TestMaxLateHandlers_cooperative_counts_only_handlers_that_asked: in
// cooperative mode a handler that asked for its context counts as late (in
// LateRunning, against MaxLateHandlers) and timed out (Timeouts) from its
// deadline, though its response goes out when it returns; one that never
// asked is found late only when it returns, and never counts while it runs.
func TestMaxLateHandlers_cooperative_counts_only_handlers_that_asked(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	ignoring := make(chan struct{}, 1)
	asked := make(chan struct{}, 1)
	stats := new(fasttimeout.Stats)
	s := serve(t, fasttimeout.New(func(ctx *fasthttp.RequestCtx) {
		switch string(ctx.Path()) {
		case "/ignores": // never asks for its context
			ignoring <- struct{}{}
			<-release
		case "/asks":
			<-fasttimeout.Context(ctx).Done()
			asked <- struct{}{}
			<-release
		}
	}, fasttimeout.Config{
		// Both handlers must run, their budget not spent on arrival on a
		// stalled machine: a second.
		Mode: fasttimeout.Cooperative, Timeout: actInTime,
		TimeoutFunc:     onlyTimingOut("/ignores", "/asks"), // /ok must not time out on a stalled machine
		MaxLateHandlers: 2, Stats: stats,
	}))
	t.Cleanup(func() { close(release) }) // before the server's shutdown, which waits for the handlers

	answers := make(chan int, 2)
	go func() { answers <- s.status(t, "/ignores") }()
	receive(t, ignoring, "the ignoring handler's start")
	// Arriving later, /asks has the later deadline: once its context has
	// ended, /ignores is past its own deadline too.
	go func() { answers <- s.status(t, "/asks") }()
	receive(t, asked, "the end of the asking handler's context")

	require.Eventually(t, func() bool { return stats.Snapshot().LateRunning > 0 }, stressBound, time.Millisecond)
	c := stats.Snapshot()
	assert.Equal(t, int64(1), c.LateRunning, "only the handler that asked counts while it runs")
	assert.Equal(t, int64(1), c.Timeouts, "the handler that asked counts from its deadline")
	// Below the cap of 2: the ignoring handler does not count against it.
	status, _, _ := s.get(t, "/ok")
	assert.Equal(t, fasthttp.StatusOK, status)
	assert.Zero(t, stats.Snapshot().Shed)

	release <- struct{}{} // one of them returns
	release <- struct{}{} // and the other
	for range 2 {
		assert.Equal(t, fasthttp.StatusGatewayTimeout, receive(t, answers, "the answer to a late request"))
	}
	require.Eventually(t, func() bool { return stats.Snapshot().InFlight == 0 }, stressBound, time.Millisecond)
	c = stats.Snapshot()
	assert.Zero(t, c.LateRunning)
	assert.Equal(t, int64(2), c.LateFinished, "both found late once they returned")
	assert.Equal(t, int64(2), c.Timeouts)
}
