package fasttimeout

import (
	"math"
	"runtime/metrics"
	"sync"
	"sync/atomic"
	"time"
)

// The backlog in front of the middleware.
//
// On a process whose CPU is saturated, requests wait before the middleware
// sees them: the goroutine of their connection waits in the Go scheduler's
// run queue before it can read them, and fasthttp stamps ctx.Time only once
// it has. Handing an admitted request to its worker is immediate (the
// worker runs next), so the handlers themselves do not wait, and the
// adaptive limit sees a fine latency while every request arrives stale: on
// one P, a CPU-bound server sent twice its capacity answered almost nothing
// in time, its limit never binding.
//
// That wait is what the runtime reports as /sched/latencies:seconds. When
// the 90th percentile of it stays above a target (a twentieth of the
// timeout, between 20 and 250 ms) for two intervals of backlogInterval, new
// requests are refused at once with a probability that grows while the wait
// stays above the target and falls while it is below (an interval without
// requests included), in proportion to the gap: a proportional controller,
// as PIE (RFC 8033) is for a router's queue. Refusing costs microseconds, a
// handler milliseconds, so the CPU goes back to requests that can still be
// answered in time, and the run queue drains.
//
// A proportional controller lags, and overshoots both ways: the run queue
// fills while the probability climbs, drains at once when it is high, and
// the core idles while it comes down. So it is steered around what the rates
// say must be refused, 1 - capacity/arrivals: at least that while the run
// queue is long and its wait above the target, at most that once it has
// drained. The capacity is the rate of answers in time measured while the
// run queue was so backed up (the CPU saturated, so that rate is what the
// machine can do); the arrivals, their rate averaged over a second.
const (
	backlogInterval = 50 * time.Millisecond
	// shedStep is how much the probability of refusal moves per interval
	// for a wait one target away from the target.
	shedStep = 0.05
	// maxShed leaves some requests through, to keep measuring.
	maxShed = 0.95
	// saturatedRunnable is the run queue's length from which, with a wait
	// above the target, an interval's rate of answers in time is taken as
	// the capacity; idleRunnable the length at or under which the run
	// queue counts as drained.
	saturatedRunnable = 16
	idleRunnable      = 1
	// capacityWeight and arrivalWeight are the weights of a new interval
	// in the moving averages of the capacity and of the arrival rate: the
	// latter spans a second, longer than the run queue takes to fill and
	// drain.
	capacityWeight = 0.3
	arrivalWeight  = 0.05
)

// runQueue reads the scheduler's latency for all the limiters of the
// process, at most once per backlogInterval.
var runQueue struct {
	mu      sync.Mutex
	at      atomic.Int64 // when last read
	latency atomic.Int64 // the 90th percentile over the interval before, ns
	lasting atomic.Int64 // the lesser of the two
	// runnable is the number of goroutines waiting to run at the last read.
	runnable atomic.Int64
	sample   [2]metrics.Sample
	prev     []uint64 // the histogram's counts at the last read
}

// readBacklog returns the 90th percentile of the time goroutines waited to
// run, the lesser of the last two intervals' (as CoDel, it looks at a wait
// that lasts, not at a burst that the queue absorbs), and the number of
// goroutines waiting to run.
func readBacklog(t int64) (latency, runnable int64) {
	if stale(t) && runQueue.mu.TryLock() {
		if stale(t) {
			latency, runnable := readRunQueue()
			runQueue.runnable.Store(runnable)
			runQueue.lasting.Store(min(latency, runQueue.latency.Load()))
			runQueue.latency.Store(latency)
			runQueue.at.Store(t)
		}
		runQueue.mu.Unlock()
	}
	return runQueue.lasting.Load(), runQueue.runnable.Load()
}

// stale reports whether the run queue's last reading is due again at t:
// backlogInterval old, or stamped later than t, which only a limiter on a
// made-up clock (a test's) can do, and which would otherwise stop every
// other limiter of the process from reading it again.
func stale(t int64) bool {
	d := t - runQueue.at.Load()
	return d >= int64(backlogInterval) || d < 0
}

