package fasttimeout

import (
	"errors"
	"runtime"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"
)

// ErrClientGone is the [context.Cause] of a request context cancelled
// because the client hung up (closed or reset its connection) while the
// handler ran, or while the request waited for a slot. Its Err is
// [context.Canceled], as with net/http. Use it with errors.Is.
var ErrClientGone = errors.New("fasttimeout: client gone")

// HangupDelay is how long a request's handler runs before its connection
// is watched for the client's hang-up (see Config.IgnoreHangups). Requests
// that finish sooner cost nothing more; most requests do.
const HangupDelay = 5 * time.Millisecond

// minWatchedTimeout is the shortest timeout watched from HangupDelay on: a
// hang-up saves a shorter one little work, while a storm of them, all watched
// at once, costs the CPU their timeout answers need (docs/hangups.md). A
// shorter one is watched only past its deadline (after Disarm or Extend).
const minWatchedTimeout = 100 * time.Millisecond

// StatusClientClosedRequest is the status of the answer to a request whose
// client hung up: 499, the code nginx logs for the same event. Nobody reads
// it unless the client only half-closed; the connection is closed after it.
const StatusClientClosedRequest = 499

// Phases of call.watch, the one hang-up watch of both modes. A call starts
// pending (ended if not to be watched). Once HangupDelay has passed,
// startWatch registers the connection (registering, then registered): in
// racing mode on the call's timer, in cooperative mode on the housekeeper's
// tick and only for a request with a context (see watchForUpstream), as
// nothing else could stop its handler or upstream calls. unwatchClient ends
// it, waiting out a registration in progress.
const (
	watchPending uint64 = iota
	watchRegistering
	watchRegistered
	watchEnded

	watchMask = 3
	watchGen  = watchMask + 1
)

// beginWatch prepares the watch of the call's client for generation gen. A
// request without a connection is not watched; one whose connection has no
// descriptor (in-memory) is found out at registration. HangupDelay counts
// from the handler's start (c.admitted), not the request's arrival: one that
// queued, or that X-Request-Start makes old, still mostly finishes within
// it, and watching all such at once under overload costs CPU.
func (c *call) beginWatch(ctx *fasthttp.RequestCtx, start int64, gen uint64) {
	c.conn = ctx.Conn()
	phase := watchEnded
	// Only the outermost New that watches does: a connection has one watch.
	if c.m.watchHangups && c.conn != nil && !watchedOutside(c.outer) {
		phase = watchPending
		at := c.admitted + int64(HangupDelay)
		if deadline := c.deadline.Load(); deadline-start < int64(minWatchedTimeout) {
			// Watched only past its deadline (see minWatchedTimeout).
			at = max(at, deadline)
		}
		c.watchAt.Store(at)
	}
	c.watch.Store(gen*watchGen | phase)
}

// watchedOutside reports whether a New around a request watches its
// client, outer being the call of the innermost (nil: none): one whose
// Config.IgnoreHangups is set leaves that to the New inside it.
func watchedOutside(outer *call) bool {
	for o := outer; o != nil; o = o.outer {
		if o.m.watchHangups {
			return true
		}
	}
	return false
}

// nextWake returns when the call's timer must go off next: at its deadline,
// or sooner to start watching the client.
func (c *call) nextWake() int64 {
	deadline := c.deadline.Load()
	if c.watch.Load()&watchMask == watchPending {
		return min(deadline, c.watchAt.Load())
	}
	return deadline
}

// rearm sets a racing call's timer to its next wake, once a registration in
// progress has finished arming c.later itself (see startWatch): Extend and
// Disarm, which move the deadline, must have the last word.
func (c *call) rearm() {
	if c.settledWatch()&watchMask == watchRegistered {
		c.later.Reset(time.Duration(c.deadline.Load() - now()))
		return
	}
	c.timer.Reset(time.Duration(c.nextWake() - now()))
	// No longer as the fast path armed it: -1 after the reset, as 0 would let
	// an arm in progress on the server goroutine (this being a goroutine an
	// earlier request left holding the RequestCtx, see Extend) note the timer
	// armed for the deadline it read when this reset came after its own.
	c.timerAt.Store(-1)
}

// rearmRunning arms the timer of a racing call not yet decided for its next
// wake (see worker.await). A move of its deadline has the last word: rearm
// again if one came meanwhile, and leave one in progress to arm it.
func (c *call) rearmRunning() {
	for {
		s := c.state.Load()
		switch s & phaseMask {
		case callMoving:
			runtime.Gosched() // Extend arms the timer itself once it is done
			continue
		case callFinished, callTimedOut, callGone:
			return // the signal of the decision follows
		}
		c.rearm()
		if c.state.Load() == s {
			return
		}
	}
}

