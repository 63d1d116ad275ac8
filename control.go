package fasttimeout

import (
	"runtime"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"
)

// Disarm switches off the deadline of the request ctx, from inside its
// handler: the middleware no longer answers it with the timeout response,
// and its context (see [Context]) loses its deadline but is still cancelled
// when the server shuts down or the handler returns. Use it in a handler
// that works past its timeout on purpose: a long poll, a slow start of an
// event stream. In cooperative mode a disarmed request no longer keeps
// the middleware's housekeeping goroutine ticking every Config.Precision:
// its context, as a racing request's, learns of the server's shutdown
// within 100 ms.
//
// A body stream writer (ctx.SetBodyStreamWriter) and a hijack handler
// (ctx.Hijack) do their work after the handler has returned (fasthttp
// starts a stream writer's goroutine at once, but sends what it writes only
// then), so the middleware never bounds them, disarmed or not, and the
// request's context ends when the handler returns: the server's
// WriteTimeout and IdleTimeout bound them.
//
// A disarmed handler keeps its concurrency slot (Config.MaxConcurrency)
// until it returns. The adaptive limit (Config.AdaptiveConcurrency) keeps
// room beyond such handlers, as beyond late ones, and takes no latency
// sample from their return; the same goes for a handler that called
// Extend.
//
// Disarm reports whether the deadline is now off: false, and nothing
// changes, if ctx is not bounded by New, its deadline has passed (whether or
// not the timeout has been answered yet) or its client has hung up. Inside
// nested News it switches off every one's deadline, or, if one of them
// cannot be, none.
//
// A context derived from the request's with a deadline of its own later
// than the request's (context.WithTimeout, WithDeadline), before Disarm or
// [Extend], loses that deadline: the standard library makes it a plain
// cancel context, which takes its parent's deadline, since a parent's
// deadline never moves there. After Disarm it has none, after Extend the
// request's new one. Derive such contexts after moving the deadline.
func Disarm(ctx *fasthttp.RequestCtx) bool {
	c, root, h := hold(ctx, true)
	if c == nil {
		return false
	}
	defer root.unhold(h)
	if c.outer != nil {
		return c.moveNested(false, (*call).disarm)
	}
	return c.disarm()
}

// Extend moves the deadline of the request ctx d later, from inside its
// handler; the context's Deadline moves with it, unless the context has
// ended already (at the server's shutdown). It reports false, and
// changes nothing, if ctx is not bounded by New, d is negative, its
// deadline has passed (whether or not the timeout has been answered yet),
// its client has hung up, or it has been disarmed. A d of zero moves
// nothing and reports whether the deadline could still move.
// Inside nested News every one's deadline moves, or, if one of them cannot,
// none does (an enclosing New disarmed before the inner one began has no
// deadline to move, and is left so). A handler whose deadline moved later
// counts, for the adaptive limit, as a disarmed one does (see Disarm). A
// context derived earlier with a later deadline of its own loses it (see
// Disarm).
//
// Call it, as Disarm, while the handler runs: from the handler, or from a
// goroutine that the handler waits for. A late handler's goroutines may
// call it too (it reports false). Once the handler has returned, ctx is
// fasthttp's again, as for any use of it, and may already carry the
// connection's next request, whose deadline Extend would move.
func Extend(ctx *fasthttp.RequestCtx, d time.Duration) bool {
	if d < 0 {
		return false
	}
	c, root, h := hold(ctx, true)
	if c == nil {
		return false
	}
	defer root.unhold(h)
	if c.outer != nil {
		return c.moveNested(true, func(c *call) bool { return c.extend(d) })
	}
	return c.extend(d)
}

// moveNested moves the deadline of call c, inside nested News, and of each
// enclosing call with move, innermost first, and reports whether every one
// moved. Enclosing calls disarmed before c began are skipped if skipDisarmed
// (Extend: no deadline to move). If one cannot move (its deadline passed,
// or its client hung up, since the one inside it moved), those already
// moved are moved back and no longer counted among the moved handlers, so
// that a handler told false does not find a deadline moved inside
// (Remaining, its context's Deadline) while the request times out outside.
// They are all inline calls: only the outermost can race, and it moves last.
//
// The nested moves of one request are serialised on its outermost call's
// lock, which the caller holds (see hold): between a move and its
// undoing, no other Disarm or Extend can move the same deadlines, nor an
// inner call start with one of them, so moving back is restoring the
// deadline each had.
func (c *call) moveNested(skipDisarmed bool, move func(*call) bool) bool {
	for l := c; l != nil; l = l.outer {
		l.movedFrom = l.deadline.Load()
		l.slotFrom = l.slot.Load()
		if skipDisarmed && l != c && l.movedFrom == noDeadline {
			continue
		}
		if !move(l) {
			for m := c; m != l; m = m.outer {
				m.moveBack(m.movedFrom)
				if m.slotFrom == slotHeld {
					m.uncountMoved() // the adaptive limit's room for it goes too
				}
			}
			return false
		}
	}
	return true
}

