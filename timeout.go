package fasttimeout

import (
	"errors"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"
)

// ErrTimeout is the [context.Cause] of a request context whose deadline
// passed. Use it with errors.Is.
var ErrTimeout = errors.New("fasttimeout: request timed out")

// ErrShutdown is the [context.Cause] of a request context cancelled because
// its server is shutting down.
var ErrShutdown = errors.New("fasttimeout: server shutting down")

// New returns a handler that runs h with a deadline of cfg.Timeout.
//
// If h returns before the deadline, its response goes out exactly as h wrote
// it. At the deadline the client gets the timeout response (by default 504
// Gateway Timeout with Content-Type application/json and body
// {"detail":"Request processing time exceeded limit"}), the context that
// [Context] returns for the request is cancelled with cause [ErrTimeout],
// and the connection stays usable for its next request.
//
// In [Racing] mode (the default) h runs on a pooled worker goroutine. A
// handler still running at the deadline keeps its *fasthttp.RequestCtx until
// it returns; fasthttp gives the connection a fresh one, so nothing the late
// handler writes reaches any client. A panic in h before the deadline is
// re-raised on the server goroutine with its original value; after the
// deadline it is passed to Config.OnPanic and the process goes on.
//
// In [Cooperative] mode h runs on the server goroutine; only its context is
// cancelled at the deadline, and a response written after the deadline is
// replaced by the timeout response. Panics are handled as in racing mode.
//
// New panics, with a message starting "fasttimeout: ", if h is nil or cfg is
// invalid (see [Config]).
func New(h fasthttp.RequestHandler, cfg Config) fasthttp.RequestHandler {
	if h == nil {
		panic("fasttimeout: New needs a handler, got nil")
	}
	m := &middleware{settings: cfg.resolve(), handler: h}
	m.clock = newClock(m.precision)
	if m.maxConcurrency > 0 {
		m.limiter = newLimiter(m.maxConcurrency, m.adaptive, m.stats)
	}
	if m.mode == Cooperative {
		return m.serveCooperative
	}
	return m.serveRacing
}

// callPool holds the calls of cooperative requests. A call goes back only
// when its handler has returned; its context, if any, does not point to it.
var callPool sync.Pool

// middleware is one New's state, shared by all its requests.
type middleware struct {
	settings
	handler fasthttp.RequestHandler
	clock   *clock
	limiter *limiter     // nil without a concurrency limit
	late    atomic.Int64 // handlers of this middleware running past their deadline
}

func (m *middleware) serveRacing(ctx *fasthttp.RequestCtx) {
	start, deadline, admitted, run := m.admit(ctx)
	if !run {
		return
	}
	connID := ctx.ConnID()
	w := m.acquireWorker(connID, admitted)
	c := &w.call
	w.owners.Store(2)
	c.admitted = admitted
	c.begin(ctx, start, deadline)
	// Each call has its own runtime timer rather than waiting for a shared
	// checker: under load a single goroutine that times out every call is
	// itself late, and so is every answer it owes.
	w.timer.Reset(time.Duration(c.nextWake() - now()))

	w.work <- struct{}{}
	<-w.done
	c.unwatchClient()
	w.timer.Stop()

	switch c.phase() {
	case callTimedOut:
		m.stats.answerLateness.observe(time.Duration(now() - c.deadline.Load()))
		m.answerTimeout(ctx)
		m.disown(w, connID)
		return
	case callGone:
		m.answerGone(ctx, c)
		m.disown(w, connID)
		return
	}
	c.ctx = nil
	c.conn = nil
	if !c.panicked {
		m.releaseWorker(w, connID, start)
		return
	}
	v := c.panicValue
	c.panicked, c.panicValue = false, nil
	if v != errGoexit { // a worker that called Goexit is gone
		m.releaseWorker(w, connID, start)
	}
	panic(v)
}

func (m *middleware) serveCooperative(ctx *fasthttp.RequestCtx) {
	start, deadline, admitted, run := m.admit(ctx)
	if !run {
		return
	}
	c, _ := callPool.Get().(*call)
	if c == nil {
		c = new(call)
	}
	c.m = m
	c.admitted = admitted
	c.begin(ctx, start, deadline)
	defer m.finishCooperative(c, ctx)
	m.handler(ctx)
}

