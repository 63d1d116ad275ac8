package fasttimeout

import (
	"context"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"
)

// States of a call: the phase in the low 4 bits of call.state, the count of
// its deadline's moves (Extend) in the next 24, and above them its
// generation, the requests it has served (see begin), so that a
// compare-and-swap against an earlier request's state fails. The moves wrap
// only after 16 million Extends while a timer is stalled between its look
// and its compare-and-swap; the generation, after 68 billion requests on
// one call. Every transition is a compare-and-swap within one generation:
//
//	begin (server goroutine)
//	  |
//	  v
//	+---------------------------------+
//	|  Disarm                         |  settle(callTimedOut): the   +----------+
//	|  running ------------> disarmed |----------------------------->| timedOut |
//	|   |   ^                         |  deadline passed (running    +----------+
//	|   |   | Extend                  |  only)                       +----------+
//	|   v   |                         |----------------------------->| finished |
//	|  moving                         |  settle(callFinished): the   +----------+
//	+---------------------------------+  handler returned in time
//	               |                                                 +----------+
//	               +------------------------------------------------>|   gone   |
//	                  settle(callGone): the client hung up           +----------+
//
// Who makes each transition:
//
//   - running -> timedOut, past the deadline: the timer (worker.fire), a late
//     return or panic (worker.serve, finishCooperative), the housekeeper
//     (call.expire), a late hang-up (worker.hungUp, call.hungUp).
//   - running, disarmed or moving -> finished (worker.serve,
//     finishCooperative) or gone (the hang-up watch, call.onGone).
//   - running -> disarmed (Disarm), for good; running -> moving -> running
//     (Extend), which holds the timer off and counts the move, so that a
//     timer that saw the old deadline fails. Racing mode only: a
//     cooperative call's deadline moves by compare-and-swap (moveDeadline).
//
// finished, timedOut and gone are final until begin starts the next
// request. Exactly one path gets there, through settle (expire for the
// housekeeper), which ends the call's context with the same cause; in
// racing mode that path alone signals the server goroutine (worker.done).
// A cooperative call is settled by finishCooperative, on the server
// goroutine, unless the hang-up or the housekeeper came first.
const (
	callFinished uint64 = iota
	callRunning
	callTimedOut
	callDisarmed // no deadline (Disarm)
	callGone     // the client hung up (see worker.hungUp)
	callMoving   // the deadline being moved (Extend)

	phaseMask  = 0x0f
	moveStep   = phaseMask + 1 // one move of the deadline
	movesMask  = 0xffffff0
	generation = 0x10000000
)

// callKey is the user-value key under which a request's call is stored.
type callKey struct{}

// call is the state of one request while the middleware runs it. A call is
// reused, but only once its handler has returned: a late handler keeps it.
type call struct {
	m        *middleware
	ctx      *fasthttp.RequestCtx
	connID   uint64                         // ctx's connection, kept for a late handler: the stripe of its Stats counters
	outer    *call                          // of an enclosing New, restored when this call ends
	deadline atomic.Int64                   // nanoseconds since epoch, or noDeadline
	state    atomic.Uint64                  // phase (low 4 bits), moves and generation
	timer    *time.Timer                    // a racing call's first wake: its deadline, or the start of the watch if sooner; nil for an inline call
	later    *time.Timer                    // a watched racing call's deadline, once timer has started the watch
	timerAt  atomic.Int64                   // when timer goes off, as worker.arm set it for a busy connection; 0 or less if unknown
	bridge   atomic.Pointer[requestContext] // created by Context, lazily
	overAt   atomic.Int64                   // when the call timed out (its deadline) or its client left
	counted  atomic.Uint64                  // the generation (state bits) whose timeout or hang-up settle has counted
	start    int64                          // when the request arrived; read by the server goroutine
	admitted int64                          // when it got its concurrency slot, or started without a limit
	slot     atomic.Uint32                  // slotHeld, slotMoved or slotReleased: the slot's part in the adaptive limit's count of moved handlers

	// What a racing call's timers run (worker.fire); extend runs it for a
	// deadline that passed while it moved.
	onDeadline func()

	// On the outermost call, the one in the user values: current is the
	// innermost call, or itself, and moves serialises Disarm and Extend
	// with the start and end of inner calls and with other goroutines'
	// look-ups of an inner call (see hold). Under it, movedFrom and slotFrom
	// keep each call's deadline and slot from before a move (moveNested).
	current   atomic.Pointer[call]
	moves     sync.RWMutex
	movedFrom int64
	slotFrom  uint32

	// unrun, on the outermost call, is why an inner New last answered
	// without running its handler (index in unrunReasons, 0: none); kept
	// off the user values, which other goroutines read (markUnrun), until end.
	unrun atomic.Uint32

	// The hang-up watch (hangup.go). begin writes conn before watch; only
	// whoever moves watch from watchPending to watchRegistering reads it.
	conn    net.Conn
	watch   atomic.Uint64 // watch phase (low 2 bits) and the call's generation
	watchAt atomic.Int64  // when watching starts
	hangup  hangupHandle  // the registration, owned by whoever holds watchRegistering
	onGone  func()        // the hang-up callback, made once per call

	// Set by the worker before it signals done; read by the server after.
	panicked   bool
	panicValue any // ErrHandlerGoexit for a runtime.Goexit, which ends the worker (worker.dead)

	returned bool // an inline call's handler returned, rather than panicked or called runtime.Goexit
}

