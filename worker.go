package fasttimeout

import (
	"context"
	"errors"
	"runtime/debug"
	"sync/atomic"

	"github.com/valyala/fasthttp"
)

// States of a call. The server goroutine sets callRunning; then exactly one
// of the worker (callFinished) and the clock (callTimedOut) wins the race
// with a compare-and-swap, and only the winner signals the server goroutine.
const (
	callFinished uint32 = iota
	callRunning
	callTimedOut
	callDisarmed // no deadline (Disarm), or one being moved (Extend)
)

// errGoexit is re-raised on the server goroutine when a raced handler calls
// runtime.Goexit, which would otherwise leave the request unanswered.
var errGoexit = errors.New("fasttimeout: handler called runtime.Goexit")

// callKey is the user-value key under which a request's call is stored.
type callKey struct{}

// call is the state of one request while the middleware runs it. A call is
// reused, but only once its handler has returned: a late handler keeps it.
type call struct {
	m        *middleware
	ctx      *fasthttp.RequestCtx
	outer    *call        // of an enclosing New, restored when this call ends
	deadline atomic.Int64 // nanoseconds since epoch, or noDeadline
	state    atomic.Uint32
	bridge   atomic.Pointer[requestContext] // created by Context, lazily

	// Set by the worker before it signals, read by the server goroutine
	// after: the channel orders them.
	panicked   bool
	panicValue any
}

// begin starts the call for ctx and makes Context find it. Inside another
// New's handler, the call keeps the earlier of the two deadlines.
func (c *call) begin(ctx *fasthttp.RequestCtx, deadline int64) {
	c.ctx = ctx
	if outer := lookup(ctx); outer != nil {
		c.outer = outer
		deadline = min(deadline, outer.deadline.Load())
	}
	c.deadline.Store(deadline)
	c.state.Store(callRunning)
	ctx.SetUserValue(callKey{}, c)
}

// context returns the call's context, creating it on first use.
func (c *call) context() context.Context {
	if b := c.bridge.Load(); b != nil {
		return b
	}
	b := newRequestContext(c.ctx, c.deadline.Load())
	if !c.bridge.CompareAndSwap(nil, b) {
		return c.bridge.Load() // another goroutine of the handler won
	}
	switch {
	case c.m.mode == Cooperative:
		c.m.clock.watch(b)
	case c.state.Load() == callTimedOut:
		// The clock timed the call out before it could see b.
		b.cancel(context.DeadlineExceeded, &timeoutCause)
	}
	// A racing call's context needs no watch: the clock cancels it through
	// the call, which it checks anyway.
	return b
}

// end cancels the call's context, if any, once the handler has returned,
// and gives Context back to the enclosing New, if any.
func (c *call) end() {
	if c.outer != nil {
		c.ctx.SetUserValue(callKey{}, c.outer)
		c.outer = nil
	} else {
		c.ctx.RemoveUserValue(callKey{})
	}
	if b := c.bridge.Swap(nil); b != nil {
		if c.m.mode == Cooperative {
			c.m.clock.unwatch(b)
		}
		b.request.Store(nil) // first: the RequestCtx may be reused from now on
		b.cancel(context.Canceled, nil)
	}
}

// worker is a pooled goroutine that runs raced handlers, one at a time.
type worker struct {
	call
	work     chan struct{} // cap 1: run call; closed to retire the worker
	done     chan struct{} // cap 1: the race of the current call is decided
	lastUsed atomic.Int64  // when it last went idle; read by the clock to retire it

	// owners counts who still holds a timed-out call: its server goroutine,
	// until it has taken the clock's signal and answered, and its late
	// handler, until it returns. The last one returns the worker to the
	// pool, so that no stale signal or late write can reach the next call.
	owners atomic.Int32
	dead   bool // the goroutine called runtime.Goexit; set before owners drops

	removed bool // gone from the clock's registry; guarded by clock.mu
}

func (w *worker) loop() {
	for range w.work {
		w.serve()
	}
}

// serve runs the current call's handler and settles the race.
func (w *worker) serve() {
	c := &w.call
	m := c.m
	returned := false
	defer func() {
		goexit := false
		if !returned {
			c.panicked = true
			if c.panicValue = recover(); c.panicValue == nil {
				// Only runtime.Goexit unwinds without a value; it ends
				// this goroutine once the deferred calls have run.
				goexit = true
				c.panicValue = errGoexit
				m.clock.dropWorker(w)
			}
			m.stats.panics.Add(1)
		}
		if c.state.CompareAndSwap(callRunning, callFinished) ||
			c.state.CompareAndSwap(callDisarmed, callFinished) {
			c.end()
			w.done <- struct{}{}
			return
		}
		var stack []byte
		if c.panicked && !goexit {
			stack = debug.Stack() // still the panicking stack: deferred calls run on it
		}
		m.lateReturn(w, stack, goexit)
	}()
	m.handler(c.ctx)
	returned = true
}
