package fasttimeout

import (
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"
)

// waiter is a request waiting for a slot. Waiters are pooled with their
// channel and timer, so a request that waits allocates nothing.
type waiter struct {
	prev, next *waiter
	ready      chan bool // cap 1: true, a slot was handed over; false, evicted
	timer      *time.Timer
	until      int64 // when its wait runs out: its share of the budget spent
	inQueue    bool  // guarded by limiter.mu
	// evicted: it gave way to a newcomer in a full queue before its wait
	// was over. Written under limiter.mu before ready is sent, read after.
	evicted bool
}

var waiterPool = sync.Pool{New: func() any {
	w := &waiter{ready: make(chan bool, 1), timer: time.NewTimer(time.Hour)}
	w.timer.Stop()
	return w
}}

// stopTimer stops w's timer and empties its channel: with pre-1.23 timers
// (GODEBUG=asynctimerchan=1) a tick that came as the slot was handed over
// stays there, and the next request to take w from the pool is refused.
func (w *waiter) stopTimer() {
	if !w.timer.Stop() {
		select {
		case <-w.timer.C:
		default:
		}
	}
}

// wait is acquire's slow path, for request ctx that found no free slot at
// t, or others waiting: unless one is free once it holds the queue's lock,
// it queues the request for at most its share of the time left to deadline,
// or until giveUp if sooner, and returns as acquire does. One that cannot
// wait minWait by then is not queued (nor counted in Stats.Queued): it is
// refused, or, if giveUp is that close, answered as at giveUp.
func (l *limiter) wait(ctx *fasthttp.RequestCtx, t, deadline, giveUp int64) (waited time.Duration, reason string) {
	if l.adaptive {
		// No window closed for long: late handlers may hold every slot. By
		// the clock (see dispatchLocked): a window due during a stall
		// closes, keeping room beside them, and the next (a probe, the
		// once-per-latency count) starts after handlers admitted meanwhile.
		if clock := max(t, now()); clock-l.windowFrom() >= int64(maxWindow) {
			l.adapt(clock)
		}
	}
	maxWait := time.Duration(deadline-t) / waitShare
	// A probe without load gives way to the first request it would refuse
	// (yieldProbe); one it held back that gave up at the same time must not
	// be refused for coming second.
	heldByProbe := l.probeYields.Load()
	l.mu.Lock()
	// Counted before the slot is looked at again: a handler returning now
	// either frees the slot before that look, or sees the waiter and
	// dispatches (release).
	l.waiting.Add(1)
	if l.head == nil && l.tryAcquire() {
		l.waiting.Add(-1)
		l.mu.Unlock()
		return 0, ""
	}
	// By the clock, as dispatchLocked: with t, a request whose wait had run
	// out would be queued only to be refused, a full queue busy for
	// lifoAfter would refuse the newcomer rather than evict its oldest, and
	// a queue it starts would count as busy from before it came.
	clock := max(t, now())
	if giveUp-clock < int64(minWait) {
		// Its caller gives up before it could wait: the timeout response,
		// not queued for nothing. Before the share, as admit answers past
		// MaxQueueAge before it asks the limit, and a wait ends at giveUp.
		l.waiting.Add(-1)
		l.mu.Unlock()
		return 0, l.refuse(spentBudget)
	}
	// Twice the ceiling, which saturates: math.MaxInt, "no ceiling", would
	// overflow to a negative and leave minQueue.
	capacity := max(2*int(min(l.ceiling, math.MaxInt/2)), minQueue)
	full := l.queued >= capacity
	if full && !l.lifo(clock) {
		// Oldest first, as dispatch serves them: those whose wait is over
		// by the clock leave refused, as their timers, due, would have it.
		// Whether their goroutines ran first must not refuse the newcomer.
		l.dispatchLocked(clock)
		if full = l.queued >= capacity; full {
			// Dispatch stops at the oldest that still has time: those
			// behind it with shorter budgets (TimeoutFunc, deadline
			// headers) may be over too.
			l.refuseOverLocked(clock)
			full = l.queued >= capacity
		}
	}
	// Refused if it cannot wait minWait of its share, or if the queue is
	// full and not serving the newest first (lifo), which has the oldest
	// give way.
	if t+int64(maxWait)-clock < int64(minWait) || full && !l.lifo(clock) {
		l.waiting.Add(-1)
		l.mu.Unlock()
		return 0, l.refuse(RejectedQueueFull)
	}
	if full {
		// Newest first: the oldest waiter gives way, evicted unless its wait
		// is over by the clock: then it is refused as its timer, due as
		// well, would have it (the eviction only came first).
		oldest := l.head
		l.remove(oldest)
		oldest.evicted = clock < oldest.until
		oldest.ready <- false
	}
	w := waiterPool.Get().(*waiter)
	// Not past its caller's patience: beyond it the request would only get
	// the timeout response, and hold its place in the queue until then.
	w.until = t + int64(min(maxWait, time.Duration(giveUp-t)))
	l.push(w, clock)
	l.stats.queued.Add(1)
	l.queuedInWin.Store(true)
	l.dispatchLocked(clock)
	l.mu.Unlock()

	if hook := testHookQueued.Load(); hook != nil {
		(*hook)(l, w.ready, deadline)
	}
	// Until by the clock, as dispatchLocked: set for until-t, the timer
	// would answer late by a stall since the clock was read (descheduled at
	// the unlock, a stopped process) a request dispatch already refuses.
	armFor := time.Duration(w.until - max(t, now()))
	if hook := testHookWaitArmed.Load(); hook != nil {
		(*hook)(l, w.until, armFor)
	}
	w.timer.Reset(armFor)
	var granted bool
	var shutdown <-chan struct{}
	if ctx != nil {
		shutdown = serverDone(ctx) // nil without a server: never ready
	}
	select {
	case granted = <-w.ready:
	case <-shutdown:
		granted = l.leave(w)
	case <-w.timer.C:
		granted = l.leave(w)
	}
	evicted := w.evicted
	w.evicted = false
	w.stopTimer()
	waiterPool.Put(w)
	waited = time.Duration(now() - t)
	l.stats.queueWait.observe(waited)
	switch {
	case granted:
		return waited, ""
	case evicted:
		// Refused for a full queue with time left to wait: its goroutine
		// running late since does not make that a timeout.
		return waited, l.refuse(RejectedQueueFull)
	case t+int64(waited) >= giveUp && !closed(shutdown):
		// Its caller gave up: it gets the timeout response, but a probe
		// without load that held it back gives way as for a refusal, or
		// it would hold back every request until its handlers return.
		l.yieldProbe(t+int64(waited), heldByProbe)
		return waited, l.refuse(spentBudget)
	// Out of the queue as its server shuts down, a request is refused
	// however long it waited: a probe giving way would admit it.
	case waited >= maxWait && !closed(shutdown):
		if hook := testHookQueueTimedOut.Load(); hook != nil {
			(*hook)(l)
		}
		if l.yieldProbe(t+int64(waited), heldByProbe) && l.tryAcquire() {
			return waited, ""
		}
		return waited, l.refuse(RejectedQueueTimeout)
	default:
		return waited, l.refuse(RejectedQueueFull)
	}
}

