package fasttimeout

import (
	"context"
	"errors"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"
)

// States of a call, in the low 4 bits of call.state; the 4 bits above
// count the moves of its deadline (Extend), and the bits above those are
// its generation, which counts the requests the call has served (see
// call.begin), so that a compare-and-swap against an earlier request's
// state fails. Every transition is a compare-and-swap within one
// generation:
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
//   - running -> timedOut: the deadline has passed, as seen by the call's
//     timer (worker.fire), by its handler returning or panicking late
//     (worker.serve), by a cooperative handler's return
//     (finishCooperative), by the housekeeper's tick, for a cooperative
//     call whose context it watches (call.expire), or by a hang-up after
//     it (worker.hungUp, call.hungUp). A disarmed call never times out.
//   - running, disarmed or moving -> finished: the handler returned or
//     panicked in time (worker.serve, finishCooperative).
//   - running, disarmed or moving -> gone: the hang-up watch saw the client
//     leave (call.onGone).
//   - running -> disarmed (Disarm), for good; running -> moving -> running
//     (Extend), holding the timer off while the deadline moves, and
//     counting the move, so that a timer that saw the old deadline before
//     the move cannot time the call out after it. Only in racing mode: a
//     cooperative call keeps running, and its deadline moves by
//     compare-and-swap (see call.moveDeadline).
//
// finished, timedOut and gone are final until begin starts the call's next
// request. Exactly one path gets there, through call.settle (call.expire
// for the housekeeper), and in racing mode only that one signals the server
// goroutine, on worker.done. A cooperative handler runs on the server
// goroutine, so nobody signals it: finishCooperative settles the call
// itself, and finds it gone or timed out if the hang-up or the housekeeper
// came first. Whoever decides ends the call's context with the decision's
// cause, so the two always agree.
const (
	callFinished uint64 = iota
	callRunning
	callTimedOut
	callDisarmed // no deadline (Disarm)
	callGone     // the client hung up (see worker.hungUp)
	callMoving   // the deadline being moved (Extend)

	phaseMask  = 0x0f
	moveStep   = phaseMask + 1 // one move of the deadline
	movesMask  = 0xf0
	generation = 0x100
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

	// What a racing call's timers run (worker.fire), which extend runs
	// itself for a deadline that passed while it moved.
	onDeadline func()

	// The outermost call of a request is the one in its user values, for
	// the whole request: current is the innermost call, inside nested News,
	// or itself. Its moves serialises Disarm and Extend, the start and end
	// of the inner calls, and the look-ups of an inner call from other
	// goroutines of the handler; Disarm and Extend of the outermost call
	// alone only read-lock it, beside each other (see hold). Under it each
	// call's movedFrom keeps its deadline from before the move in progress,
	// and slotFrom its slot's part in the adaptive limit (see moveNested).
	current   atomic.Pointer[call]
	moves     sync.RWMutex
	movedFrom int64
	slotFrom  uint32

	// unrun, on the outermost call, is why an inner New last answered the
	// request without running its handler (an index in unrunReasons; 0:
	// none), kept here rather than in the user values, which other
	// goroutines of the handler read meanwhile (see markUnrun). end stores
	// it there.
	unrun atomic.Uint32

	// Watching the client for a hang-up (hangup.go). conn is written by
	// begin before watch is, and read only by whoever moves watch from
	// watchPending to watchRegistering for its generation.
	conn    net.Conn
	watch   atomic.Uint64 // watch phase (low 2 bits) and the call's generation
	watchAt atomic.Int64  // when watching starts
	hangup  hangupHandle  // the registration, owned by whoever holds watchRegistering
	onGone  func()        // the hang-up callback, made once per call

	// Set by the worker before it signals, read by the server goroutine
	// after: the channel orders them.
	panicked   bool
	panicValue any

	returned bool // an inline call's handler returned, rather than panicked or called runtime.Goexit
}

