package fasttimeout

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/valyala/fasthttp"
)

// TestHousekeeper_watch_racing_its_stop races a context's watch against
// the housekeeper deciding to stop for lack of anything to watch. Whoever
// comes second must see the other: the housekeeper keeps running, or the
// watch starts a new one. Otherwise the context would never be cancelled at
// its deadline.
func TestHousekeeper_watch_racing_its_stop(t *testing.T) {
	t.Parallel()
	const rounds = 500
	var started []*housekeeper // whose watch started a goroutine, to wait for its exit
	for i := range rounds {
		h := newHousekeeper(time.Millisecond)
		h.running.Store(true) // as if its goroutine were running, and now retiring
		b := newRequestContext(new(fasthttp.RequestCtx), now()+int64(time.Hour))
		b.shard = uint8(i % contextShards)

		var stopped bool
		var wg sync.WaitGroup
		ready := make(chan struct{})
		wg.Go(func() {
			<-ready
			stopped = !h.retireIdle(now())
		})
		wg.Go(func() {
			<-ready
			h.watch(b)
		})
		close(ready)
		wg.Wait()

		require.True(t, h.running.Load(), "round %d: a context is watched and no housekeeper runs (stopped: %v)", i, stopped)
		h.unwatch(b)
		if stopped {
			started = append(started, h) // the watch started a goroutine
		}
	}
	for _, h := range started { // each exits once it has rested with nothing to watch
		require.Eventually(t, func() bool { return !h.running.Load() }, 30*time.Second, time.Millisecond)
	}
	t.Logf("%d of %d rounds stopped the housekeeper before the watch", len(started), rounds)
}

// TestHousekeeper_a_worker_is_last_used_when_its_request_ran: with
// HonorQueueHeaders a request's start is when the proxy saw it, minutes ago
// for one that queued there (or behind a proxy whose clock is late). The
// racing worker that served it goes idle last used then, and the
// housekeeper's next pass, which retires workers idle for a second,
// retires it at once: behind such a proxy every request started a new
// goroutine and two timers. It is last used no earlier than its request's
// admission.
func TestHousekeeper_a_worker_is_last_used_when_its_request_ran(t *testing.T) {
	t.Parallel()
	type seen struct {
		m      *middleware
		connID uint64
	}
	seenc := make(chan seen, 1)
	h := New(func(ctx *fasthttp.RequestCtx) {
		seenc <- seen{lookup(ctx).m, ctx.ConnID()}
	}, Config{Timeout: 10 * time.Minute, HonorQueueHeaders: true})
	client := serveInMemory(t, h)

	req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	req.SetRequestURI("http://test/")
	before := now()
	req.Header.Set("X-Request-Start", fmt.Sprint(time.Now().Add(-5*time.Minute).UnixMilli()))
	require.NoError(t, client.DoTimeout(req, resp, 30*time.Second))
	require.Equal(t, fasthttp.StatusOK, resp.StatusCode())

	s := receive(t, seenc, "the handler's middleware")
	// Released before the server goroutine returned, so before the answer.
	w := s.m.housekeeper.idle.slots[s.connID%idleSlots].w.Load()
	if w == nil {
		// Retired meanwhile: rightly only if it has been idle for
		// idleWorkerTimeout since (a stalled test).
		assert.GreaterOrEqual(t, now()-before, int64(idleWorkerTimeout), "retired as idle for long")
		return
	}
	assert.GreaterOrEqual(t, w.lastUsed.Load(), before,
		"last used %v before the request was sent", time.Duration(before-w.lastUsed.Load()))
}

// watched reports whether the housekeeper watches b.
func (h *housekeeper) watched(b *requestContext) bool {
	s := &h.shards[b.shard]
	s.mu.Lock()
	defer s.mu.Unlock()
	return b.slot >= 0
}