// admit decides what happens to a request before its handler runs. For a
// request to bound, it returns when the request arrived (start), its
// deadline, and when it got its slot under the concurrency limit
// (admitted, now if there is no limit); run is false for a request already
// answered (refused, or out of budget) or skipped.
func (m *middleware) admit(ctx *fasthttp.RequestCtx) (start, deadline, admitted int64, run bool) {
	if m.countRequests {
		m.stats.requests.Add(1)
	}
	if m.skip != nil && m.skip(ctx) {
		m.handler(ctx)
		return 0, 0, 0, false
	}
	if m.maxLate > 0 && m.late.Load() >= m.maxLate {
		m.stats.shed.Add(1)
		m.reject(ctx, RejectedLateHandlers)
		return 0, 0, 0, false
	}
	t := now()
	start = t
	// The server read the request at ctx.Time(); under load its goroutine
	// may have run much later, and that wait counts against the budget. A
	// RequestCtx set up by hand (Init) has no such time: it equals its
	// ConnTime, and may be old.
	if arrived := ctx.Time(); arrived.After(ctx.ConnTime()) {
		start = min(start, int64(arrived.Sub(epoch)))
	}
	if m.honorQueue {
		wall := time.Now()
		first, found, malformed := requestStart(&ctx.Request.Header, wall)
		if malformed {
			m.stats.badQueueHeaders.Add(1)
		}
		if found {
			start = min(start, t-int64(wall.Sub(first)))
		}
	}
	timeout := m.timeout
	if m.timeoutFunc != nil {
		if d := m.timeoutFunc(ctx); d > 0 {
			timeout = d
		}
	}
	deadline = start + int64(timeout)
	if m.honorHeaders {
		budget, found, malformed := incomingBudget(&ctx.Request.Header)
		if malformed {
			m.stats.badHeaders.Add(1)
		}
		if found {
			deadline = min(deadline, t+int64(budget-m.margin))
		}
	}
	if deadline <= t || m.maxQueueAge > 0 && t-start > int64(m.maxQueueAge) {
		// The caller's budget is spent before the handler could start.
		m.stats.timeouts.Add(1)
		m.stats.spentBudgets.Add(1)
		m.writeTimeoutResponse(&ctx.Response)
		if m.onTimeout != nil {
			m.onTimeout(ctx, &ctx.Response)
		}
		return 0, 0, 0, false
	}
	admitted = t
	if m.limiter != nil {
		waited, reason := m.limiter.acquire(t, deadline)
		switch reason {
		case "":
			m.stats.admitted.Add(1)
		case RejectedQueueTimeout:
			m.stats.rejectedTimeout.Add(1)
		default:
			m.stats.rejectedFull.Add(1)
		}
		if reason != "" {
			m.reject(ctx, reason)
			return 0, 0, 0, false
		}
		admitted += int64(waited)
	}
	if m.countRequests {
		m.stats.inFlight.Add(1)
	}
	return start, deadline, admitted, true
}

// release gives back the concurrency slot of call c, whose handler returned
// at t, in time or not.
func (m *middleware) release(c *call, t int64, inTime bool) {
	if m.limiter != nil {
		m.limiter.release(t, time.Duration(t-c.admitted), inTime)
	}
}

// Reasons given by [RejectReason] for a request refused with 503 without
// running its handler. They are also the values of the "reason" label of the
// Prometheus adaptor's rejected-requests counter.
const (
	// RejectedLateHandlers: Config.MaxLateHandlers handlers were running
	// late.
	RejectedLateHandlers = "late_handlers"
	// RejectedQueueFull: the concurrency limit was reached and the queue was
	// full, or the request's budget left no time to wait.
	RejectedQueueFull = "queue_full"
	// RejectedQueueTimeout: the request waited its share of its budget for
	// a slot under the concurrency limit without getting one.
	RejectedQueueTimeout = "queue_timeout"
)

// rejectKey is the user-value key under which the reason of a refusal is
// stored.
type rejectKey struct{}

// RejectReason returns why the middleware refused the request ctx with 503
// Service Unavailable without running its handler (one of RejectedLateHandlers,
// RejectedQueueFull and RejectedQueueTimeout), or "" if it did not. Call it
// after the handler returned by New has returned, from a middleware around it
// (to log or trace refusals, say).
func RejectReason(ctx *fasthttp.RequestCtx) string {
	if ctx == nil {
		return ""
	}
	reason, _ := ctx.UserValue(rejectKey{}).(string)
	return reason
}

// reject answers ctx with the 503 of a refused request.
func (m *middleware) reject(ctx *fasthttp.RequestCtx, reason string) {
	m.writeShedResponse(&ctx.Response)
	ctx.SetUserValue(rejectKey{}, reason)
}

