package fasttimeout

import (
	"context"
	"errors"
	"net"
	"runtime/debug"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"
)

// States of a call, in the low byte of call.state; the bits above count the
// calls a worker has run (see call.begin). The server goroutine sets
// callRunning; then exactly one of the handler's return (callFinished) and
// the deadline (callTimedOut, see call.expire) wins with a compare-and-swap,
// and only the winner signals the server goroutine.
const (
	callFinished uint64 = iota
	callRunning
	callTimedOut
	callDisarmed // no deadline (Disarm), or one being moved (Extend)
	callGone     // the client hung up (see call.clientGone)

	phaseMask  = 0xff
	generation = phaseMask + 1
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
	outer    *call                          // of an enclosing New, restored when this call ends
	deadline atomic.Int64                   // nanoseconds since epoch, or noDeadline
	state    atomic.Uint64                  // phase (low byte) and generation
	timer    *time.Timer                    // a racing call's first wake: its deadline, or the start of the watch if sooner; nil in cooperative mode
	later    *time.Timer                    // a watched racing call's deadline, once timer has started the watch
	bridge   atomic.Pointer[requestContext] // created by Context, lazily
	overAt   atomic.Int64                   // when the call timed out (its deadline) or its client left
	start    int64                          // when the request arrived; read by the server goroutine
	admitted int64                          // when it got its concurrency slot, or started without a limit

	// Watching the client for a hang-up (hangup.go). conn is written by
	// begin before watch is, and read only by whoever moves watch from
	// watchPending to watchRegistering for its generation.
	conn    net.Conn
	watch   atomic.Uint64 // watch phase (low 2 bits) and the call's generation
	watchAt atomic.Int64  // when watching starts
	hangup  hangupHandle  // the registration, owned by whoever holds watchRegistering

	// Set by the worker before it signals, read by the server goroutine
	// after: the channel orders them.
	panicked   bool
	panicValue any
}

// begin starts the call for ctx and makes Context find it. Inside another
// New's handler, the call keeps the earlier of the two deadlines.
func (c *call) begin(ctx *fasthttp.RequestCtx, start, deadline int64) {
	c.ctx, c.start = ctx, start
	if outer := lookup(ctx); outer != nil {
		c.outer = outer
		deadline = min(deadline, outer.deadline.Load())
	}
	c.deadline.Store(deadline)
	state := c.state.Load()&^phaseMask + generation | callRunning
	c.beginWatch(ctx, start, state/generation)
	// The deadline is stored before the new generation is: whoever sees
	// this call running sees its deadline, and a compare-and-swap against
	// a generation seen earlier fails (see expire).
	c.state.Store(state)
	ctx.SetUserValue(callKey{}, c)
}

// phase returns the call's state without its generation.
func (c *call) phase() uint64 { return c.state.Load() & phaseMask }

// transition moves the call from phase from to phase to, within the same
// generation, and reports whether it did.
func (c *call) transition(from, to uint64) bool {
	s := c.state.Load()
	return s&phaseMask == from && c.state.CompareAndSwap(s, s&^phaseMask|to)
}

// leave moves a call that is still undecided (running, or disarmed) to
// phase to, and reports whether it did; the handler's return (callFinished)
// and the client's hang-up (callGone) race for it. It tries again when the
// phase moved only between running and disarmed (Extend), which decides
// nothing.
func (c *call) leave(to uint64) bool {
	for {
		s := c.state.Load()
		if p := s & phaseMask; p != callRunning && p != callDisarmed {
			return false
		}
		if c.state.CompareAndSwap(s, s&^phaseMask|to) {
			return true
		}
	}
}

// expire times the call out if it is running and its deadline is not after
// t. It is the one place where a call times out: when its timer fires, when
// its handler returns or panics (late is late, whether or not the timer has
// run yet), and when a cooperative handler returns. The caller that gets
// true owns the timeout: in racing mode it signals the server goroutine.
func (c *call) expire(t int64) bool {
	s := c.state.Load()
	if s&phaseMask != callRunning || c.deadline.Load() > t ||
		!c.state.CompareAndSwap(s, s&^phaseMask|callTimedOut) {
		return false
	}
	c.m.stats.timeouts.Add(1)
	if l := c.m.limiter; l != nil && l.adaptive {
		l.drop(t)
	}
	c.becomeLate(c.deadline.Load(), context.DeadlineExceeded, &timeoutCause)
	return true
}

// becomeLate does what a call that has just timed out (or lost its client)
// at overAt needs: its handler counts as late from then on, and its context
// is cancelled with err and causes. The context is cancelled before the
// server goroutine is signalled: from then on, the worker may be recycled
// (see worker.owners) and c.bridge be another request's.
func (c *call) becomeLate(overAt int64, err error, causes *context.Context) {
	c.overAt.Store(overAt)
	c.m.late.Add(1)
	c.m.stats.lateRunning.Add(1)
	if b := c.bridge.Load(); b != nil {
		b.cancel(err, causes)
	}
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
		if c.watch.Load()&watchMask == watchPending {
			b.call, b.conn, b.watchAt, b.watching = c, c.conn, c.watchAt.Load(), contextPending
		}
		c.m.clock.watch(b)
	case c.phase() == callTimedOut:
		// The call timed out before expire could see b.
		b.cancel(context.DeadlineExceeded, &timeoutCause)
	case c.phase() == callGone:
		b.cancel(context.Canceled, &goneCause) // as above, for clientGone
	}
	// A racing call's context needs no watch: expire cancels it through
	// the call, and the clock checks running calls for shutdown anyway.
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
	gone     func()        // w.hungUp, made once: the hang-up callback of its calls
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

// fire runs when the timer of the worker's call goes off. It may be the
// timer of an earlier call that finished as it fired: expire then finds the
// deadline of the current call ahead, or another generation, and does
// nothing.
func (w *worker) fire() {
	t := now()
	if w.call.expire(t) {
		w.done <- struct{}{} // the server goroutine answers with the timeout response
		return
	}
	w.watchClient(t)
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
		if m.countRequests {
			m.stats.inFlight.Add(-1)
		}
		// A handler that returns or panics after its deadline is late,
		// even if its timer has not run yet (a stalled or starved process).
		// The slot goes back before the server goroutine is signalled:
		// from then on the call may be another request's.
		t := now()
		if c.expire(t) {
			m.release(c, t, false)
			w.done <- struct{}{}
		} else if c.leave(callFinished) {
			m.release(c, t, true)
			c.end()
			w.done <- struct{}{}
			return
		} else {
			m.release(c, t, false)
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