// begin starts the call for ctx, as admit let it (see middleware.admit),
// and makes Context find it. Inside another New's handler (outer not nil),
// the call keeps the earlier of the two deadlines.
//
// The request's user values keep its outermost call throughout: an inner
// call is found through that call's current, which begin and end change
// under its moves. Changing a user value would race with another
// goroutine of the handler looking up the call (a heartbeat's Extend), and
// that goroutine could go on with an inner call ended meanwhile, back in
// the pool for another request.
func (c *call) begin(ctx *fasthttp.RequestCtx, outer *call, start, deadline, admitted int64) {
	c.ctx, c.connID, c.start, c.admitted = ctx, ctx.ConnID(), start, admitted
	var root *call
	if outer != nil {
		// Locked first: a move of the enclosing deadlines on another
		// goroutine is not halfway (see moveNested) when this one is read.
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
	// The deadline is stored before the new generation is: whoever sees
	// this call running sees its deadline, and a compare-and-swap against
	// a generation seen earlier fails (see settle).
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

// root returns the outermost call of c's request: c, or the call of the
// outermost New around it. Only the goroutine running c's handler, or one
// holding the root's moves, may call it.
func (c *call) root() *call {
	for c.outer != nil {
		c = c.outer
	}
	return c
}

// inline reports whether the call's handler runs on the goroutine that
// called the middleware (cooperative mode, or inside another New): such
// calls are pooled without timers, a worker's are made with them.
func (c *call) inline() bool { return c.timer == nil }

// syncContext gives the call's context, if any, the call's deadline, and
// reports false if that context has already been cancelled.
func (c *call) syncContext() bool {
	b := c.bridge.Load()
	return b == nil || b.syncDeadline(&c.deadline)
}

// phase returns the call's state without its generation.
func (c *call) phase() uint64 { return c.state.Load() & phaseMask }

// decided reports whether the call's race is over: finished, timed out or
// gone.
func (c *call) decided() bool {
	p := c.phase()
	return p == callFinished || p == callTimedOut || p == callGone
}

// settle decides the request's race at t with outcome: callTimedOut (its
// deadline has passed), callFinished (its handler returned or panicked in
// time) or callGone (its client hung up). It is the one place that decides
// a request's fate, whoever gets there first (see the states above), and
// reports whether this caller decided it; exactly one does per request.
//
// Deciding does what follows from the outcome: a timeout is counted (and is
// a drop for the adaptive limit), and after a timeout or a hang-up the
// handler is late and its context cancelled with the cause. In racing mode
// the winner signals the server goroutine after settle: a returning handler
// gives its concurrency slot back first.
//
// Only a running call times out, and only if its deadline is not after t (a
// timer armed for an earlier request sees this one's later deadline); a
// disarmed or moving one can still finish or lose its client. A state that
// only changed between running and moving (Extend) decides nothing: look
// again.
func (c *call) settle(outcome uint64, t int64) bool {
	for {
		s := c.state.Load()
		p := s & phaseMask
		if p != callRunning && (p != callDisarmed && p != callMoving || outcome == callTimedOut) ||
			outcome == callTimedOut && c.deadline.Load() > t {
			return false
		}
		if c.state.CompareAndSwap(s, s&^phaseMask|outcome) {
			overAt := t
			if outcome == callTimedOut {
				overAt = c.deadline.Load()
			}
			c.settled(outcome, t, overAt, s&^(generation-1))
			return true
		}
	}
}

// expire is settle(callTimedOut, t) for the housekeeper, which watches the
// context b of a cooperative call and finds its deadline not after t (see
// housekeeper.expireContexts). It decides under b's lock, against b's
// deadline: a move of a cooperative call's deadline gives it to b under
// that lock (see moveDeadline), so the move and the timeout come one after
// the other, whichever goroutine runs late. Only a running call times out;
// one already decided (its handler returned, its client hung up) is left
// to whoever decided it, which ends b with its own cause. It reports
// whether b has ended.
//
// The housekeeper holds the lock of b's shard: until the call's end has
// taken b out of it (call.end), the call is b's request's, not back in the
// pool. A context made after that end (Context on a goroutine the handler
// left running) is another generation's, and times nothing out.
func (c *call) expire(b *requestContext, t int64) bool {
	b.mu.Lock()
	deadline := b.deadline.Load()
	ended := b.err != nil
	if deadline > t {
		b.mu.Unlock()
		return ended
	}
	// An ended context's call may still be running: an inner New's
	// context ends with the outer call's timeout (see follow), which comes
	// no earlier than the inner call's own deadline, passed too.
	for {
		s := c.state.Load()
		if !b.runningIn(s) {
			b.mu.Unlock()
			return ended
		}
		if c.state.CompareAndSwap(s, s&^phaseMask|callTimedOut) {
			b.mu.Unlock()
			c.settled(callTimedOut, t, deadline, s&^(generation-1))
			return true
		}
	}
}

// settled does what follows from settle's decision of the call's race at t,
// for generation gen (see settle): the call timed out (at its deadline,
// overAt) or lost its client (at overAt, which is t).
func (c *call) settled(outcome uint64, t, overAt int64, gen uint64) {
	if outcome != callFinished {
		if hook := testHookSettled.Load(); hook != nil {
			(*hook)(c, outcome)
		}
	}
	switch outcome {
	case callTimedOut:
		c.m.stats.timeouts.Add(1)
		// Read first: once becomeLate has cancelled the context, the call
		// may be another request's.
		l, admitted := c.m.limiter, c.admitted
		c.becomeLate(overAt, context.DeadlineExceeded, &timeoutCause)
		// The drop after becomeLate: a window it closes counts this handler
		// among the late ones, beyond which the limit keeps room.
		if l != nil && l.adaptive {
			l.drop(t, admitted)
		}
		c.counted.Store(gen)
	case callGone:
		c.m.stats.clientGone.Add(1)
		c.becomeLate(overAt, context.Canceled, &goneCause)
		c.counted.Store(gen)
	}
}

// settleOrTimeOut settles the call at t with outcome (callFinished or
// callGone), unless its deadline has passed by then: late is late, even if
// its timer has not run yet (a loaded or stalled process), and the call
// times out. It reports whether this caller settled the call, either way.
func (c *call) settleOrTimeOut(outcome uint64, t int64) bool {
	if hook := testHookSettling.Load(); hook != nil {
		(*hook)(c, outcome, t)
	}
	return c.settle(callTimedOut, t) || c.settle(outcome, t)
}

// testHookSettling, set only by tests, runs in settleOrTimeOut before it
// settles the call with outcome at t: where the goroutine that read t (a
// cooperative handler's return, a hang-up) may stall while the deadline
// passes.
var testHookSettling atomic.Pointer[func(c *call, outcome uint64, t int64)]

// awaitCounted waits, on a late handler's return, until whoever settled its
// call late (its timer, the housekeeper or the hang-up callback, on their
// own goroutines) has done what settle does after its compare-and-swap: a
// handler returning right after it would read an overAt not yet stored,
// take LateRunning below zero and leave InFlight before the timeout is
// counted. The wait is a few atomic operations long.
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

// testHookSettled, set only by tests, runs in settle between the
// compare-and-swap that times a call out (or loses its client) and what
// follows from it.
var testHookSettled atomic.Pointer[func(c *call, outcome uint64)]

// becomeLate does what a call that has just timed out (or lost its client)
// at overAt needs: its handler counts as late from then on, and its context
// is cancelled with err and causes. The context is cancelled before the
// server goroutine is signalled: from then on, the worker may be recycled
// (see worker.owners) and c.bridge be another request's.
func (c *call) becomeLate(overAt int64, err error, causes *context.Context) {
	c.overAt.Store(overAt)
	c.m.late.Add(1)
	c.m.stats.lateRunning.Add(1)
	c.uncountMoved() // counted as late from now on, not twice
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
	b.shard = uint8(c.connID % contextShards)
	if hook := testHookContext.Load(); hook != nil {
		(*hook)(c)
	}
	if c.outer != nil {
		// Inside another New, whose hang-up watch, if it watches, is the
		// request's only one (see beginWatch), its context's end is this
		// one's too.
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
			// The housekeeper times the call out at the deadline (see
			// call.expire).
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

// testHookContext, set only by tests, runs in call.context between making
// the context and publishing it, where Disarm or Extend may move the
// deadline.
var testHookContext atomic.Pointer[func(*call)]

// end cancels the call's context, if any, once the handler has returned,
// and gives Context back to the enclosing New, if any. The outermost call
// leaves in the user values why an inner New refused the request, if one
// did, for RejectReason and SpentBudget after the middleware has returned;
// not for a racing call that timed out or lost its client, whose
// RequestCtx they do not read (see answeredUnrun).
//
// A racing call that timed out or lost its client ends only when both its
// server goroutine and its late handler are done with ctx (see
// middleware.disown): until then OnTimeout or OnHangup may read ctx's user
// values, and Context find the call.
func (c *call) end() {
	inner := c.outer != nil
	if inner {
		// Under the moves' lock: a goroutine holding it (see hold) may be
		// using c, which goes back to the pool once it has ended. From
		// then on no other goroutine finds c, nor makes its context.
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
	if b := c.bridge.Swap(nil); b != nil {
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
