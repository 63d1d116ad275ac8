package fasttimeout

import (
	"math"
	"math/rand/v2"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"
)

// Admission by a concurrency limit (Config.AdaptiveConcurrency and
// Config.MaxConcurrency); docs/overload.md gives the measurements behind
// each choice.
//
// The limit counts handlers that hold a slot, from admission until they
// return, late or not: a late handler that ignores its context still burns
// CPU. Below the limit a slot costs one compare-and-swap. Beyond it a
// request waits at most a tenth of its remaining budget; a freed slot goes
// to the oldest waiter, or to the newest once the queue has stayed
// non-empty for lifoAfter (adaptive LIFO, as in Facebook's "Fail at
// Scale"): the oldest waiters' callers are the likeliest to have given up.
//
// The adaptive limit follows Netflix's Gradient2, with what a timeout
// middleware knows besides. Each window (see windowDone) it compares the
// median latency of handlers that returned in time with the unloaded
// latency, minRTT:
//
//   - The gradient target/median, between 0.5 and 1 (the target is 1.5
//     minRTT, or minRTT plus latencySlack if greater), scales the limit,
//     and √limit is added while the limit binds (handlers running reached
//     half of it, or requests queued): a limit an idle server never
//     reaches says nothing.
//   - With latency on target and requests queued, the limit doubles (a slow
//     start, as TCP's), at most once per latency and not past ssthresh, the
//     last limit that latency over the target brought it back to: handlers
//     slower than a window would otherwise double it again and again.
//   - A window lowers the limit only by the latency of handlers admitted
//     since it last fell (with none, it holds), as TCP lowers its window at
//     most once a round trip: the latency of the others is what the last
//     fall answered. After a stall, the handlers it caught return at once,
//     more than a window holds, and each window of them lowered it again.
//   - Timeouts are drops, as in Netflix's limits, but only in a window with
//     no return in time: then the latency is out of sight, and the limit
//     halves. As with latency, only timeouts of handlers admitted since the
//     limit last fell count (with none, it holds): a handler times out a
//     whole timeout after its admission, and during an outage each window
//     of timeouts of handlers admitted before the last fall halved it
//     again, to its floor within a second or two. Hang-ups are neither:
//     the client's patience says nothing about the server.
//   - Late handlers hold slots but give no samples, and the limit never
//     falls below limitFloor slots beyond those they hold (lateFloor): at
//     or under their number nothing would be admitted, so nothing would
//     return or time out, and the limit would never move again. Handlers
//     that moved their deadline with Disarm or Extend (a long poll, an
//     event stream) count with them: they hold their slots for as long as
//     they chose, and their latency is that choice, not congestion.
//   - minRTT is measured by a probe, as Envoy's adaptive concurrency does:
//     the limit sits at its floor for one window at start and every
//     probeEvery under sustained load (samples admitted before the probe
//     are left out, and every return in it is a sample); between probes
//     it only falls. A median over the target while the limit does not
//     bind calls a probe early: taking that median for the unloaded
//     latency let a downstream-bound server raise its target with its own
//     queueing, window after window.
type limiter struct {
	// slots is written by every request; the fields read on the fast
	// path, written rarely, are kept off its cache line, as are the
	// window's, so that cores do not take the line from each other more
	// than they must. It packs two counters, so that taking a slot is one
	// atomic operation: the handlers holding a slot (the low 32 bits, see
	// holding) and the slots taken so far (the high 32 bits, wrapping),
	// with which the backlog's refusals count arrivals (backlog.go).
	slots   atomic.Int64
	_       [56]byte
	limit   atomic.Int64
	waiting atomic.Int64  // requests in the queue; read on the fast path
	every   atomic.Uint32 // a returning handler is a sample with probability 1/(every+1)
	// rng, if set, draws the samples and the backlog's refusals (see
	// random): tests on a fake clock seed it, so that they give the same
	// figures on every run. Set before the limiter is used, and then only
	// by tests whose limiter one goroutine drives: a rand.Rand is not safe
	// for concurrent use.
	rng *rand.Rand

	stats    *Stats
	share    *limitShare // what the limit adds to stats, withdrawn once the limiter is unreachable
	adaptive bool
	floor    int64
	ceiling  int64
	late     *atomic.Int64 // the middleware's late handlers, which hold slots
	moved    atomic.Int64  // handlers holding a slot whose deadline Disarm or Extend moved, and not late (see call.countMoved)

	mu        sync.Mutex
	head      *waiter // oldest
	tail      *waiter // newest
	queued    int
	busySince int64 // when the queue last became non-empty; 0 while empty

	// The current window, closed by adapt.
	_           [64]byte
	samples     [windowSamples]atomic.Int64 // in-time latencies, nanoseconds; 0: not written yet (see adapt)
	admittedAt  [windowSamples]atomic.Int64 // when each sample's handler was admitted
	count       atomic.Int64                // samples taken; may exceed windowSamples
	drops       atomic.Int64                // timeouts
	freshDrops  atomic.Int64                // timeouts of handlers admitted at or after loweredAt
	peak        atomic.Int64                // most handlers running at once
	queuedInWin atomic.Bool                 // a request waited
	windowStart atomic.Int64
	adapting    sync.Mutex // held by the goroutine closing a window
	minRTT      int64      // guarded by adapting
	// ssthresh is the limit that latency over the target, or timeouts,
	// last brought the limit back to: the slow start stops there. 0: none
	// yet. Guarded by adapting.
	ssthresh int64
	// doubledAt is when the slow start last doubled the limit. Guarded by
	// adapting.
	doubledAt int64
	// loweredAt is when a window last lowered the limit: only handlers
	// admitted since may lower it again (see byLatency and drop). Written
	// with adapting held.
	loweredAt atomic.Int64

	// A probe holds the limit at its floor for a window to measure the
	// unloaded latency (see adapt).
	probeFrom   atomic.Int64 // when the current probe began; 0: none
	probeYields atomic.Bool  // the probe began without load, and ends for a request it would refuse (see yieldProbe)
	restore     int64        // the limit after the probe; guarded by adapting
	nextProbe   int64        // guarded by adapting
	probedAt    int64        // when the last probe ended; guarded by adapting
	// restoreEvery is the sampling rate after the probe, which samples
	// every return (see adapt). Guarded by adapting.
	restoreEvery uint32
	// probeOwed: a probe gave way (yieldProbe), and the next window in
	// which requests queue probes again, this time under load: a server
	// started straight into overload would otherwise take its loaded
	// latency for the unloaded one until the next regular probe. Guarded
	// by adapting.
	probeOwed bool

	// Refusals for the backlog in front of the middleware (backlog.go).
	shed       atomic.Uint32 // probability of refusing a request at once, in 1/2³² units
	shedAt     atomic.Int64  // when shed was last moved
	shedMu     sync.Mutex    // held by the goroutine moving shed (updateShed)
	shedTarget int64         // the run queue's wait above which shed rises (backlogTarget)
	// The counts behind the capacity estimate: the requests refused, and
	// the handlers that returned in time (the samples, weighted by the
	// sampling rate).
	refused atomic.Int64
	served  atomic.Int64
	// Guarded by shedMu: the capacity in answers in time per nanosecond,
	// the arrivals per nanosecond, and the counts at the last update.
	capacity     float64
	arrivalRate  float64
	lastArrivals int64
	lastServed   int64
}

