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
// handler runs on the server goroutine, and finishCooperative settles the
// call when it returns.
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
// panics. As in racing mode, a panic in time goes on with its value; a
// handler that returns or panics after its deadline, or its client's
// hang-up, is late: its panic goes to OnPanic, and the client gets the
// timeout response (or nothing, if it is gone).
//
// A handler that calls runtime.Goexit ends the server goroutine, and
// fasthttp then never answers the request nor closes its connection: it is
// counted as a panic, and the outermost New closes the connection, so that
// the client learns at once and the descriptor is not lost. (Racing mode
// re-raises it as a panic on the server goroutine instead; here that would
// crash the process where fasthttp alone would not.)
func (m *middleware) finishCooperative(c *call, ctx *fasthttp.RequestCtx) {
	v := recover()
	goexit := v == nil && !c.returned
	if goexit {
		v = errGoexit
		if c.outer == nil {
			defer closeConn(ctx) // after the callbacks, which may read ctx
		}
	}
	defer m.leaveFlight(c.connID) // last, even when the panic goes on
	t := now()
	// Settle the call before its watch ends: from then on, a hang-up no
	// longer changes it. If the housekeeper timed it out, or its client
	// hung up, wait until that is counted, as a racing late handler does.
	if !c.settleOrTimeOut(callFinished, t) {
		c.awaitCounted()
	}
	c.unwatchClient()
	over, overAt, start := c.phase(), c.overAt.Load(), c.start
	m.release(c, t, over == callFinished)
	// Ended after the callbacks below, as in racing mode: Context in
	// OnTimeout or OnHangup is the request's, ended with its cause.
	defer c.recycle()
	late := over == callTimedOut || over == callGone
	if v != nil {
		m.stats.panics.Add(1)
		if !late && !goexit {
			panic(v)
		}
	}
	if !late {
		return
	}
	// Counted and answered before any callback runs, as in racing mode: one
	// that panics must not leave the handler late for good (LateRunning,
	// and MaxLateHandlers shedding every later request), nor let its
	// response or its hijack handler reach the client.
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
	// too (see endCallback); after the handler's, the deferred closeConn
	// above does.
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

// hungUp is the hang-up callback (call.onGone) of a cooperative call, whose
// handler finds the call settled when it returns. Past the deadline the
// hang-up times the call out, unless its return or, for a call with a
// context, the housekeeper's tick (call.expire) has already: the call has
// no timer of its own.
func (c *call) hungUp() {
	c.settleOrTimeOut(callGone, now())
}
