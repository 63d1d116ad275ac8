package fasttimeout

import (
	"context"
	"errors"
	"net"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"
)

// States of a call, in the low byte of call.state; the bits above are its
// generation, which counts the requests the call has served (see
// call.begin), so that a compare-and-swap against an earlier request's
// state fails. Every transition is a compare-and-swap within one
// generation:
//
//	begin (server goroutine)
//	  |
//	  v
//	+------------------------------+
//	|            Disarm, Extend    |  expire: the deadline has    +----------+
//	|  running  ---------------->  |----------------------------->| timedOut |
//	|           <----------------  |  passed (running only)       +----------+
//	|            Extend  disarmed  |                              +----------+
//	|                              |----------------------------->| finished |
//	+------------------------------+  leave(callFinished): the    +----------+
//	               |                  handler returned in time
//	               |                                              +----------+
//	               +--------------------------------------------->|   gone   |
//	                  leave(callGone): the client hung up         +----------+
//
// The server goroutine starts each request at callRunning (begin). Then:
//
//   - running -> timedOut (expire): the deadline has passed, as seen by the
//     call's timer (worker.fire), by its handler returning or panicking late
//     (worker.serve), or by a cooperative handler's return
//     (finishCooperative). A disarmed call never times out.
//   - running or disarmed -> finished (leave): the handler returned or
//     panicked in time (worker.serve, finishCooperative).
//   - running or disarmed -> gone (leave, see call.clientGone): the
//     hang-up watch saw the client leave.
//   - running -> disarmed (Disarm), for good; running -> disarmed -> running
//     (Extend), holding the timer off while the deadline moves. Only in
//     racing mode: a cooperative call keeps running, and its deadline moves
//     under its context's lock (see call.moveDeadline).
//
// finished, timedOut and gone are final until begin starts the call's next
// request: exactly one path gets there, and in racing mode only that one
// signals the server goroutine, on worker.done: the timer (timedOut), the
// handler's return (finished or timedOut) or the hang-up callback (gone,
// worker.hungUp). A cooperative handler runs on the server goroutine, so
// nobody signals it: finishCooperative settles the call itself, and finds
// it gone if the hang-up came first.
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
		c.m.housekeeper.watch(b)
	case c.phase() == callTimedOut:
		// The call timed out before expire could see b.
		b.cancel(context.DeadlineExceeded, &timeoutCause)
	case c.phase() == callGone:
		b.cancel(context.Canceled, &goneCause) // as above, for clientGone
	}
	// A racing call's context needs no watch: expire cancels it through
	// the call, and the housekeeper checks running calls for shutdown anyway.
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
			c.m.housekeeper.unwatch(b)
		}
		b.request.Store(nil) // first: the RequestCtx may be reused from now on
		b.cancel(context.Canceled, nil)
	}
}