// moveBack gives the call the deadline old it had before a move that is
// being undone (see extend and moveNested), and its context too, even if
// that has ended since: the deadline goes back, never later, so a handler
// that returns after its context's end is still late. No other move can
// come meanwhile: the call is gone, or the nested moves' lock is held.
//
// The housekeeper, which watches an inline call's context, may have gone to
// rest while the deadline was off (Disarm): it is woken for the deadline
// back.
func (c *call) moveBack(old int64) {
	moved := c.deadline.Swap(old)
	if b := c.bridge.Load(); b != nil && moved != old {
		b.moveBack(moved, old)
		if c.inline() {
			c.m.housekeeper.nudge()
		}
	}
}

// disarm switches the call's deadline off (see Disarm).
func (c *call) disarm() bool {
	if c.inline() {
		return c.moveDeadline(func(int64) (int64, bool) { return noDeadline, true })
	}
	for {
		s := c.state.Load()
		switch p := s & phaseMask; {
		case p == callDisarmed:
			return true
		case p == callMoving:
			runtime.Gosched() // an Extend on another goroutine of the handler
		case p != callRunning || c.deadline.Load() <= now():
			return false // late is late, timer or not
		case c.state.CompareAndSwap(s, s&^phaseMask|callDisarmed):
			c.countMoved()
			c.deadline.Store(noDeadline)
			c.syncContext()
			c.rearm() // only to watch the client, if that has not started yet
			return true
		}
	}
}

// extend moves the call's deadline d later (see Extend).
func (c *call) extend(d time.Duration) bool {
	if c.inline() {
		return c.moveDeadline(func(deadline int64) (int64, bool) {
			return deadlineAfter(deadline, d), deadline != noDeadline
		})
	}
	for {
		// Late is late, timer or not (see settleOrTimeOut). Otherwise hold
		// the timer off (callMoving) while the deadline moves, so that it
		// never times the call out against a deadline being replaced.
		s := c.state.Load()
		switch p := s & phaseMask; {
		case p == callMoving:
			runtime.Gosched() // another Extend on another goroutine of the handler
			continue
		case p != callRunning || c.deadline.Load() <= now():
			return false
		}
		if !c.state.CompareAndSwap(s, s&^phaseMask|callMoving) {
			continue
		}
		old := c.deadline.Load()
		c.deadline.Store(deadlineAfter(old, d))
		if hook := testHookMove.Load(); hook != nil {
			(*hook)(c)
		}
		c.syncContext()
		c.rearm()
		if hook := testHookMoved.Load(); hook != nil {
			(*hook)(c)
		}
		// Running again, one move on: a timer that read the state and the
		// old deadline before the move fails its compare-and-swap.
		moved := s&^(movesMask|phaseMask) | (s+moveStep)&movesMask | callRunning
		if !c.state.CompareAndSwap(s&^phaseMask|callMoving, moved) {
			// The client hung up meanwhile (or the handler returned, on
			// another goroutine): the request is over, and the move did
			// not happen, as in cooperative mode, whose move fails on the
			// context the hang-up ended. A gone call stays its late
			// handler's until it returns, so its deadline can go back; a
			// finished one may already serve the next request, gone in its
			// turn: only this generation's is moved back.
			if cur := c.state.Load(); cur&phaseMask == callGone && cur&^(generation-1) == s&^(generation-1) {
				c.moveBack(old)
			}
			return false
		}
		if d > 0 {
			c.countMoved()
		}
		// The timer armed above may have gone off before the call was
		// running again, found it moving and settled nothing: if the new
		// deadline has passed by now, do what it would have.
		if c.deadline.Load() <= now() {
			c.onDeadline()
		}
		return true
	}
}

// Remaining returns the time left until the deadline of the request ctx,
// negative once it has passed; ok is false if ctx has no deadline (not
// bounded by New, or disarmed).
func Remaining(ctx *fasthttp.RequestCtx) (left time.Duration, ok bool) {
	c, root, h := hold(ctx, false)
	if c == nil {
		return 0, false
	}
	defer root.unhold(h)
	return c.remaining()
}

// remaining is Remaining for the request of call c.
func (c *call) remaining() (left time.Duration, ok bool) {
	d := c.deadline.Load()
	if d == noDeadline {
		return 0, false
	}
	return time.Duration(d - now()), true
}

// lookup returns the call of a request bounded by New (inside nested News,
// the innermost one's), or nil. Only for the goroutine running the
// handler, which starts and ends the inner calls; others use hold.
func lookup(ctx *fasthttp.RequestCtx) *call {
	if root := rootCall(ctx); root != nil {
		return root.current.Load()
	}
	return nil
}

