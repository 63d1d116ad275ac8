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
// The adaptive limit (adaptive.go) moves the limit by the latency of the
// handlers; the queue (queue.go) holds the requests beyond it.
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
	probed      bool       // minRTT is a probe's median, kept until the next probe; guarded by adapting
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