// readRunQueue reads the histogram of scheduling latencies and returns the
// 90th percentile of what was added to it since the last read (the upper
// bound of its bucket), and the number of goroutines waiting to run now.
// runQueue.mu is held. It allocates only the first time.
func readRunQueue() (p90ns, runnable int64) {
	s := &runQueue.sample[0]
	s.Name = "/sched/latencies:seconds"
	runQueue.sample[1].Name = "/sched/goroutines/runnable:goroutines"
	metrics.Read(runQueue.sample[:])
	if r := runQueue.sample[1].Value; r.Kind() == metrics.KindUint64 {
		runnable = int64(r.Uint64())
	}
	if s.Value.Kind() != metrics.KindFloat64Histogram {
		return 0, runnable
	}
	h := s.Value.Float64Histogram()
	prev := runQueue.prev
	if len(prev) != len(h.Counts) {
		runQueue.prev = append([]uint64(nil), h.Counts...)
		return 0, runnable // the first read is the baseline
	}
	var total uint64
	for i, c := range h.Counts {
		total += c - prev[i]
	}
	var p90 float64
	if total > 0 {
		want, seen := total-total/10, uint64(0)
		for i, c := range h.Counts {
			if seen += c - prev[i]; seen >= want {
				p90 = h.Buckets[i+1]
				if math.IsInf(p90, 1) {
					p90 = h.Buckets[i]
				}
				break
			}
		}
	}
	copy(prev, h.Counts)
	return int64(p90 * float64(time.Second)), runnable
}

// backlogTarget is the run queue's wait above which requests are refused,
// for a middleware whose timeout is timeout.
func backlogTarget(timeout time.Duration) int64 {
	return int64(min(max(timeout/20, 20*time.Millisecond), 250*time.Millisecond))
}

// nextShed returns the probability of refusal (in 1/2³² units) after dt
// nanoseconds, at least an interval, in which the run queue's wait was
// latency, against target. Under the target it falls by as many steps as
// intervals passed: requests that did not come to move it would have, and
// a server idle since an overload must not refuse its next requests for
// it. Over the target, by one step: requests that did not come needed no
// refusing.
func nextShed(p uint32, latency, target, dt int64) uint32 {
	gap := min(float64(latency-target)/float64(target), 4)
	if gap < 0 {
		gap *= max(float64(dt)/float64(backlogInterval), 1)
	}
	f := min(max(float64(p)/(1<<32)+shedStep*gap, 0), maxShed)
	return uint32(f * (1 << 32))
}

// updateShed moves the limiter's probability of refusal once per interval.
func (l *limiter) updateShed(t int64) {
	if !l.shedMu.TryLock() {
		return
	}
	defer l.shedMu.Unlock()
	dt := t - l.shedAt.Load()
	if dt < int64(backlogInterval) {
		return
	}
	l.shedAt.Store(t)
	latency, runnable := readBacklog(t)
	// The arrivals are the requests that came to acquire, where the
	// refusals apply: slots taken and refusals. Those answered before it
	// (spent on arrival, MaxLateHandlers) use no handler, and counted they
	// would have the rest refused for them. Taken slots wrap at 2³²: only
	// their difference over an interval counts.
	arrivals, served := int64(l.taken())+l.refused.Load(), l.served.Load()
	arrived := int64(uint32(arrivals - l.lastArrivals))
	l.shed.Store(l.nextShedLocked(latency, runnable, dt, arrived, served-l.lastServed))
	l.lastArrivals, l.lastServed = arrivals, served
}

// nextShedLocked returns the next probability of refusal after an interval
// of dt nanoseconds in which the run queue's wait was latency, its length at
// the end runnable, and arrived requests arrived and served were answered in
// time. l.shedMu is held.
func (l *limiter) nextShedLocked(latency, runnable, dt, arrived, served int64) uint32 {
	p := nextShed(l.shed.Load(), latency, l.shedTarget, dt)
	if dt > 4*int64(backlogInterval) {
		return p // no request for a while: the counts say nothing of now
	}
	// Requests reach the middleware when the run queue lets their
	// connection's goroutine run: few while it fills, a burst as it
	// drains. Over a second they come at the rate they were sent.
	average(&l.arrivalRate, float64(arrived)/float64(dt), arrivalWeight)
	// Backed up: a long run queue, and a long wait in it. Many arrivals
	// make the run queue long at any instant; the rate served then is not
	// the capacity, and refusing by it would keep it where it is.
	backedUp := runnable >= saturatedRunnable && latency >= l.shedTarget
	if backedUp {
		average(&l.capacity, float64(served)/float64(dt), capacityWeight)
	}
	if l.capacity == 0 || l.arrivalRate == 0 {
		return p
	}
	need := uint32(min(max(1-l.capacity/l.arrivalRate, 0), maxShed) * (1 << 32))
	switch {
	case backedUp:
		p = max(p, need) // refuse at least what the rates say
	case runnable <= idleRunnable:
		p = min(p, need) // drained: refuse no more
	}
	return p
}

// average moves the moving average *avg towards sample by weight; the first
// sample is taken as it is.
func average(avg *float64, sample, weight float64) {
	if *avg == 0 {
		*avg = sample
	} else {
		*avg += weight * (sample - *avg)
	}
}