// finishCooperative runs, deferred, when a cooperative handler returns or
// panics. As in racing mode, a panic before the deadline goes on with its
// value; a handler that returns or panics after it, or after its client
// hung up, is late: its panic goes to OnPanic, and the client gets the
// timeout response (or nothing, if it is gone).
func (m *middleware) finishCooperative(c *call, ctx *fasthttp.RequestCtx) {
	v := recover()
	if m.countRequests {
		m.stats.inFlight.Add(-1)
	}
	t := now()
	// Settle the call before its context's watch ends: from then on, a
	// hang-up no longer changes it.
	if !c.expire(t) {
		c.leave(callFinished)
	}
	over, overAt, start := c.phase(), c.overAt.Load(), c.start
	m.release(c, t, over == callFinished)
	c.end()
	c.ctx = nil
	c.conn = nil
	callPool.Put(c)
	late := over == callTimedOut || over == callGone
	if v != nil {
		m.stats.panics.Add(1)
		if !late {
			panic(v)
		}
		m.reportPanic(ctx, v, debug.Stack())
	}
	if !late {
		return
	}
	m.late.Add(-1)
	m.stats.lateRunning.Add(-1)
	m.stats.lateFinished.Add(1)
	m.stats.lateRun.observe(time.Duration(t - overAt))
	if m.onLateReturn != nil {
		m.onLateReturn(ctx, time.Duration(t-overAt))
	}
	if over == callGone {
		if m.onHangup != nil {
			m.onHangup(ctx, time.Duration(overAt-start))
		}
		writeGoneResponse(&ctx.Response)
		return
	}
	m.stats.answerLateness.observe(time.Duration(t - overAt))
	ctx.Response.Reset()
	m.writeTimeoutResponse(&ctx.Response)
	if m.onTimeout != nil {
		m.onTimeout(ctx, &ctx.Response)
	}
}

// answerTimeout sends the timeout response in place of the late handler's.
// TimeoutErrorWithResponse makes fasthttp give the connection a new
// RequestCtx, so the late handler can keep writing to its own.
func (m *middleware) answerTimeout(ctx *fasthttp.RequestCtx) {
	resp := fasthttp.AcquireResponse()
	m.writeTimeoutResponse(resp)
	if m.onTimeout != nil {
		m.onTimeout(ctx, resp)
	}
	ctx.TimeoutErrorWithResponse(resp)
	fasthttp.ReleaseResponse(resp)
}

// lateReturn runs on a worker whose handler returned after its deadline.
func (m *middleware) lateReturn(w *worker, stack []byte, goexit bool) {
	c := &w.call
	ctx := c.ctx
	late := time.Duration(now() - c.overAt.Load())
	c.end()
	m.late.Add(-1)
	m.stats.lateRunning.Add(-1)
	m.stats.lateFinished.Add(1)
	m.stats.lateRun.observe(late)
	if c.panicked {
		m.reportPanic(ctx, c.panicValue, stack)
	}
	if m.onLateReturn != nil {
		m.onLateReturn(ctx, late)
	}
	// fasthttp never resets a timed-out RequestCtx; release what the late
	// response holds, above all a body stream writer's goroutine, which
	// would otherwise block forever on a pipe nobody reads.
	ctx.Response.Reset()
	c.ctx = nil
	c.panicked, c.panicValue = false, nil
	w.dead = goexit
	m.disown(w, ctx.ConnID())
}

// disown gives up one hold on a timed-out call's worker (see worker.owners);
// the last one returns the worker to the pool.
func (m *middleware) disown(w *worker, connID uint64) {
	if w.owners.Add(-1) == 0 && !w.dead {
		m.releaseWorker(w, connID, now())
	}
}

func (m *middleware) reportPanic(ctx *fasthttp.RequestCtx, v any, stack []byte) {
	if m.onPanic != nil {
		m.onPanic(ctx, v, stack)
		return
	}
	ctx.Logger().Printf("fasttimeout: panic in handler after its deadline: %v\n%s", v, stack)
}

// acquireWorker takes an idle worker, or starts one.
func (m *middleware) acquireWorker(connID uint64, t int64) *worker {
	if w := m.clock.idle.get(connID); w != nil {
		return w
	}
	w := &worker{work: make(chan struct{}, 1), done: make(chan struct{}, 1)}
	w.lastUsed.Store(t)
	w.m = m
	w.timer = time.AfterFunc(time.Hour, w.fire)
	w.timer.Stop()
	w.later = time.AfterFunc(time.Hour, w.fire)
	w.later.Stop()
	w.gone = w.hungUp
	m.clock.addWorker(w)
	go w.loop()
	return w
}

func (m *middleware) releaseWorker(w *worker, connID uint64, t int64) {
	w.lastUsed.Store(t)
	m.clock.idle.put(connID, w)
}