// TestHousekeeper_rests_while_only_disarmed_contexts_are_watched: a
// cooperative request that disarmed its deadline (a long poll, a stream)
// has its context watched, for shutdown, which a rest's look every 100 ms
// reaches as it does racing calls: the housekeeper rests once the
// request's hang-up watch has started, rather than tick every Precision, a
// thousand wake-ups a second, for as long as the handler runs; a request
// whose context has a deadline wakes it until that request is over.
func TestHousekeeper_rests_while_only_disarmed_contexts_are_watched(t *testing.T) {
	t.Parallel()
	type started struct {
		h *housekeeper
		b *requestContext
	}
	startedc := make(chan started, 2)
	releasePoll, releaseWork := make(chan struct{}), make(chan struct{})
	h := New(func(ctx *fasthttp.RequestCtx) {
		b := Context(ctx).(*requestContext)
		release := releaseWork
		if string(ctx.Path()) == "/poll" {
			release = releasePoll
			if !Disarm(ctx) {
				ctx.Error("Disarm failed", fasthttp.StatusInternalServerError)
				return
			}
		}
		startedc <- started{lookup(ctx).m.housekeeper, b}
		select {
		case <-release:
		case <-b.Done(): // the test failed, and its server shuts down
		}
	}, Config{Timeout: time.Hour, Mode: Cooperative})
	client := serveInMemory(t, h)
	get := func(path string) <-chan int {
		status := make(chan int, 1)
		go func() {
			code, _, err := client.Get(nil, "http://test"+path)
			assert.NoError(t, err)
			status <- code
		}()
		return status
	}
	poll := get("/poll")
	p := receive(t, startedc, "the long poll's start")
	idle := p.h.resting.Load
	require.Eventually(t, idle, 10*time.Second, time.Millisecond, "the housekeeper rests with only a disarmed context watched")
	require.True(t, p.h.watched(p.b), "the disarmed context is still watched, for shutdown")

	work := get("/work")
	w := receive(t, startedc, "the request with a deadline's start")
	require.Same(t, p.h, w.h)
	require.Eventually(t, func() bool { return !idle() }, 10*time.Second, time.Millisecond, "a context with a deadline wakes it")
	close(releaseWork)
	require.Equal(t, fasthttp.StatusOK, receive(t, work, "the answer with a deadline"))
	require.False(t, p.h.watched(w.b), "the context of a request over is not watched")
	require.Eventually(t, idle, 10*time.Second, time.Millisecond, "it rests again once that request is over")

	close(releasePoll)
	require.Equal(t, fasthttp.StatusOK, receive(t, poll, "the long poll's answer"))
}

// TestHousekeeper_shutdown_ends_a_disarmed_context_while_it_rests: with
// only disarmed cooperative contexts watched the housekeeper rests, and its
// look every rest still ends them at server shutdown, with cause
// ErrShutdown, as it does racing calls' contexts.
func TestHousekeeper_shutdown_ends_a_disarmed_context_while_it_rests(t *testing.T) {
	t.Parallel()
	housekeepers := make(chan *housekeeper, 1)
	type ending struct{ err, cause error }
	endings := make(chan ending, 1)
	h := New(func(ctx *fasthttp.RequestCtx) {
		c := Context(ctx)
		if !Disarm(ctx) {
			ctx.Error("Disarm failed", fasthttp.StatusInternalServerError)
			return
		}
		housekeepers <- lookup(ctx).m.housekeeper
		<-c.Done() // nothing else ends it: no deadline, and the client stays
		endings <- ending{c.Err(), context.Cause(c)}
		ctx.Error("shutting down", fasthttp.StatusServiceUnavailable)
	}, Config{Timeout: time.Hour, Mode: Cooperative})

	client, shutdown := serveInMemoryToShutdown(t, h)
	answered := getAsync(t, client, "/")
	t.Cleanup(func() { // also when the test fails before the shutdown
		shutdown()
		assert.Equal(t, fasthttp.StatusServiceUnavailable, receive(t, answered, "the answer"))
	})
	hk := receive(t, housekeepers, "the handler's start")
	require.Eventually(t, hk.resting.Load, 10*time.Second, time.Millisecond, "the housekeeper rests with only a disarmed context watched")
	shutdown()

	e := receive(t, endings, "the end of the disarmed context")
	require.ErrorIs(t, e.err, context.Canceled)
	require.ErrorIs(t, e.cause, ErrShutdown)
}