// startWatch starts watching the client of a call that has run HangupDelay
// at t, if its watch is still pending, and reports whether it did. It may run
// for an earlier call (a racing call's timer may be an earlier call's): the
// compare-and-swap on watch, which carries the generation, settles that.
//
// A racing call's deadline then goes to a second timer, c.later: moving a
// runtime timer earlier than where it stands makes the runtime sort its
// whole heap again, and c.timer, stopped at a long deadline by the previous
// call, would move to HangupDelay for the next. So each only moves later.
func (c *call) startWatch(t int64) bool {
	s := c.watch.Load()
	if s&watchMask != watchPending || t < c.watchAt.Load() ||
		!c.watch.CompareAndSwap(s, s+watchRegistering) {
		return false
	}
	var watched bool
	if c.hangup, watched = clientHangups.add(c.conn, c.onGone); !watched {
		c.m.stats.unwatchedClients.Add(1)
	}
	if c.later != nil {
		c.later.Reset(time.Duration(c.deadline.Load() - now()))
	}
	c.watch.Store(s + watchRegistered)
	return true
}

// watchForUpstream has a cooperative request's client watched, by making
// the context Context would (once per request), when its handler calls Do
// without having asked for it: Do stops calling upstreams for a gone client
// only if a watch sees it go. A racing call's timer starts its watch itself.
func (c *call) watchForUpstream() {
	for o := c; o != nil; o = o.outer {
		if o.watch.Load()&watchMask == watchPending { // o is the call that watches
			// Not a short timeout's (minWatchedTimeout) till its deadline moved.
			if o.inline() && o.bridge.Load() == nil && o.watchAt.Load() < o.deadline.Load() {
				c.context()
			}
			return
		}
	}
}

// unwatchClient ends the watch of a call's client, on the server goroutine
// once the call is decided: one compare-and-swap before HangupDelay.
func (c *call) unwatchClient() {
	s := c.watch.Load()
	if hook := testHookUnwatch.Load(); hook != nil {
		(*hook)(c)
	}
	if s&watchMask == watchPending && c.watch.CompareAndSwap(s, s|watchEnded) {
		return
	}
	// The compare-and-swap failed because the timer has just started the
	// watch: look again, or a registration would outlive its call.
	if s = c.settledWatch(); s&watchMask == watchRegistered {
		clientHangups.remove(c.hangup) // final: no callback runs after it
		c.hangup = hangupHandle{}
		if c.later != nil {
			c.later.Stop()
		}
		c.watch.Store(s | watchEnded)
	}
}

// settledWatch returns the call's watch word once no registration is in
// progress, a short wait: a map look-up, or a connection's first syscall.
func (c *call) settledWatch() uint64 {
	s := c.watch.Load()
	for s&watchMask == watchRegistering {
		runtime.Gosched()
		s = c.watch.Load()
	}
	return s
}

// testHookUnwatch, set only by tests, runs in unwatchClient between its look
// at the watch and its compare-and-swap, where the timer may start the watch.
var testHookUnwatch atomic.Pointer[func(*call)]

// hungUp is the hang-up callback (call.onGone) of a worker's calls, run on
// the watcher's goroutine, never after unwatchClient removed the
// registration: the call is the one registered. Its context is cancelled
// with cause ErrClientGone and its handler is late from now on, as after a
// timeout, though not counted as one; past the deadline it has timed out,
// even if its timer has not run (a loaded or stalled process). A cooperative
// call's onGone only settles it, for the server goroutine to find.
func (w *worker) hungUp() {
	if w.call.settleOrTimeOut(callGone, now()) {
		w.done <- false // the server goroutine answers the timeout, or moves on
	}
}

// writeGoneResponse fills resp with the answer to a client that is gone.
func writeGoneResponse(resp *fasthttp.Response) {
	resp.Reset()
	resp.SetStatusCode(StatusClientClosedRequest)
	resp.SetConnectionClose()
}

// answerGone ends a racing request whose client hung up. As at a timeout,
// the late handler keeps its RequestCtx and the connection gets a new one.
func (m *middleware) answerGone(ctx *fasthttp.RequestCtx, c *call) {
	resp := fasthttp.AcquireResponse()
	writeGoneResponse(resp)
	defer answerWith(ctx, resp) // even if OnHangup panics (see answerTimeout)
	if m.OnHangup != nil {
		// A Goexit closes the connection, as the 499 would.
		runCallback(ctx, true, nil, func() { m.OnHangup(ctx, time.Duration(c.overAt.Load()-c.start)) })
	}
}

// answerLeft answers the request ctx, which arrived at start and whose
// client hung up while it waited for a slot, as a hang-up while its handler
// ran would be, without running it.
func (m *middleware) answerLeft(ctx *fasthttp.RequestCtx, outer *call, start int64) {
	m.stats.clientGone.Add(1)
	m.stats.leftWaiting.Add(1)
	writeGoneResponse(&ctx.Response)
	// For Context, in OnHangup and around New; inside another New, around
	// the outermost once it has returned (in OnHangup, Context is the
	// enclosing call's), as for a spent budget.
	markUnrun(ctx, outer, leftWaiting)
	if m.OnHangup != nil {
		runCallback(ctx, outer == nil, nil, func() { m.OnHangup(ctx, time.Duration(now()-start)) })
	}
}

// clientGone reports whether the call's client has hung up, as seen by its
// watch or, inside nested News, by an enclosing call's.
func (c *call) clientGone() bool {
	for o := c; o != nil; o = o.outer {
		if o.phase() == callGone {
			return true
		}
	}
	return false
}
