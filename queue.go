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
	// was over. Written under limiter.mu before ready is sent, read once
	// ready is received.
	evicted bool
}

var waiterPool = sync.Pool{New: func() any {
	w := &waiter{ready: make(chan bool, 1), timer: time.NewTimer(time.Hour)}
	w.timer.Stop()
	return w
}}

// stopTimer stops w's timer and empties its channel. With Go's timers
// before 1.23 (GODEBUG=asynctimerchan=1) a tick that came while the slot was
// handed over stays in the channel, and the next request to take w from the
// pool would find its wait over at once and be refused.
func (w *waiter) stopTimer() {
	if !w.timer.Stop() {
		select {
		case <-w.timer.C:
		default:
		}
	}
}

// wait is acquire's slow path, for request ctx that could not take a slot
// at once at t (none free, or others waiting): unless a slot is free by the
// time it holds the queue's lock, it queues the request for at most its
// share of the time left until deadline, or until giveUp if sooner, and
// returns as acquire does. A request that cannot wait minWait by the clock
// as it holds the queue's lock is not queued (nor counted in Stats.Queued):
// it is refused, or, if giveUp is that close, answered as acquire does at
// giveUp.
func (l *limiter) wait(ctx *fasthttp.RequestCtx, t, deadline, giveUp int64) (waited time.Duration, reason string) {
	if l.adaptive {
		// No window closed for long: late handlers may hold every slot.
		// By the clock, not t: after a stall since the arrival (a slow
		// TimeoutFunc), a window that fell due meanwhile stayed open, and
		// the request queued behind the late handlers where closing it
		// keeps room beside them; and one closed at t started the next
		// window (a probe, the once-per-latency count) before handlers
		// admitted during the stall.
		if clock := max(t, now()); clock-l.windowStart.Load() >= int64(maxWindow) {
			l.adapt(clock)
		}
	}
	maxWait := time.Duration(deadline-t) / waitShare
	// A probe without load holds the limit at its floor: it gives way to
	// the first request it would refuse (yieldProbe), and a request it held
	// back that gave up its place at the same time must not be refused for
	// coming second.
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
	// The queue goes by the clock as its lock is held, as dispatchLocked
	// does (the later of the two readings): t was read on arrival, and
	// after a stall since (a wait for the lock, a slow TimeoutFunc) a
	// request whose wait had run out would be queued, only to be refused
	// as it was, a full queue that had stayed busy for lifoAfter would
	// refuse the newcomer rather than evict its oldest waiter, and a queue
	// the newcomer starts would count as busy from before it came.
	clock := max(t, now())
	if giveUp-clock < int64(minWait) {
		// Its caller gives up before it could wait: it would leave the
		// queue at once with the timeout response, counted as queued.
		// First, as admit answers a request past MaxQueueAge before it
		// asks the limit, and as a wait ends at giveUp.
		l.waiting.Add(-1)
		l.mu.Unlock()
		l.refused.Add(1) // an arrival turned away, for the backlog; not a 503
		return 0, spentBudget
	}
	if t+int64(maxWait)-clock < int64(minWait) {
		l.waiting.Add(-1)
		l.mu.Unlock()
		return 0, l.refuse(RejectedQueueFull)
	}
	// Twice the ceiling, which saturates: math.MaxInt, "no ceiling", would
	// overflow to a negative and leave minQueue.
	if l.queued >= max(2*int(min(l.ceiling, math.MaxInt/2)), minQueue) {
		if !l.lifo(clock) {
			l.waiting.Add(-1)
			l.mu.Unlock()
			return 0, l.refuse(RejectedQueueFull)
		}
		// Newest first: the oldest waiter gives way to the newcomer. One
		// whose wait is over by the clock is refused as its timer, due as
		// well, would have it refused (queue_timeout, or the timeout
		// response at giveUp): the eviction only came first.
		oldest := l.head
		l.remove(oldest)
		oldest.evicted = clock < oldest.until
		oldest.ready <- false
	}
	w := waiterPool.Get().(*waiter)
	// Not past its caller's patience: beyond it the request would only get
	// the timeout response, and hold its place in the queue until then.
	waitFor := min(maxWait, time.Duration(giveUp-t))
	w.until = t + int64(waitFor)
	l.push(w, clock)
	l.stats.queued.Add(1)
	l.queuedInWin.Store(true)
	l.dispatchLocked(clock)
	l.mu.Unlock()

	if hook := testHookQueued.Load(); hook != nil {
		(*hook)(l, w.ready, deadline)
	}
	// The wait ends at until by the clock, as dispatchLocked has it: set
	// for waitFor from now, the timer would count from after a stall since
	// the clock was read (the goroutine descheduled as it released the
	// lock, a stopped process), and answer that much late a request that
	// dispatch already refuses. Due already, it fires at once. The later
	// of the two readings, as in dispatchLocked.
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
		// running late since (past its share, or past giveUp) does not
		// make that a timeout.
		return waited, l.refuse(RejectedQueueFull)
	case t+int64(waited) >= giveUp && !closed(shutdown):
		l.refused.Add(1) // an arrival turned away, for the backlog; not a 503
		return waited, spentBudget
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

// testHookQueueTimedOut, set only by tests, runs in wait once a request has
// left the queue at the end of its wait, before it looks for a probe that
// would give way to it.
var testHookQueueTimedOut atomic.Pointer[func(*limiter)]

// testHookDispatching, set only by tests, runs in dispatchLocked, with l.mu
// held, before the slots are handed over.
var testHookDispatching atomic.Pointer[func(*limiter)]

// testHookQueued, set only by tests, runs in wait once a request with the
// given deadline is queued, before its wait is timed; ready is where its
// slot is handed over.
var testHookQueued atomic.Pointer[func(l *limiter, ready chan bool, deadline int64)]

// testHookWaitArmed, set only by tests, runs in wait as a queued request's
// timer is set: until is when its wait ends, and d the duration the timer
// is set for.
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

// dispatchLocked hands free slots to waiters. A waiter whose wait has run
// out gets none: it leaves the queue refused, as its timer, due as well,
// would have it leave (after a stall, or on a starved process, both are due
// at once, and which goroutine runs first must not decide). That goes by
// the clock as the queue's lock is held: t, the caller's reading, was
// taken before, and a stall in between (or the wait for the lock) would
// hand a slot to a waiter whose wait is over; the later of the two counts
// (the tests' fake clocks run ahead of the real one). l.mu is held.
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
		if t >= w.until {
			l.remove(w)
			w.ready <- false
			continue
		}
		if !l.tryAcquire() {
			return
		}
		l.remove(w)
		w.ready <- true
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