// begin starts the call for ctx, as middleware.admit let it, and makes
// Context find it. Inside another New's handler (outer not nil), the call
// keeps the earlier of the two deadlines. An inner call is found through the
// outermost call's current, not a user value: changing that would race
// with another goroutine's look-up (a heartbeat's Extend), which could go
// on with an inner call already ended and back in the pool.
func (c *call) begin(ctx *fasthttp.RequestCtx, outer *call, start, deadline, admitted int64) {
	c.ctx, c.connID, c.start, c.admitted = ctx, ctx.ConnID(), start, admitted
	var root *call
	if outer != nil {
		// Locked first: no move of the enclosing deadlines is halfway.
		root = outer.root()
		root.moves.Lock()
		c.outer = outer
		deadline = min(deadline, outer.deadline.Load())
	}
	c.deadline.Store(deadline)
	if l := c.m.limiter; l != nil && l.adaptive {
		c.slot.Store(slotHeld) // a pooled call's may be an earlier request's
	}
	state := c.state.Load()&^(generation-1) + generation | callRunning
	c.beginWatch(ctx, start, state/generation)
	// The deadline before the generation: whoever sees the call running
	// sees its deadline.
	c.state.Store(state)
	if root != nil {
		root.current.Store(c)
		root.moves.Unlock()
		return
	}
	if c.current.Load() != c { // a pooled call's is itself, once it has been outermost
		c.current.Store(c)
	}
	if c.unrun.Load() != 0 { // a pooled call's may be an earlier request's
		c.unrun.Store(0)
	}
	ctx.SetUserValue(callKey{}, c)
}

// root returns the outermost call of c's request. Only the goroutine
// running c's handler, or one holding the root's moves, may call it.
func (c *call) root() *call {
	for c.outer != nil {
		c = c.outer
	}
	return c
}

// inline reports whether the handler runs on the goroutine that called the
// middleware (cooperative mode, or inside another New): it has no timers.
func (c *call) inline() bool { return c.timer == nil }

// syncContext gives the call's context, if any, the call's deadline, and
// reports false if that context has already been cancelled.
func (c *call) syncContext() bool {
	b := c.bridge.Load()
	return b == nil || b.syncDeadline(&c.deadline)
}

// phase returns the call's state without its generation.
func (c *call) phase() uint64 { return c.state.Load() & phaseMask }

// decided reports whether the call is finished, timed out or gone.
func (c *call) decided() bool {
	p := c.phase()
	return p == callFinished || p == callTimedOut || p == callGone
}

