package fasttimeout

import (
	"runtime/debug"
	"sync"
	"time"

	"github.com/valyala/fasthttp"
)

// callPool holds the calls of cooperative requests. A call goes back only
// when its handler has returned; its context, if any, does not point to it.
var callPool sync.Pool

// serveCooperative is the handler New returns in cooperative mode: the
// handler runs on the server goroutine (see finishCooperative).
func (m *middleware) serveCooperative(ctx *fasthttp.RequestCtx) {
	outer := lookup(ctx)
	start, deadline, admitted, run := m.admit(ctx, outer)
	if !run {
		return
	}
	m.serveInline(ctx, outer, start, deadline, admitted)
}

// serveInline runs the handler on this goroutine, as a cooperative call
// inside the call outer of an enclosing New, if not nil.
func (m *middleware) serveInline(ctx *fasthttp.RequestCtx, outer *call, start, deadline, admitted int64) {
	c, _ := callPool.Get().(*call)
	if c == nil {
		c = new(call)
		c.onGone = c.hungUp
	}
	c.m = m
	c.returned = false
	c.begin(ctx, outer, start, deadline, admitted)
	defer m.finishCooperative(c, ctx)
	m.handler(ctx)
	c.returned = true
}

// finishCooperative runs, deferred, when a cooperative handler returns or
// panics, and settles the call. As in racing mode, a panic in time goes on;
// a handler that returns or panics after its deadline or its client's
// hang-up is late: its panic goes to OnPanic, and the client gets the
// timeout response (or nothing, if gone). A handler's runtime.Goexit ends
// the server goroutine, and fasthttp then neither answers nor closes the
// connection: it counts as a panic, and the outermost New closes the
// connection so the client learns at once and the descriptor is not lost
// (re-raising it, as racing mode does, would crash the process here).
func (m *middleware) finishCooperative(c *call, ctx *fasthttp.RequestCtx) {
	v := recover()
	goexit := v == nil && !c.returned
	if goexit {
		v = ErrHandlerGoexit
		if c.outer == nil {
			defer closeConn(ctx) // after the callbacks, which may read ctx
		}
	}
	defer m.leaveFlight(c.connID) // last, even when the panic goes on
	t := now()
	// Settled before the watch ends, after which a hang-up changes nothing;
	// if another goroutine settled it, wait until that is counted.
	if !c.settleOrTimeOut(callFinished, t) {
		c.awaitCounted()
	}
	c.unwatchClient()
	over, overAt, start := c.phase(), c.overAt.Load(), c.start
	m.release(c, t, over == callFinished && c.returned) // a panic's latency says nothing of congestion
	// Ended after the callbacks below, as in racing mode: Context in
	// OnTimeout or OnHangup is the request's, ended with its cause.
	defer c.recycle()
	if v != nil {
		m.stats.panics.Add(1)
	}
	if over == callFinished { // in time: not timed out, not gone
		if v != nil && !goexit {
			panic(v)
		}
		return
	}
	// Counted and answered before any callback, which may panic: the
	// handler must not stay late for good (LateRunning, MaxLateHandlers
	// shedding), nor its response or hijack handler reach the client.
	lateBy := time.Duration(t - overAt)
	m.countLateReturn(lateBy)
	ctx.Hijack(nil)
	if over == callGone {
		writeGoneResponse(&ctx.Response)
	} else {
		m.stats.answerLateness.observe(lateBy)
		ctx.Response.Reset()
		m.writeTimeoutResponse(&ctx.Response)
	}
	// The outermost New closes the connection after a callback's Goexit
	// (endCallback); after the handler's, the deferred closeConn does.
	runCallback(ctx, c.outer == nil && !goexit, nil, func() {
		if v != nil {
			var stack []byte
			if !goexit { // Goexit has no panicking stack
				stack = debug.Stack()
			}
			m.reportPanic(ctx, v, stack)
		}
		if m.OnLateReturn != nil {
			m.OnLateReturn(ctx, lateBy)
		}
		switch {
		case over == callGone && m.OnHangup != nil:
			m.OnHangup(ctx, time.Duration(overAt-start))
		case over == callTimedOut && m.OnTimeout != nil:
			m.OnTimeout(ctx, &ctx.Response)
		}
	})
}

// closeConn closes the connection of a request whose server goroutine is
// ending (see finishCooperative).
func closeConn(ctx *fasthttp.RequestCtx) {
	if conn := ctx.Conn(); conn != nil {
		_ = conn.Close()
	}
}

// recycle ends a cooperative call whose handler has returned and puts it
// back in the pool.
func (c *call) recycle() {
	c.end()
	c.ctx, c.conn = nil, nil
	callPool.Put(c)
}

// hungUp is a cooperative call's hang-up callback (call.onGone). The call
// has no timer, so past the deadline the hang-up times it out, unless the
// handler's return or the housekeeper (call.expire) did.
func (c *call) hungUp() {
	c.settleOrTimeOut(callGone, now())
}