// rootCall returns the outermost call of a request bounded by New, or nil.
func rootCall(ctx *fasthttp.RequestCtx) *call {
	if ctx == nil {
		return nil
	}
	c, _ := ctx.UserValue(callKey{}).(*call)
	return c
}

// holding says how hold holds the outermost call's moves: not at all, read
// locked, or locked.
type holding uint8

const (
	heldNot holding = iota
	heldShared
	heldAll
)

// hold returns the call of the request ctx, as lookup does, for any
// goroutine of its handler, with root, the request's outermost call, and
// how it holds root's moves until the caller gives them back with
// root.unhold(h).
//
// Inside nested News it locks them and returns the innermost call: until
// then that call cannot end (and go back to the pool, to serve another
// request). Outside them a look (Remaining, Context, Do) holds nothing: the
// outermost call lasts as long as the handler, and an inner call that
// starts meanwhile only narrows its deadline, which a look may miss. A move
// (Disarm, Extend: toMove) may not: an inner New that starts takes the
// enclosing deadline as it stands, and a move of the outermost call alone,
// looked up before that start, would report true and leave the inner call
// the old deadline, at which the request would still time out. So a move
// read-locks them even there: moves on several goroutines of the handler
// still run side by side, but never beside an inner call's start.
func hold(ctx *fasthttp.RequestCtx, toMove bool) (c, root *call, h holding) {
	if root = rootCall(ctx); root == nil {
		return nil, nil, heldNot
	}
	if hook := testHookLookup.Load(); hook != nil {
		(*hook)(ctx)
	}
	if toMove {
		root.moves.RLock()
		if c = root.current.Load(); c == root {
			return c, root, heldShared
		}
		root.moves.RUnlock()
	} else if c = root.current.Load(); c == root {
		return c, root, heldNot
	}
	root.moves.Lock()
	return root.current.Load(), root, heldAll
}

// unhold gives back the hold h of hold on c.moves.
func (c *call) unhold(h holding) {
	switch h {
	case heldShared:
		c.moves.RUnlock()
	case heldAll:
		c.moves.Unlock()
	}
}

// testHookLookup, set only by tests, runs in hold once it has found the
// request's outermost call, before it looks at the innermost one: where,
// inside nested News, an inner call may start or end.
var testHookLookup atomic.Pointer[func(*fasthttp.RequestCtx)]

// moveDeadline changes a cooperative call's deadline to move(deadline),
// unless it has passed or move says no. Moves on several goroutines of the
// handler each compare-and-swap the call's deadline, then give the context,
// if any, the call's latest, under its lock: the housekeeper either sees
// the new one, or first times the call out against the context's old one
// (see call.expire), and the move fails, the call's deadline going back to
// the context's, which no longer changes. The call's deadline is stored
// before the context is looked for, as call.context expects. A move later
// counts the handler among the moved ones (see countMoved), as the racing
// paths of disarm and extend do.
func (c *call) moveDeadline(move func(int64) (int64, bool)) bool {
	for {
		old := c.deadline.Load()
		if old <= now() {
			return false
		}
		deadline, ok := move(old)
		if !ok {
			return false
		}
		if !c.deadline.CompareAndSwap(old, deadline) {
			continue
		}
		if hook := testHookMove.Load(); hook != nil {
			(*hook)(c)
		}
		// A context ended by the server's shutdown leaves the deadline
		// alone: the move stands, as in racing mode.
		if b := c.bridge.Load(); b != nil && !b.syncDeadline(&c.deadline) && b.causes.Load() != &shutdownCause {
			// The context has ended with its deadline: go back to that,
			// not to old; of several failed moves, the last to go back
			// would leave its own old, later than the deadline the
			// housekeeper expired the context at.
			c.deadline.Store(b.deadline.Load())
			return false
		}
		if p := c.phase(); p == callTimedOut || p == callGone {
			// Decided meanwhile, the context not ended yet: the
			// housekeeper timed the call out against the old deadline
			// (see call.expire), or the client hung up. The move did not
			// happen.
			c.moveBack(old)
			return false
		}
		if deadline > old {
			c.countMoved()
		}
		return true
	}
}

// testHookMove, set only by tests, runs in moveDeadline and in a racing
// call's extend between their store of the call's deadline and their sync
// of the context, where other moves, the housekeeper's expiry and the
// client's hang-up may come.
var testHookMove atomic.Pointer[func(*call)]

// testHookMoved, set only by tests, runs in a racing call's extend once the
// timer is armed for the new deadline and before the call is running again,
// where that timer may go off.
var testHookMoved atomic.Pointer[func(*call)]
