package fasttimeout

import (
	"math"
	"runtime/metrics"
	"sync"
	"sync/atomic"
	"time"
)

// The backlog in front of the middleware (see docs/overload.md).
//
// On a saturated CPU, requests wait in the Go scheduler's run queue before
// their connection's goroutine reads them and fasthttp stamps ctx.Time. The
// handlers themselves do not wait (an admitted request's worker runs next),
// so the adaptive limit sees a fine latency while every request arrives
// stale, and never binds.
//
// So when the 90th percentile of /sched/latencies:seconds stays above a
// target (a twentieth of the timeout, within 20-250 ms) for two intervals,
// new requests are refused at once with a probability that moves in
// proportion to the gap each interval, as PIE (RFC 8033) does: refusing
// costs microseconds, a handler milliseconds, so the run queue drains. A
// proportional controller lags and overshoots both ways, so the probability
// is kept at least 1 - capacity/arrivals while the run queue is backed up,
// and at most that once it has drained; capacity is the rate of answers in
// time while backed up (the CPU saturated), arrivals their rate over a
// second.
const (
	backlogInterval = 50 * time.Millisecond
	// shedStep is the probability's move per interval for a wait one target
	// above the target.
	shedStep = 0.05
	// maxShed leaves some requests through, to keep measuring.
	maxShed = 0.95
	// The run queue is backed up from saturatedRunnable (with a wait above
	// the target), and drained at idleRunnable or under.
	saturatedRunnable = 16
	idleRunnable      = 1
	// Weights of a new interval in the moving averages; the arrival rate's
	// spans a second, longer than the run queue takes to fill and drain.
	capacityWeight = 0.3
	arrivalWeight  = 0.05
)

// runQueue reads the scheduler's latency for all the limiters of the
// process, at most once per backlogInterval.
var runQueue struct {
	mu       sync.Mutex
	at       atomic.Int64 // when last read
	latency  atomic.Int64 // the 90th percentile over the interval before, ns
	lasting  atomic.Int64 // the lesser of the two
	runnable atomic.Int64 // goroutines waiting to run at the last read
	sample   [2]metrics.Sample
	prev     []uint64 // the histogram's counts at the last read
}

// readBacklog returns the 90th percentile of the run queue's wait, the
// lesser of the last two intervals' (as CoDel, a wait that lasts, not a
// burst), and the number of goroutines waiting to run.
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

// stale reports whether the run queue is due for a read at t: the last is
// backlogInterval old, or later than t (a test's made-up clock), which would
// otherwise stop every other limiter from reading it again.
func stale(t int64) bool {
	d := t - runQueue.at.Load()
	return d >= int64(backlogInterval) || d < 0
}

// readRunQueue returns the 90th percentile (its bucket's upper bound) of the
// scheduling latencies since the last read, and the goroutines waiting to run
// now. runQueue.mu is held. It allocates only the first time.
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

// backlogTarget is the run queue's wait above which requests are refused.
func backlogTarget(timeout time.Duration) int64 {
	return int64(min(max(timeout/20, 20*time.Millisecond), 250*time.Millisecond))
}

// nextShed returns the probability of refusal (in 1/2³² units) after dt ns,
// at least an interval, of a run queue wait of latency against target.
// Under the target it falls a step per interval passed, so that a server
// idle since an overload does not refuse its next requests; over it, it
// rises one step only, as requests that did not come needed no refusing.
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
	// Arrivals are the requests that reached acquire, where refusals apply:
	// those answered before (spent, MaxLateHandlers) use no handler. Taken
	// slots wrap at 2³²: only their difference counts.
	arrivals, served := int64(l.taken())+l.refused.Load(), l.served.Load()
	arrived := int64(uint32(arrivals - l.lastArrivals))
	l.shed.Store(l.nextShedLocked(latency, runnable, dt, arrived, served-l.lastServed))
	l.lastArrivals, l.lastServed = arrivals, served
}

// nextShedLocked returns the next probability of refusal after dt ns in
// which the run queue's wait was latency, its length at the end runnable,
// arrived requests arrived and served were answered in time. l.shedMu is
// held.
func (l *limiter) nextShedLocked(latency, runnable, dt, arrived, served int64) uint32 {
	p := nextShed(l.shed.Load(), latency, l.shedTarget, dt)
	if dt > 4*int64(backlogInterval) {
		return p // no request for a while: the counts say nothing of now
	}
	// Requests arrive in bursts as the run queue drains; over a second, at
	// the rate they were sent.
	average(&l.arrivalRate, float64(arrived)/float64(dt), arrivalWeight)
	// A long run queue alone is many arrivals, not saturation: the rate
	// served then is not the capacity.
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