// closed reports whether ch, nil or a channel only ever closed, is closed.
func closed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// testHookQueueTimedOut, set only by tests, runs in wait once a request's
// wait has run out, before yieldProbe.
var testHookQueueTimedOut atomic.Pointer[func(*limiter)]

// testHookDispatching, set only by tests, runs in dispatchLocked, with l.mu
// held, before the slots are handed over.
var testHookDispatching atomic.Pointer[func(*limiter)]

// testHookQueued, set only by tests, runs in wait once a request with the
// given deadline is queued, before its wait is timed; ready is where its
// slot is handed over.
var testHookQueued atomic.Pointer[func(l *limiter, ready chan bool, deadline int64)]

// testHookWaitArmed, set only by tests, runs in wait as a queued request's
// timer is set for d, to end its wait at until.
var testHookWaitArmed atomic.Pointer[func(l *limiter, until int64, d time.Duration)]

// leave takes waiter w out of the queue, unless it was handed a slot or
// evicted meanwhile; it reports whether it was handed a slot.
func (l *limiter) leave(w *waiter) (granted bool) {
	l.mu.Lock()
	if w.inQueue {
		l.remove(w)
		l.mu.Unlock()
		return false
	}
	l.mu.Unlock()
	return <-w.ready // handed a slot or evicted as it gave up
}

// dispatchLocked hands free slots to waiters; l.mu is held. A waiter whose
// wait has run out gets none: it leaves refused, as its timer, due as well,
// would have it (after a stall, or on a starved process, both are due, and
// which goroutine runs first must not decide). The queue goes by the clock
// under its lock, or t if later (tests' fake clocks run ahead): t, the
// caller's reading, is stale after a stall (a slow TimeoutFunc, the lock's
// wait) and would hand a slot to a waiter whose wait is over.
func (l *limiter) dispatchLocked(t int64) {
	if hook := testHookDispatching.Load(); hook != nil {
		(*hook)(l)
	}
	t = max(t, now())
	for l.head != nil {
		w := l.head
		if l.lifo(t) {
			w = l.tail
		}
		// One whose wait has run out leaves refused; the others need a slot.
		over := t >= w.until
		if !over && !l.tryAcquire() {
			return
		}
		l.remove(w)
		w.ready <- !over
	}
}

// refuseOverLocked takes every waiter whose wait is over at t out of the
// queue, refused as dispatchLocked refuses one, wherever it stands: a full
// queue scans it whole, only while it is young (not lifo). l.mu is held.
func (l *limiter) refuseOverLocked(t int64) {
	for w := l.head; w != nil; {
		next := w.next
		if t >= w.until {
			l.remove(w)
			w.ready <- false
		}
		w = next
	}
}

// lifo reports whether the queue has stayed non-empty long enough to serve
// the newest waiter first. l.mu is held.
func (l *limiter) lifo(t int64) bool {
	return l.busySince != 0 && t-l.busySince > int64(lifoAfter)
}

// push appends w as the newest waiter. l.mu is held, and l.waiting already
// counts w.
func (l *limiter) push(w *waiter, t int64) {
	w.prev, w.next, w.inQueue = l.tail, nil, true
	if l.tail != nil {
		l.tail.next = w
	} else {
		l.head = w
		l.busySince = t
	}
	l.tail = w
	l.queued++
	l.stats.waiting.Add(1)
}

// remove takes w out of the queue. l.mu is held.
func (l *limiter) remove(w *waiter) {
	if w.prev != nil {
		w.prev.next = w.next
	} else {
		l.head = w.next
	}
	if w.next != nil {
		w.next.prev = w.prev
	} else {
		l.tail = w.prev
	}
	w.prev, w.next, w.inQueue = nil, nil, false
	l.queued--
	if l.queued == 0 {
		l.busySince = 0
	}
	l.waiting.Add(-1)
	l.stats.waiting.Add(-1)
}
