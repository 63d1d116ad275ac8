package fasttimeout

import (
	"runtime"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"
)

// Disarm switches off the deadline of the request ctx, from inside its
// handler: the middleware no longer answers it with the timeout response,
// and its context (see [Context]) loses its deadline but still ends at
// server shutdown or when the handler returns. Use it in a handler that
// works past its timeout on purpose: a long poll, a slow start of an event
// stream. In cooperative mode a disarmed request no longer keeps the
// housekeeping goroutine ticking every Config.Precision: its context, as a
// racing request's, learns of the server's shutdown within 100 ms.
//
// A body stream writer (ctx.SetBodyStreamWriter, whose output is sent only
// once the handler has returned) and a hijack handler (ctx.Hijack) outlive
// the handler and its context: the middleware never bounds them, disarmed
// or not; the server's WriteTimeout and IdleTimeout do.
//
// A disarmed handler keeps its concurrency slot (Config.MaxConcurrency)
// until it returns. The adaptive limit (Config.AdaptiveConcurrency) keeps
// room beyond such handlers, as beyond late ones, and takes no latency
// sample from their return; so too for a handler that called Extend.
//
// Disarm reports whether the deadline is now off: false, changing nothing,
// if ctx is not bounded by New, its deadline has passed (answered yet or
// not) or its client has hung up. Inside nested News it switches off every
// one's deadline, or, if one cannot be, none.
//
// A context derived before Disarm or [Extend] with a later deadline of its
// own (context.WithTimeout, WithDeadline) loses it: the standard library,
// for which a parent's deadline never moves, made it a plain cancel context
// with the parent's. Derive such contexts after moving the deadline.
func Disarm(ctx *fasthttp.RequestCtx) bool {
	return move(ctx, false, (*call).disarm)
}

// Extend moves the deadline of the request ctx d later, from inside its
// handler; the context's Deadline moves with it unless the context has
// ended (at server shutdown). It reports false, changing nothing, if ctx is
// not bounded by New, d is negative, the deadline has passed (answered yet
// or not), the client has hung up, or the deadline is disarmed. A d of zero
// moves nothing and reports whether the deadline could still move. Inside
// nested News every one's deadline moves, or, if one cannot, none does (an
// enclosing New disarmed before the inner one began is skipped). For the
// adaptive limit, a handler whose deadline moved later counts as a disarmed
// one; a context derived earlier with a later deadline loses it (see Disarm).
//
// Call it, as Disarm, while the handler runs: from the handler or from a
// goroutine it waits for (a late handler's goroutines get false). Once the
// handler has returned, ctx is fasthttp's again and may already carry the
// connection's next request, whose deadline Extend would move.
func Extend(ctx *fasthttp.RequestCtx, d time.Duration) bool {
	if d < 0 {
		return false
	}
	return move(ctx, true, func(c *call) bool { return c.extend(d) })
}

// move moves with f the deadline of the request ctx, holding its moves (see
// hold), and inside nested News every one's (see moveNested).
func move(ctx *fasthttp.RequestCtx, skipDisarmed bool, f func(*call) bool) bool {
	c, root, h := hold(ctx, true)
	if c == nil {
		return false
	}
	defer root.unhold(h)
	if c.outer != nil {
		return c.moveNested(skipDisarmed, f)
	}
	return f(c)
}

// moveNested moves with move the deadline of c, inside nested News, and of
// each enclosing call, innermost first (the outermost, which alone can race,
// last), and reports whether all moved. skipDisarmed skips enclosing calls
// disarmed before c began (Extend: nothing to move). If one cannot move,
// those already moved are moved back and uncounted, so a handler told false
// does not see a moved deadline inside (Remaining, its context's Deadline)
// while the request times out outside. The caller holds the outermost
// call's moves (see hold), so no other move nor inner call's start comes
// between a move and its undoing: moving back restores each deadline.
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

// moveBack gives the call back the deadline old it had before a move being
// undone (extend, moveNested), and its context too, even if that has ended
// since: never later, so a handler returning after its context's end is
// still late. No other move comes meanwhile: the call is gone, or the nested
// moves' lock is held. A housekeeper watching an inline call's context may
// have gone to rest while the deadline was off (Disarm): it is woken.
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
		// Late is late (see settleOrTimeOut); else hold the timer off
		// (callMoving) while the deadline is replaced.
		s := c.state.Load()
		switch p := s & phaseMask; {
		case p == callMoving:
			runtime.Gosched() // another Extend on another goroutine of the handler
			continue
		case p != callRunning || c.deadline.Load() <= now():
			return false
		case !c.state.CompareAndSwap(s, s&^phaseMask|callMoving):
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
			// The client hung up meanwhile, or the handler returned on
			// another goroutine: the move did not happen. A gone call is
			// still its late handler's, so its deadline goes back; a
			// finished one may already serve the next request (gone in its
			// turn): only this generation's goes back.
			if cur := c.state.Load(); cur&phaseMask == callGone && cur&^(generation-1) == s&^(generation-1) {
				c.moveBack(old)
			}
			return false
		}
		if d > 0 {
			c.countMoved()
		}
		// The timer armed above may have gone off while the call was moving
		// and settled nothing: if the new deadline has passed, do its part.
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

// holding says how hold holds the outermost call's moves.
type holding uint8

const (
	heldNot holding = iota
	heldShared
	heldAll
)

// hold returns the call of the request ctx, as lookup does but for any
// goroutine of its handler, with root, the outermost call, and how it holds
// root's moves until root.unhold(h). Inside nested News it locks them, so
// the innermost call cannot end and go back to the pool meanwhile. Outside,
// a look (Remaining, Context, Do) holds nothing: the outermost call lasts as
// long as the handler, and an inner call starting meanwhile only narrows
// the deadline. A move (Disarm, Extend: toMove) read-locks them even there:
// an inner New takes the enclosing deadline as it stands at its start, so a
// move of the outermost call alone, looked up before that start, would
// report true yet leave the inner call the old deadline. Moves still run
// side by side, but never beside an inner call's start.
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

// testHookLookup, set only by tests, runs in hold between finding the
// outermost call and the innermost one, where an inner call may start or end.
var testHookLookup atomic.Pointer[func(*fasthttp.RequestCtx)]

// moveDeadline changes a cooperative call's deadline to move(deadline),
// unless it has passed or move says no, and counts a later one as moved.
// Each move compare-and-swaps the call's deadline, then (as call.context
// expects) gives the context, if any, the latest under its lock: the
// housekeeper either sees the new one, or first times the call out against
// the old one (call.expire), and the move fails.
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
			// The context ended with its deadline: go back to that, not to
			// old, which for the last of several failed moves is later than
			// the deadline the context expired at.
			c.deadline.Store(b.deadline.Load())
			return false
		}
		if p := c.phase(); p == callTimedOut || p == callGone {
			// Timed out against the old deadline (call.expire), or hung
			// up, before the context ended: the move did not happen.
			c.moveBack(old)
			return false
		}
		if deadline > old {
			c.countMoved()
		}
		return true
	}
}

// testHookMove, set only by tests, runs in moveDeadline and a racing extend
// between storing the call's deadline and syncing the context, where other
// moves, the housekeeper's expiry and a hang-up may come.
var testHookMove atomic.Pointer[func(*call)]

// testHookMoved, set only by tests, runs in extend once the timer is re-armed.
var testHookMoved atomic.Pointer[func(*call)]
