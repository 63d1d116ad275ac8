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

// Admission by a concurrency limit (Config.AdaptiveConcurrency,
// Config.MaxConcurrency; docs/overload.md has the measurements). A handler
// holds a slot from admission until it returns, late or not: a late handler
// that ignores its context still burns CPU. Below the limit a slot costs one
// compare-and-swap; beyond it a request waits in the queue (queue.go), where
// a freed slot goes to the oldest waiter, or to the newest once the queue
// has stayed non-empty for lifoAfter (adaptive LIFO, Facebook's "Fail at
// Scale"): the oldest waiters' callers are the likeliest to have given up.
// adaptive.go moves the limit by the handlers' latency.
type limiter struct {
	// slots packs two counters, so that taking a slot is one atomic
	// operation: the handlers holding one (low 32 bits) and the slots taken
	// so far (high 32 bits, wrapping), the backlog's count of arrivals.
	// Every request writes it: the rarely written fields the fast path
	// reads, and the window's, are kept off its cache line.
	slots   atomic.Int64
	_       [56]byte
	limit   atomic.Int64
	waiting atomic.Int64  // requests in the queue; read on the fast path
	every   atomic.Uint32 // a returning handler is a sample with probability 1/(every+1)
	// rng, if set, draws the samples and the backlog's refusals, seeded by
	// tests on a fake clock for repeatable figures: set before use, only by
	// tests whose limiter one goroutine drives (rand.Rand is not goroutine-safe).
	rng *rand.Rand

	stats *Stats
	// share is what the limit adds to stats.limit, apart from the limiter
	// for the cleanup that withdraws it once the limiter is unreachable.
	share    *atomic.Int64
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
	// windowStart is when the first event (a return in time, a timeout) of
	// the current window came; before it, ^t, t being when the last window
	// closed (times are not negative). See openWindow and windowFrom.
	windowStart atomic.Int64
	adapting    sync.Mutex // held by the goroutine closing a window
	minRTT      int64      // guarded by adapting
	probed      bool       // minRTT is a probe's median, kept until the next probe; guarded by adapting
	// ssthresh, where the slow start stops, is the limit that latency over
	// the target, or timeouts, last brought it back to; 0: none yet.
	ssthresh  int64 // guarded by adapting
	doubledAt int64 // when the slow start last doubled the limit; guarded by adapting
	// loweredAt is when a window last lowered the limit: only handlers
	// admitted since lower it again (byLatency, drop); written under adapting.
	loweredAt atomic.Int64

	// A probe holds the limit at its floor for a window to measure the
	// unloaded latency (see adapt).
	probeFrom    atomic.Int64 // when the current probe began; 0: none
	probeYields  atomic.Bool  // the probe began without load, and ends for a request it would refuse (see yieldProbe)
	restore      int64        // the limit after the probe; guarded by adapting
	nextProbe    int64        // guarded by adapting
	probedAt     int64        // when the last probe ended; guarded by adapting
	restoreEvery uint32       // the sampling rate after the probe, which samples every return; guarded by adapting
	// probeOwed: a probe gave way (yieldProbe), so the next window in which
	// requests queue probes again, under load; else a server started into
	// overload would take its loaded latency for the unloaded one till the
	// next probe.
	probeOwed bool // guarded by adapting

	// Refusals for the backlog in front of the middleware (backlog.go).
	shed       atomic.Uint32 // probability of refusing a request at once, in 1/2³² units
	shedAt     atomic.Int64  // when shed was last moved
	shedMu     sync.Mutex    // held by the goroutine moving shed (updateShed)
	shedTarget int64         // the run queue's wait above which shed rises (backlogTarget)
	// The capacity estimate's counts: requests refused, and handlers that
	// returned in time (the samples, weighted by the sampling rate).
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
	// floor for a window to measure the unloaded latency again, plus up to
	// a quarter so that servers started together do not probe together.
	probeEvery = 30 * time.Second
	// earlyProbeEvery bounds the probes called by latency that rose while
	// the limit did not bind.
	earlyProbeEvery = 5 * time.Second
	// waitShare: a request waits for a slot for at most 1/waitShare of its
	// remaining budget, leaving the rest to its handler.
	waitShare = 10
	// minWait: a request with a shorter share is refused at once; one whose
	// caller gives up sooner (MaxQueueAge) gets the timeout response.
	minWait = 100 * time.Microsecond
	// lifoAfter is how long the queue must have stayed non-empty for the
	// newest waiter to be served first.
	lifoAfter = 10 * time.Millisecond
	// latencySlack is the least latency above the unloaded one that the
	// adaptive limit tolerates: for handlers of microseconds, scheduling
	// noise doubles the latency without any congestion worth a refusal.
	latencySlack = time.Millisecond
	// minQueue is the least the queue holds, else twice the limit's
	// ceiling: a waiter costs little (its connection's goroutine exists
	// anyway) and waits a bounded time, so a burst waits rather than fails.
	minQueue = 32
)

