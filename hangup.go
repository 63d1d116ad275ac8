package fasttimeout

import (
	"context"
	"errors"
	"runtime"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"
)

// ErrClientGone is the [context.Cause] of a request context cancelled
// because the client hung up (closed or reset its connection) while the
// handler ran. Its Err is [context.Canceled], as with net/http. Use it with
// errors.Is.
var ErrClientGone = errors.New("fasttimeout: client gone")

// HangupDelay is how long a request's handler runs before its connection
// is watched for the client's hang-up (see Config.IgnoreHangups). Requests
// that finish sooner cost nothing more; most requests do.
const HangupDelay = 5 * time.Millisecond

// minWatchedTimeout is the shortest timeout whose requests are watched
// from HangupDelay on. A hang-up can save a request with a shorter timeout
// little work, while a storm of such requests, all watched at once, costs
// the CPU their timeout answers need (docs/hangups.md). Such a request is
// watched only if it runs past its original deadline, which it can only
// after Disarm or Extend.
const minWatchedTimeout = 100 * time.Millisecond

// StatusClientClosedRequest is the status of the answer to a request whose
// client hung up: 499, the code nginx logs for the same event. Nobody reads
// it, unless the client only half-closed its side; the connection is closed
// after it.
const StatusClientClosedRequest = 499

// Phases of call.watch, the one hang-up watch of both modes. A call starts
// pending (or ended, when it is not to be watched). Once HangupDelay has
// passed, startWatch moves it to registering, registers the connection and
// moves it to registered: in racing mode on the call's timer, in
// cooperative mode on the housekeeper's tick, for a request that has a
// context: its handler asked for it, or called Do (see watchForUpstream);
// nothing else could stop its handler or its upstream calls. The server
// goroutine moves it to ended when the call is over, waiting out a
// registration in progress, and removes the registration if there is one.
const (
	watchPending uint64 = iota
	watchRegistering
	watchRegistered
	watchEnded

	watchMask = 3
	watchGen  = watchMask + 1
)

// beginWatch prepares the watch of the call's client for its generation
// gen. A request without a connection (ctx.Conn() nil) is not watched; one
// whose connection has no descriptor (an in-memory one) is found out at
// registration, once HangupDelay has passed.
//
// The delay counts from when the handler starts (c.admitted), not from
// when the request arrived: a request that waited in a queue, or that a
// proxy's X-Request-Start makes old, still mostly finishes within it, and
// under overload watching all of them at once would cost the CPU their
// answers need.
func (c *call) beginWatch(ctx *fasthttp.RequestCtx, start int64, gen uint64) {
	c.conn = ctx.Conn()
	phase := watchEnded
	// Inside another New only the outermost that watches does: a
	// connection has one watch, and its hang-up reaches the inner context
	// through the outer's (call.context).
	if c.m.watchHangups && c.conn != nil && !watchedOutside(c.outer) {
		phase = watchPending
		at := c.admitted + int64(HangupDelay)
		if deadline := c.deadline.Load(); deadline-start < int64(minWatchedTimeout) {
			// A short timeout: its deadline comes first and ends the
			// request, unwatched. Only a handler that moved its deadline
			// (Disarm, Extend: a long poll) gets there, and then it runs
			// on, and its client must be watched like any other's.
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

// rearm sets the timer that holds a racing call's next wake to it, once a
// registration in progress has finished arming c.later itself (see
// startWatch): Extend and Disarm, which move the deadline, must have the
// last word.
func (c *call) rearm() {
	if c.settledWatch()&watchMask == watchRegistered {
		c.later.Reset(time.Duration(c.deadline.Load() - now()))
		return
	}
	c.timer.Reset(time.Duration(c.nextWake() - now()))
	// No longer as the fast path armed it. After the reset, and not 0: an
	// arm in progress on the server goroutine (Extend or Disarm from a
	// goroutine an earlier request left holding the RequestCtx, see Extend)
	// must not note the timer armed for the deadline it read when this
	// reset came after its own.
	c.timerAt.Store(-1)
}

// rearmRunning arms the timer of a racing call that has not been decided
// for its next wake (see worker.await). A move of its deadline (Extend,
// Disarm) has the last word: rearm again if one came meanwhile, and leave
// one in progress to arm the timer itself.
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

// startWatch starts watching the client of a call that has run
// HangupDelay at t, if its watch is still pending. It may run for an
// earlier call (a racing call's timer may be an earlier call's): the
// compare-and-swap on watch, which carries the generation, settles that.
//
// A racing call's deadline then goes to a second timer, c.later, rather
// than back to c.timer: moving a runtime timer earlier than where it stands
// makes the runtime sort its whole heap again, and c.timer, stopped at a
// long deadline by the previous call, would be moved to HangupDelay by the
// next. So each timer of a worker only moves later from call to call.
//
// It reports whether it started the watch.
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

// watchForUpstream has the client of a cooperative request watched when
// its handler calls Do without having asked for its context: only a
// context's request is watched in cooperative mode (see call.context),
// and Do stops calling upstreams for a client that is gone only if a watch
// sees it go. It makes the context Context would make, once per request;
// a racing call's timer starts its watch itself.
func (c *call) watchForUpstream() {
	for o := c; o != nil; o = o.outer {
		if o.watch.Load()&watchMask == watchPending { // o is the call that watches
			// Not for a timeout too short to be watched (see beginWatch),
			// unless the handler moved its deadline past the watch's start.
			if o.inline() && o.bridge.Load() == nil && o.watchAt.Load() < o.deadline.Load() {
				c.context()
			}
			return
		}
	}
}

// unwatchClient ends the watch of a call's client, on the server goroutine
// once the call is decided. A request over before HangupDelay pays one
// compare-and-swap.
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
// progress: a registration takes a map look-up, or one system call for a
// connection's first, so waiting is short.
func (c *call) settledWatch() uint64 {
	s := c.watch.Load()
	for s&watchMask == watchRegistering {
		runtime.Gosched()
		s = c.watch.Load()
	}
	return s
}

// testHookUnwatch, set only by tests, runs in unwatchClient between its
// first look at the watch and its compare-and-swap, where the call's timer
// may start the watch.
var testHookUnwatch atomic.Pointer[func(*call)]

// hungUp is the hang-up callback (call.onGone) of a worker's calls: the
// call's context is cancelled with cause ErrClientGone, and its handler is
// late from now on, as after a timeout, but the request is not counted as a
// timeout. Past the deadline, though, the request has timed out, even if
// its timer has not run yet (a loaded or stalled process): late is late.
// It runs on the watcher's goroutine, never after unwatchClient has removed
// the registration, so the call is the one that was registered. A
// cooperative call's onGone only settles it: its handler runs on the server
// goroutine, which finds the call settled when it returns.
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
// fasthttp gives the connection a new RequestCtx, so the late handler keeps
// its own.
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
// client hung up while it waited for a slot, as one whose client hangs up
// while its handler runs, without running the handler. outer is the call
// of an enclosing New, if any.
func (m *middleware) answerLeft(ctx *fasthttp.RequestCtx, outer *call, start int64) {
	m.stats.clientGone.Add(1)
	writeGoneResponse(&ctx.Response)
	if outer == nil && ctx.UserValue(outsideKey{}) == nil {
		// Context, in OnHangup and around New, is done as after a hang-up
		// while the handler runs (inside New, it is the outer call's).
		b := newRequestContext(ctx, noDeadline)
		b.cancel(context.Canceled, &goneCause)
		setFirstUserValue(ctx, outsideKey{}, (*outsideEnd)(b))
	}
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