// TestHousekeeper_a_rest_ends_for_a_deadline_that_did_not_nudge: whatever
// gives a watched context a deadline is to end the housekeeper's rest
// (nudge), but one that forgot would have its context cancelled up to a
// rest late. A rest's look that finds a context needing ticks ends the rest
// by itself.
func TestHousekeeper_a_rest_ends_for_a_deadline_that_did_not_nudge(t *testing.T) {
	t.Parallel()
	type started struct {
		h *housekeeper
		b *requestContext
	}
	startedc := make(chan started, 1)
	h := New(func(ctx *fasthttp.RequestCtx) {
		b := Context(ctx).(*requestContext)
		if !Disarm(ctx) {
			ctx.Error("Disarm failed", fasthttp.StatusInternalServerError)
			return
		}
		startedc <- started{lookup(ctx).m.housekeeper, b}
		<-b.Done()
	}, Config{Timeout: time.Hour, Mode: Cooperative})
	client := serveInMemory(t, h)
	status := make(chan int, 1)
	go func() {
		code, _, err := client.Get(nil, "http://test/")
		assert.NoError(t, err)
		status <- code
	}()
	p := receive(t, startedc, "the handler's start")
	require.Eventually(t, p.h.resting.Load, 10*time.Second, time.Millisecond, "the housekeeper rests with only a disarmed context watched")

	// A deadline back without a nudge, soon: the context must end at it.
	p.b.mu.Lock()
	p.b.deadline.Store(now() + int64(200*time.Millisecond))
	p.b.mu.Unlock()
	require.Eventually(t, func() bool { return !p.h.resting.Load() }, 10*time.Second, time.Millisecond, "a rest's look ends the rest")
	receive(t, p.b.Done(), "the context's end at its deadline")
	assert.ErrorIs(t, context.Cause(p.b), ErrTimeout)
	// The housekeeper's expiry of a cooperative call's context is the
	// call's timeout (see call.expire), even here, where only the context
	// was given the deadline.
	assert.Equal(t, fasthttp.StatusGatewayTimeout, receive(t, status, "the answer"))
}

// A cooperative handler that returns before its deadline, on a server
// goroutine that then stalls past it (a loaded or stalled process), meets
// the housekeeper's expiry of its context: one of the two decides the
// request, and the context ends with that decision's cause: not the
// handler's 200 out and no timeout counted while the context says
// ErrTimeout. Not parallel: it sets the process's test hook.
func TestCooperative_expiry_and_a_stalled_return_agree(t *testing.T) {
	stats := new(Stats)
	contexts := make(chan context.Context, 1)
	var mine atomic.Pointer[call]
	h := New(func(ctx *fasthttp.RequestCtx) {
		contexts <- Context(ctx) // watched by the housekeeper
		mine.Store(lookup(ctx))
		ctx.SetBodyString("in time")
	}, Config{Timeout: actInTime, Mode: Cooperative, Stats: stats, IgnoreHangups: true})

	type stall struct{ inTime, expired bool }
	stalled := make(chan stall, 1)
	var once atomic.Bool
	hook := func(c *call, outcome uint64, at int64) {
		if c != mine.Load() || outcome != callFinished || !once.CompareAndSwap(false, true) {
			return // another request's
		}
		s := stall{inTime: at < c.deadline.Load()}
		select {
		case <-c.bridge.Load().Done(): // the housekeeper expires it at the deadline
			s.expired = true
		case <-time.After(10 * time.Second): // a hang detector
		}
		stalled <- s
	}
	testHookSettling.Store(&hook)
	defer testHookSettling.Store(nil)

	resp := getResponse(t, h)
	cx := receive(t, contexts, "the handler's context")
	s := receive(t, stalled, "the handler's return")
	if !s.inTime {
		t.Skip("the handler returned after its deadline: nothing to race")
	}
	require.True(t, s.expired, "the housekeeper ended the context at the deadline")
	assert.ErrorIs(t, context.Cause(cx), ErrTimeout)
	assert.Equal(t, fasthttp.StatusGatewayTimeout, resp.StatusCode(), "the context ended at the deadline, so the request timed out; body %q", resp.Body())
	assert.EqualValues(t, 1, stats.Snapshot().Timeouts)
}