// newLimiter returns a limiter of max slots (adaptive: its limit's ceiling)
// for a middleware with timeout, counting in stats and its late handlers in late.
func newLimiter(max int64, adaptive bool, timeout time.Duration, stats *Stats, late *atomic.Int64) *limiter {
	// A greater limit says no more (see maxLimit), and Stats sums the
	// limits of the middlewares sharing it: two of math.MaxInt would overflow.
	max = min(max, maxLimit)
	l := &limiter{stats: stats, share: new(atomic.Int64), adaptive: adaptive, floor: max, ceiling: max, late: late, shedTarget: backlogTarget(timeout)}
	l.windowStart.Store(^0) // no event yet, since 0
	if adaptive {
		// Start with a probe, at the floor: the unloaded latency measured
		// under load would be the loaded one.
		l.floor = min(limitFloor, max)
		l.restore = min(initialLimit, max)
		l.probeFrom.Store(1)
		l.probeYields.Store(true)
	}
	// Adaptive, the probe's floor; static, max, its floor and ceiling. From
	// 0, counted in Stats; nobody waits yet.
	l.setLimit(l.floor, 0)
	// Once nothing reaches the limiter (its handler dropped on a reload,
	// its requests over, its workers retired), no setLimit runs or ever
	// will, and its share leaves Stats; the handler built in its place
	// counts its own. The cleanup refers to neither the limiter nor its
	// middleware (into which late points): either would keep the limiter
	// reachable, and the cleanup would never run.
	runtime.AddCleanup(l, func(share *atomic.Int64) { stats.limit.Add(-share.Load()) }, l.share)
	return l
}

// maxLimit is the greatest limit: the handlers holding a slot count in 32 bits.
const maxLimit = math.MaxUint32

// A slot taken adds oneSlot to limiter.slots, one given back subtracts 1:
// the handlers holding one never go below zero, so nothing borrows from the
// count of slots taken.
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

// acquire takes a slot for request ctx with deadline at t, waiting if
// needed, but not past giveUp, when its caller gives up (Config.MaxQueueAge;
// else noDeadline). It returns how long the request waited, and why it was
// refused: "" once it holds a slot; spentBudget, for the timeout response,
// if it stopped at giveUp or giveUp left it no time to wait. A request
// still waiting at server shutdown is refused: its handler would only start
// to be cancelled, and the shutdown waits for its answer.
func (l *limiter) acquire(ctx *fasthttp.RequestCtx, t, deadline, giveUp int64) (waited time.Duration, reason string) {
	if l.adaptive {
		if t-l.shedAt.Load() >= int64(backlogInterval) {
			l.updateShed(t)
		}
		if p := l.shed.Load(); p != 0 && l.random() < p {
			return 0, l.refuse(RejectedQueueFull) // the run queue is backed up
		}
	}
	// Waiters first: a newcomer takes a free slot only if nobody waits.
	if l.waiting.Load() == 0 && l.tryAcquire() {
		return 0, ""
	}
	return l.wait(ctx, t, deadline, giveUp)
}

// refuse counts a refusal for reason, for the backlog's arrivals and, if a
// 503, in Stats, and returns reason. A spentBudget is no 503: the middleware
// counts its timeout response.
func (l *limiter) refuse(reason string) string {
	l.refused.Add(1)
	switch reason {
	case RejectedQueueTimeout:
		l.stats.rejectedTimeout.Add(1)
	case RejectedQueueFull:
		l.stats.rejectedFull.Add(1)
	}
	return reason
}

// release gives back the slot of a handler that returned at t; rtt, its
// latency from admission, is a sample if it returned in time.
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
			// random, by hand: the call (too big to inline) costs the
			// fast path a nanosecond in BenchmarkAdmission.
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