// settle decides the request's outcome at t, the one place that does (see
// the states above), and reports whether this caller did.
//
// Only a running call times out, and only if its deadline is not after t (a
// timer armed for an earlier request sees this one's later deadline); a
// disarmed or moving one can still finish or lose its client. A change only
// between running and moving (Extend) decides nothing: look again.
func (c *call) settle(outcome uint64, t int64) bool {
	for {
		s := c.state.Load()
		p := s & phaseMask
		if p != callRunning && (p != callDisarmed && p != callMoving || outcome == callTimedOut) ||
			outcome == callTimedOut && c.deadline.Load() > t {
			return false
		}
		if c.state.CompareAndSwap(s, s&^phaseMask|outcome) {
			switch gen := s &^ (generation - 1); outcome {
			case callTimedOut:
				c.settled(outcome, t, c.deadline.Load(), gen)
			case callGone:
				c.settled(outcome, t, t, gen)
			}
			return true
		}
	}
}

// expire is settle(callTimedOut, t) for the housekeeper, which finds the
// deadline of b, a cooperative call's context, passed. It decides under b's
// lock against b's deadline, which moveDeadline updates under that lock, so
// a move and the timeout come one after the other however late either runs.
// A call already decided is left to whoever decided it, which ends b with
// its cause. It reports whether b has ended. The caller holds b's shard
// lock, so the call stays b's request's until end takes b out of the shard;
// a context made after that end is of another generation.
func (c *call) expire(b *requestContext, t int64) bool {
	b.mu.Lock()
	deadline := b.deadline.Load()
	ended := b.err != nil
	// b may have ended while its call runs on: an inner New's context
	// ends with the outer call's timeout (follow), past the inner
	// deadline too.
	for s := c.state.Load(); deadline <= t && b.runningIn(s); s = c.state.Load() {
		if c.state.CompareAndSwap(s, s&^phaseMask|callTimedOut) {
			b.mu.Unlock()
			c.settled(callTimedOut, t, deadline, s&^(generation-1))
			return true
		}
	}
	b.mu.Unlock()
	return ended
}

// settled does what follows settle's decision of a timeout or a hang-up
// (callTimedOut or callGone) for generation gen: the handler is late from
// overAt (the deadline, or t) and its context is cancelled with the cause,
// before the server goroutine is signalled: from then on the worker may be
// recycled (worker.owners) and c.bridge another's. A timeout is counted, and
// a drop for the adaptive limit. A call finished in time needs none of it.
func (c *call) settled(outcome uint64, t, overAt int64, gen uint64) {
	if hook := testHookSettled.Load(); hook != nil {
		(*hook)(c, outcome)
	}
	err, causes := context.Canceled, &goneCause
	if outcome == callTimedOut {
		c.m.stats.timeouts.Add(1)
		err, causes = context.DeadlineExceeded, &timeoutCause
	} else {
		c.m.stats.clientGone.Add(1)
	}
	// Read first: once the context is cancelled, the call may be another
	// request's.
	l, admitted := c.m.limiter, c.admitted
	c.overAt.Store(overAt)
	c.m.late.Add(1)
	c.m.stats.lateRunning.Add(1)
	c.uncountMoved() // counted as late from now on, not twice
	if b := c.bridge.Load(); b != nil {
		b.cancel(err, causes)
	}
	// The drop after the late count: a window it closes counts this
	// handler among the late ones, beyond which the limit keeps room.
	if outcome == callTimedOut && l != nil && l.adaptive {
		l.drop(t, admitted)
	}
	c.counted.Store(gen)
}

// settleOrTimeOut settles the call at t with outcome (callFinished or
// callGone), or times it out if its deadline has passed by t: late is late,
// even if its timer has not run yet (a loaded or stalled process). It
// reports whether this caller settled the call.
func (c *call) settleOrTimeOut(outcome uint64, t int64) bool {
	if hook := testHookSettling.Load(); hook != nil {
		(*hook)(c, outcome, t)
	}
	return c.settle(callTimedOut, t) || c.settle(outcome, t)
}

// testHookSettling, set only by tests, runs in settleOrTimeOut after t is
// read, where its goroutine may stall past the deadline.
var testHookSettling atomic.Pointer[func(c *call, outcome uint64, t int64)]