const (
	// initialLimit is where an adaptive limit starts, below its ceiling.
	initialLimit = 20
	// limitFloor is the least an adaptive limit falls to, so that it can
	// still measure latency and grow again.
	limitFloor = 4
	// minWindow, minWindowSamples and windowSamples bound an adaptive
	// window: long enough for a median, short enough to follow a surge.
	minWindow        = 50 * time.Millisecond
	minWindowSamples = 8
	windowSamples    = 64
	// maxSampleEvery bounds the sampling: one return in 64 at most.
	maxSampleEvery = 63
	// maxWindow closes a window with fewer samples, or only timeouts.
	maxWindow = 4 * minWindow
	// probeEvery is how often, under sustained load, the limit drops to its
	// floor for a window to measure the unloaded latency again (plus up to
	// a quarter more, so that servers started together do not probe
	// together).
	probeEvery = 30 * time.Second
	// earlyProbeEvery bounds the probes called by latency that rose while
	// the limit did not bind.
	earlyProbeEvery = 5 * time.Second
	// waitShare: a request waits for a slot for at most 1/waitShare of its
	// remaining budget, leaving the rest to its handler.
	waitShare = 10
	// minWait: a request whose share is shorter is refused at once, and
	// one whose caller gives up sooner (MaxQueueAge) gets the timeout
	// response at once.
	minWait = 100 * time.Microsecond
	// lifoAfter is how long the queue must have stayed non-empty for the
	// newest waiter to be served first.
	lifoAfter = 10 * time.Millisecond
	// latencySlack is the least latency above the unloaded one that the
	// adaptive limit tolerates: for handlers of microseconds, scheduling
	// noise doubles the latency without any congestion worth a refusal.
	latencySlack = time.Millisecond
	// minQueue is the least number of waiters the queue holds; otherwise
	// twice the ceiling of the limit. Waiters cost little (their
	// connection's goroutine exists anyway), and their wait is bounded by
	// their budget, so a burst waits rather than being refused.
	minQueue = 32
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

// newLimiter returns a limiter of max slots (with adaptive, the ceiling of
// its limit) for a middleware with timeout, counting in stats; late counts
// the middleware's handlers running late.
func newLimiter(max int64, adaptive bool, timeout time.Duration, stats *Stats, late *atomic.Int64) *limiter {
	// No more handlers than slots can count (32 bits) ever hold a slot, so
	// a greater limit says no more; and Stats sums the limits of the
	// middlewares sharing it, which two of math.MaxInt overflowed.
	max = min(max, maxLimit)
	l := &limiter{stats: stats, adaptive: adaptive, floor: max, ceiling: max, late: late, shedTarget: backlogTarget(timeout)}
	if adaptive {
		l.floor = min(limitFloor, max)
	}
	limit := max
	if adaptive {
		// Start with a probe: the unloaded latency measured under
		// load would be the loaded one.
		limit = l.floor
		l.restore = min(initialLimit, max)
		l.probeFrom.Store(1)
		l.probeYields.Store(true)
	}
	l.limit.Store(limit)
	l.share = &limitShare{stats: stats}
	l.share.add(limit)
	// Once nothing can reach the limiter (its middleware's handler dropped,
	// say on a configuration reload, its requests over and its workers
	// retired), its limit no longer counts in Stats; the handler built
	// again in its place counts its own. The cleanup's argument, the share,
	// points to neither the limiter nor its middleware (which late points
	// into): either would keep the limiter reachable, and the cleanup
	// would never run.
	runtime.AddCleanup(l, (*limitShare).withdraw, l.share)
	return l
}

// limitShare is what a limiter's limit adds to Stats.limit, kept apart
// from the limiter so that the cleanup that withdraws it once the limiter
// is unreachable does not keep the limiter alive (see newLimiter).
type limitShare struct {
	stats *Stats
	added atomic.Int64
}

// add adds d to the limit counted in Stats, as the limiter's.
func (s *limitShare) add(d int64) {
	s.added.Add(d)
	s.stats.limit.Add(d)
}

// withdraw takes out of Stats what the limiter's limit added, once the
// limiter is unreachable: then no setLimit runs or ever will.
func (s *limitShare) withdraw() {
	s.stats.limit.Add(-s.added.Load())
}

// maxLimit is the greatest limit: the handlers holding a slot are counted
// in 32 bits.
const maxLimit = math.MaxUint32

// A slot taken adds oneSlot to limiter.slots, and one given back subtracts
// one: the handlers holding a slot never go below zero, so nothing borrows
// from the count of slots taken.
const oneSlot = 1<<32 + 1

// holding returns the number of handlers holding a slot.
func (l *limiter) holding() int64 { return int64(uint32(l.slots.Load())) }

// taken returns the number of slots taken so far, modulo 2³².
func (l *limiter) taken() uint32 { return uint32(l.slots.Load() >> 32) }

// tryAcquire takes a slot if one is free.
func (l *limiter) tryAcquire() bool {
	for {
		s := l.slots.Load()
		r := int64(uint32(s))
		if r >= l.limit.Load() {
			return false
		}
		if l.slots.CompareAndSwap(s, s+oneSlot) {
			if l.adaptive && r+1 > l.peak.Load() {
				l.peak.Store(r + 1) // a lost update only understates one window's peak
			}
			return true
		}
	}
}

// acquire takes a slot for request ctx, whose deadline is deadline, at t,
// waiting for one if needed, but not past giveUp, when its caller gives up
// (Config.MaxQueueAge; noDeadline without it). It returns how long the
// request waited, and the reason it was refused, or "" once it holds a
// slot, or spentBudget, for the timeout response, if it stopped waiting at
// giveUp or giveUp left it no time to wait (less than minWait). A request
// still waiting when its server shuts down is refused then: its handler
// would only start to be cancelled, and the shutdown waits for its answer.
func (l *limiter) acquire(ctx *fasthttp.RequestCtx, t, deadline, giveUp int64) (waited time.Duration, reason string) {
	if l.adaptive {
		if t-l.shedAt.Load() >= int64(backlogInterval) {
			l.updateShed(t)
		}
		if p := l.shed.Load(); p != 0 && l.random() < p {
			return 0, l.refuse(RejectedQueueFull) // the run queue is backed up
		}
	}
	// Waiters come first: a newcomer takes a free slot only when nobody
	// waits for one.
	if l.waiting.Load() == 0 && l.tryAcquire() {
		return 0, ""
	}
	return l.wait(ctx, t, deadline, giveUp)
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

// testHookProbeEnding, set only by tests, runs in endProbe once the probe
// no longer gives way, before the limit is restored.
var testHookProbeEnding atomic.Pointer[func(*limiter)]

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

// refuse counts a refusal for reason, for the backlog's arrivals and in
// Stats, and returns reason.
func (l *limiter) refuse(reason string) string {
	l.refused.Add(1)
	if reason == RejectedQueueTimeout {
		l.stats.rejectedTimeout.Add(1)
	} else {
		l.stats.rejectedFull.Add(1)
	}
	return reason
}

// release gives back the slot of a handler that returned at t. rtt is its
// latency from admission, a sample if the handler returned in time.
func (l *limiter) release(t int64, rtt time.Duration, inTime bool) {
	l.slots.Add(-1)
	if l.waiting.Load() > 0 {
		l.mu.Lock()
		l.dispatchLocked(t)
		l.mu.Unlock()
	}
	if l.adaptive && inTime {
		// At high rates a share of the returns is enough for a median,
		// and fewer writes to the window's counters keep cores apart.
		every := l.every.Load()
		var sampled bool
		switch {
		case every == 0:
			sampled = true
		case l.rng == nil:
			// random, written out: as a call (too big to inline) it
			// cost the fast path a nanosecond in BenchmarkAdmission.
			sampled = rand.Uint32()&every == 0
		default:
			sampled = l.rng.Uint32()&every == 0
		}
		if sampled {
			l.served.Add(int64(every) + 1)
			l.sample(t, rtt)
		}
	}
}

// random returns a random uint32 from l.rng, or without it from the
// process's generator, which takes no lock and allocates nothing.
func (l *limiter) random() uint32 {
	if l.rng != nil {
		return l.rng.Uint32()
	}
	return rand.Uint32()
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

// sample records the latency of a handler that returned in time.
func (l *limiter) sample(t int64, rtt time.Duration) {
	if p := l.probeFrom.Load(); p != 0 && t-int64(rtt) < p {
		return // admitted before the probe: its latency is the load's
	}
	i := l.count.Add(1) - 1
	if i == 0 && l.drops.Load() == 0 {
		l.windowStart.Store(t) // the window starts with its first event, not after an idle spell
	}
	if i < windowSamples {
		l.admittedAt[i].Store(t - int64(rtt))
		l.samples[i].Store(int64(max(rtt, 1)))
	}
	if l.windowDone(i+1, t) {
		l.adapt(t)
	}
}

// drop records a timeout at t of a handler admitted at admitted. Only the
// timeouts of handlers admitted since the limit last fell count towards
// halving it, as only such handlers' latency lowers it (see byLatency):
// those of handlers admitted before come a timeout after their admission,
// are what the fall answered, and during an outage each window of them
// halved the limit again.
func (l *limiter) drop(t, admitted int64) {
	if admitted >= l.loweredAt.Load() {
		l.freshDrops.Add(1)
	}
	if l.drops.Add(1) == 1 && l.count.Load() == 0 {
		l.windowStart.Store(t)
	}
	if l.windowDone(l.count.Load(), t) {
		l.adapt(t)
	}
}

// windowDone reports whether a window with n samples is complete at t: full,
// or long enough for a median, or so long that what it has must do.
func (l *limiter) windowDone(n, t int64) bool {
	elapsed := time.Duration(t - l.windowStart.Load())
	return n >= windowSamples || n >= minWindowSamples && elapsed >= minWindow || elapsed >= maxWindow
}

// adapt closes the window if it is complete and sets the next limit.
func (l *limiter) adapt(t int64) {
	if !l.adapting.TryLock() {
		return // another goroutine is closing it
	}
	defer l.adapting.Unlock()
	n, drops, freshDrops := l.count.Load(), l.drops.Load(), l.freshDrops.Load()
	if !l.windowDone(n, t) {
		return // closed by another goroutine in the meantime
	}
	if n == 0 && drops == 0 {
		// Nothing returned or timed out for a whole window while
		// requests came: handlers that hang may hold every slot.
		l.windowStart.Store(t)
		l.setLimit(max(l.limit.Load(), l.lateFloor()), t)
		return
	}
	// The k latencies written, rtts, and among them fresh: those of
	// handlers admitted since the limit was last lowered. A return counts
	// itself before it writes its latency: a slot it has not written yet
	// would give a latency of an earlier window, or 0 in the first. So
	// adapt empties every slot it reads, and leaves out the empty ones.
	var rtts, fresh [windowSamples]int64
	lowered := l.loweredAt.Load()
	k, nFresh := 0, 0
	for i := range windowSamples {
		rtt := l.samples[i].Swap(0)
		if rtt == 0 || int64(i) >= n {
			continue
		}
		rtts[k] = rtt
		k++
		if l.admittedAt[i].Load() >= lowered {
			fresh[nFresh] = rtt
			nFresh++
		}
	}
	// Sample less when a window fills before minWindow, more when it
	// takes longer: about one full window per minWindow. A probe samples
	// every return, and its windows say nothing of the load's rate.
	probing := l.probeFrom.Load() != 0
	every := l.every.Load()
	start := l.windowStart.Load()
	switch elapsed := time.Duration(t - start); {
	case probing:
	case n >= windowSamples && elapsed < minWindow/2:
		l.every.Store(min(every<<1|1, maxSampleEvery))
	case elapsed > minWindow:
		l.every.Store(every >> 1)
	}
	l.count.Store(0)
	l.drops.Store(0)
	l.freshDrops.Store(0)
	l.windowStart.Store(t)
	peak := l.peak.Swap(l.holding())
	queued := l.queuedInWin.Swap(false)

	if probing {
		if k > 0 {
			// The lower quartile (medianOf sorts the samples): the first
			// samples of a probe may still have waited behind the load
			// before it.
			medianOf(rtts[:k])
			l.minRTT = rtts[k/4]
			l.endProbe(t, l.restore)
		} else {
			l.setLimit(max(l.limit.Load(), l.lateFloor()), t) // probe beside the late handlers
		}
		return
	}
	limit := l.limit.Load()
	binding := 2*peak >= limit || queued
	probe := binding && t >= l.nextProbe || l.probeOwed && queued
	next := float64(limit)
	switch {
	case k > 0:
		var early bool
		next, early = l.byLatency(limit, rtts[:k], fresh[:nFresh], start, t, binding, queued)
		probe = probe || early
	case n > 0:
		// Handlers returned in time, but none has written its latency
		// yet: nothing to go by.
	case freshDrops > 0:
		// Requests time out and none returns in time: the latency that
		// would steer the limit is out of sight, so back off. Only for
		// handlers admitted since the limit last fell: the others'
		// timeouts are what that fall answered (see drop).
		next /= 2
	}
	nextLimit := min(max(int64(next), l.lateFloor()), l.ceiling)
	if nextLimit < limit {
		l.ssthresh = nextLimit
		l.loweredAt.Store(t)
	}
	if probe {
		// Under sustained load the unloaded latency is never seen:
		// measure it again at the floor, then come back.
		l.restore = nextLimit
		l.probeFrom.Store(t)
		// Every return a sample: at the floor few handlers return, and
		// at the load's rate (as few as one in 64) the probe would wait
		// for its samples latency after latency, refusing most requests
		// meanwhile.
		l.restoreEvery = l.every.Swap(0)
		l.probeYields.Store(!binding) // called early, without load
		l.probeOwed = false
		nextLimit = l.lateFloor()
	}
	l.setLimit(nextLimit, t)
}

// byLatency returns the next limit after limit, unbounded yet, for a window
// that began at start and closes at t with the latencies rtts, fresh those
// of handlers admitted since the limit was last lowered (both reordered):
// the gradient of the target over their median, the slow start, or √limit
// while the limit binds (see limiter). It also reports whether the latency
// calls a probe early. binding and queued are as adapt found them.
// l.adapting is held.
func (l *limiter) byLatency(limit int64, rtts, fresh []int64, start, t int64, binding, queued bool) (next float64, probe bool) {
	median := medianOf(rtts)
	if l.minRTT == 0 || median < l.minRTT {
		l.minRTT = median
	}
	target := max(l.minRTT+l.minRTT/2, l.minRTT+int64(latencySlack))
	if !binding && median > target && t-l.probedAt >= int64(earlyProbeEvery) {
		probe = true // slower, or loaded below the limit: measure again
	}
	gradient := min(max(float64(target)/float64(median), 0.5), 1)
	if gradient < 1 && len(fresh) < len(rtts) {
		// Handlers admitted before the limit was last lowered: it answered
		// their latency already. After a stall those it caught return at
		// once, more than a window holds, and lowered it again and again.
		// Only the others may lower it, as TCP lowers its window at most
		// once a round trip; with none, it holds.
		if len(fresh) == 0 {
			return float64(limit), probe
		}
		gradient = min(max(float64(target)/float64(medianOf(fresh)), 0.5), 1)
	}
	next = float64(limit) * gradient
	switch {
	case gradient == 1 && queued && (l.ssthresh == 0 || limit < l.ssthresh) && start-l.doubledAt >= median:
		// Latency is fine and requests wait: a burst, or a limit that
		// starts cold. Double, as TCP's slow start does, rather than
		// refuse most of the burst while the limit creeps up by its
		// square root, but not past ssthresh, and once per latency, as
		// TCP's once per round trip: a window that began sooner after the
		// last doubling holds the latency from before it.
		next *= 2
		if l.ssthresh != 0 {
			next = min(next, float64(l.ssthresh))
		}
		l.doubledAt = t
	case binding:
		next += math.Sqrt(float64(limit))
	}
	return next, probe
}

// yieldProbe ends a probe that began without load (at start, or called
// early while the limit did not bind) for a request it would otherwise
// refuse, and reports whether it found one on (which is over now): a probe
// that finds the server loaded after all stops measuring rather than cost
// it requests. A probe under load (see adapt) does not yield: the server
// refuses requests then anyway. So the first window after a yield in which
// requests queue probes again (probeOwed), under load.
//
// held: the request queued behind such a probe, and is let through as well
// (it reports true) once the probe is over, whoever ended it; it waits for
// an end under way (the adapting lock), which has stopped the probe giving
// way before it lifts the floor: looking in between, the request would
// find no slot, and which of two requests was refused would depend on
// goroutine order.
func (l *limiter) yieldProbe(t int64, held bool) bool {
	if !held && !l.probeYields.Load() {
		return false
	}
	l.adapting.Lock()
	defer l.adapting.Unlock()
	if l.probeYields.Load() && l.probeFrom.Load() != 0 {
		l.probeOwed = true
		l.queuedInWin.Store(false) // only what queues from now on
		l.endProbe(t, l.restore)
	}
	l.probeYields.Store(false)
	return true
}

// endProbe ends the current probe at t, the limit going to limit, and
// schedules the next one. l.adapting is held.
func (l *limiter) endProbe(t, limit int64) {
	l.probeFrom.Store(0)
	l.probeYields.Store(false)
	if hook := testHookProbeEnding.Load(); hook != nil {
		(*hook)(l)
	}
	l.every.Store(l.restoreEvery)
	l.probedAt = t
	l.nextProbe = t + int64(probeEvery) + t%int64(probeEvery/4)
	// Not under the handlers that went late (or moved their deadline) during
	// the probe: limit was set before it began.
	l.setLimit(max(limit, l.lateFloor()), t)
}

// lateFloor is the least the adaptive limit falls to: limitFloor slots
// beyond those that late handlers, and handlers that moved their deadline,
// hold, within the ceiling.
func (l *limiter) lateFloor() int64 {
	return min(l.floor+l.late.Load()+l.moved.Load(), l.ceiling)
}

// setLimit moves the limit, and hands the slots it frees to waiters.
func (l *limiter) setLimit(limit, t int64) {
	old := l.limit.Swap(limit)
	l.share.add(limit - old)
	if limit > old && l.waiting.Load() > 0 {
		l.mu.Lock()
		l.dispatchLocked(t)
		l.mu.Unlock()
	}
}

// medianOf returns the median of s, reordering it. s is short: insertion
// sort is enough.
func medianOf(s []int64) int64 {
	for i := 1; i < len(s); i++ {
		for j := i; j > 0 && s[j] < s[j-1]; j-- {
			s[j], s[j-1] = s[j-1], s[j]
		}
	}
	return s[len(s)/2]
}