// awaitCounted waits, on a late handler's return, until whoever settled the
// call on another goroutine has run settled: else the return would read an
// overAt not yet stored, take LateRunning below zero and leave InFlight
// before the timeout is counted. The wait is a few atomic operations long.
func (c *call) awaitCounted() {
	gen := c.state.Load() &^ (generation - 1)
	hooked := false
	for c.counted.Load() != gen {
		if hook := testHookAwaitCounted.Load(); hook != nil && !hooked {
			(*hook)(c)
			hooked = true
		}
		runtime.Gosched()
	}
}

// testHookSettled, set only by tests, runs between settle's decision of a
// timeout or hang-up and what follows from it.
var testHookSettled atomic.Pointer[func(c *call, outcome uint64)]

// context returns the call's context, creating it on first use.
func (c *call) context() context.Context {
	if b := c.bridge.Load(); b != nil {
		return b
	}
	b := newRequestContext(c.ctx, c.deadline.Load())
	b.shard = uint8(c.connID % contextShards)
	if hook := testHookContext.Load(); hook != nil {
		(*hook)(c)
	}
	if c.outer != nil {
		// The outer context's end (its hang-up watch is the request's
		// only one, see beginWatch) is this one's too.
		b.follow(c.outer.context().(*requestContext))
	}
	if !c.bridge.CompareAndSwap(nil, b) {
		b.unfollow()
		return c.bridge.Load() // another goroutine of the handler won
	}
	// Disarm and Extend store the deadline, then look for b: if they came
	// between the two lines above, they missed b, and b must see theirs.
	if c.deadline.Load() != b.deadline.Load() {
		b.syncDeadline(&c.deadline)
	}
	switch c.phase() {
	case callTimedOut:
		// Timed out before settle could see b (or, in OnTimeout, long before).
		b.cancel(context.DeadlineExceeded, &timeoutCause)
	case callGone:
		b.cancel(context.Canceled, &goneCause) // as above, for a hang-up
	default:
		if c.inline() {
			// The housekeeper times the call out at the deadline (expire).
			b.owner, b.gen = c, c.state.Load()&^(generation-1)
			if c.watch.Load()&watchMask == watchPending {
				b.call = c // the housekeeper starts the call's watch
			}
			c.m.housekeeper.watch(b)
		}
	}
	// A racing call's context needs no watch: settle cancels it through
	// the call, and the housekeeper checks running calls for shutdown anyway.
	return b
}

// testHookContext, set only by tests, runs in call.context before it
// publishes the context, where Disarm or Extend may come.
var testHookContext atomic.Pointer[func(*call)]

// end cancels the call's context, if any, once the handler has returned,
// and gives Context back to the enclosing New, if any. The outermost call
// leaves in the user values why an inner New refused the request, for
// RejectReason and SpentBudget, unless it raced and timed out or lost its
// client (see answeredUnrun). Such a racing call ends only once its server
// goroutine and its late handler are both done with ctx (middleware.disown):
// until then OnTimeout or OnHangup may read its user values and Context
// find the call.
func (c *call) end() {
	inner := c.outer != nil
	if inner {
		// Under moves: a goroutine holding it (hold) may be using c, which
		// goes back to the pool once ended; from then on none finds c.
		root := c.root()
		root.moves.Lock()
		root.current.Store(c.outer)
		c.outer = nil
		root.moves.Unlock()
	} else {
		if b := c.bridge.Load(); b != nil {
			b.detach() // first: no Value reads the RequestCtx from now on
		}
		c.ctx.RemoveUserValue(callKey{})
		if r := c.unrun.Load(); r != 0 && (c.inline() || c.phase() == callFinished) {
			c.ctx.SetUserValue(rejectKey{}, unrunReasons[r])
		}
	}
	// Not a swap: most calls have no context, and a load writes nothing.
	// Context sets bridge only from nil, and only end clears it.
	if b := c.bridge.Load(); b != nil {
		c.bridge.Store(nil)
		if inner {
			b.detach() // made before the switch above, on any goroutine
		}
		if c.inline() {
			c.m.housekeeper.unwatch(b)
		}
		b.unfollow()
		b.cancel(context.Canceled, nil)
	}
}
