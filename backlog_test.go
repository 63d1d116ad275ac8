package fasttimeout

import (
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
)

func TestNextShed(t *testing.T) {
	t.Parallel()
	const target = int64(50 * time.Millisecond)
	share := func(f float64) uint32 { return uint32(f * (1 << 32)) }
	for _, c := range []struct {
		name    string
		p       uint32
		latency int64
		want    float64
	}{
		{"a wait at the target changes nothing", share(0.3), target, 0.3},
		{"a wait twice the target raises it by a step", 0, 2 * target, shedStep},
		{"a wait far above raises it by four steps at most", 0, 100 * target, 4 * shedStep},
		{"no wait lowers it by a step", share(0.3), 0, 0.3 - shedStep},
		{"never below zero", 0, 0, 0},
		{"never above its ceiling", share(maxShed), 100 * target, maxShed},
	} {
		got := float64(nextShed(c.p, c.latency, target, int64(backlogInterval))) / (1 << 32)
		assert.InDelta(t, c.want, got, 1e-6, c.name)
	}
}

// TestNextShed_after_an_idle_spell: the probability moves only when a
// request comes. Under the target it falls by a step per interval passed;
// over it, by one step. Falling by one step per request, however long the
// wait had stayed under the target since, a server left idle for an hour
// after an overload would refuse nine in ten of its next requests, and
// keep refusing some for its next twenty (for minutes, at a request every
// few seconds).
func TestNextShed_after_an_idle_spell(t *testing.T) {
	t.Parallel()
	const target = int64(50 * time.Millisecond)
	share := func(f float64) uint32 { return uint32(f * (1 << 32)) }
	interval := int64(backlogInterval)
	got := func(p uint32, latency, dt int64) float64 {
		return float64(nextShed(p, latency, target, dt)) / (1 << 32)
	}
	assert.Zero(t, got(share(maxShed), 0, int64(time.Hour)), "an idle hour: nothing left to refuse")
	assert.InDelta(t, 0.9-3*shedStep/2, got(share(0.9), target/2, 3*interval), 1e-6, "three intervals at half the target")
	assert.InDelta(t, 0.9-shedStep, got(share(0.9), 0, interval/2), 1e-6, "a short interval counts as one")
	assert.InDelta(t, 0.3+shedStep, got(share(0.3), 2*target, 10*interval), 1e-6, "over the target: one step")
}

// TestLimiter_nextShedLocked: the capacity is learnt while the run queue is
// backed up (long, with a wait above the target), the arrival rate always;
// the probability is at least what they say must be refused while the run
// queue is backed up, and at most that once it has drained.
func TestLimiter_nextShedLocked(t *testing.T) {
	t.Parallel()
	const dt = int64(backlogInterval)
	const target = int64(50 * time.Millisecond)
	share := func(f float64) uint32 { return uint32(f * (1 << 32)) }
	per := func(n float64) float64 { return n / float64(dt) } // n in an interval, as a rate
	for _, c := range []struct {
		name                  string
		p                     uint32
		capacity, arrivalRate float64 // before
		latency               int64
		runnable, dt          int64
		arrived, served       int64
		want                  float64
		wantCapacity          float64
		wantArrivalRate       float64
	}{
		{
			name: "a long run queue: the first rates are taken as they are",
			p:    share(0.5), latency: target, runnable: saturatedRunnable, dt: dt, arrived: 400, served: 100,
			want: 0.75, wantCapacity: per(100), wantArrivalRate: per(400),
		},
		{
			name: "a long run queue: the averages move by their weights",
			p:    share(0.9), capacity: per(100), arrivalRate: per(400), latency: target, runnable: 100, dt: dt, arrived: 600, served: 200,
			want: 0.9, wantCapacity: per(130), wantArrivalRate: per(410),
		},
		{
			name: "a long run queue: refuse at least what the rates need",
			p:    share(0.3), capacity: per(100), arrivalRate: per(400), latency: target, runnable: saturatedRunnable, dt: dt, arrived: 400, served: 100,
			want: 0.75, wantCapacity: per(100), wantArrivalRate: per(400),
		},
		{
			name: "a drained run queue: refuse no more than the rates need",
			p:    share(0.9), capacity: per(100), arrivalRate: per(400), latency: target / 2, runnable: idleRunnable, dt: dt, arrived: 400,
			want: 0.75, wantCapacity: per(100), wantArrivalRate: per(400),
		},
		{
			name: "a drained run queue: a lower probability stays",
			p:    share(0.5), capacity: per(100), arrivalRate: per(400), latency: target / 2, runnable: 0, dt: dt, arrived: 400,
			want: 0.5 - shedStep/2, wantCapacity: per(100), wantArrivalRate: per(400),
		},
		{
			name: "a drained run queue, fewer arrivals than the capacity: refuse none",
			p:    share(0.9), capacity: per(100), arrivalRate: per(50), latency: target / 2, runnable: 0, dt: dt, arrived: 50,
			want: 0, wantCapacity: per(100), wantArrivalRate: per(50),
		},
		{
			name: "a drained run queue: the burst it lets through moves the average little, whatever the wait",
			p:    share(0.9), capacity: per(100), arrivalRate: per(400), latency: 2 * target, runnable: 0, dt: dt, arrived: 2400,
			want: 0.8, wantCapacity: per(100), wantArrivalRate: per(500),
		},
		{
			name: "capacity unknown: the controller alone",
			p:    share(0.9), latency: target / 2, runnable: 0, dt: dt, arrived: 400,
			want: 0.9 - shedStep/2, wantArrivalRate: per(400),
		},
		{
			name: "a long run queue with a short wait: the controller alone, and the rate served is not the capacity",
			p:    share(0.3), capacity: per(100), arrivalRate: per(400), latency: target - 1, runnable: 10 * saturatedRunnable, dt: dt, arrived: 400, served: 50,
			want: 0.3 - shedStep/float64(target), wantCapacity: per(100), wantArrivalRate: per(400),
		},
		{
			name: "a run queue neither long nor drained: the controller alone",
			p:    share(0.3), capacity: per(100), arrivalRate: per(400), latency: target, runnable: saturatedRunnable - 1, dt: dt, arrived: 400, served: 10,
			want: 0.3, wantCapacity: per(100), wantArrivalRate: per(400),
		},
		{
			name: "after a long gap the counts are not rates",
			p:    share(0.9), capacity: per(100), arrivalRate: per(400), latency: target / 2, runnable: 0, dt: 5 * dt, arrived: 4000, served: 10,
			want: 0.9 - 5*shedStep/2, wantCapacity: per(100), wantArrivalRate: per(400),
		},
	} {
		l := newLimiter(100, true, time.Second, new(Stats), new(atomic.Int64))
		l.shed.Store(c.p)
		l.capacity, l.arrivalRate = c.capacity, c.arrivalRate
		got := float64(l.nextShedLocked(c.latency, c.runnable, c.dt, c.arrived, c.served)) / (1 << 32)
		assert.InDelta(t, c.want, got, 1e-6, c.name)
		assert.InDelta(t, c.wantCapacity, l.capacity, 1e-12, c.name)
		assert.InDelta(t, c.wantArrivalRate, l.arrivalRate, 1e-12, c.name)
	}
}

func TestBacklogTarget(t *testing.T) {
	t.Parallel()
	assert.Equal(t, int64(50*time.Millisecond), backlogTarget(time.Second))
	assert.Equal(t, int64(20*time.Millisecond), backlogTarget(time.Millisecond))
	assert.Equal(t, int64(250*time.Millisecond), backlogTarget(time.Hour))
}

// TestLimiter_refuses_for_a_backlog: while the run queue is backed up, an
// adaptive limiter refuses that share of requests at once, even below its
// limit; a fixed limit does not look at the run queue.
func TestLimiter_refuses_for_a_backlog(t *testing.T) {
	t.Parallel()
	for _, adaptive := range []bool{true, false} {
		l := newLimiter(1000, adaptive, time.Second, new(Stats), new(atomic.Int64))
		l.limit.Store(1000)
		at := now()
		l.shedAt.Store(at) // no update during the test
		l.shed.Store(1 << 32 / 10 * 9)
		refused := 0
		for range 200 {
			_, reason := l.acquire(nil, at, at+int64(time.Second), noDeadline)
			if reason != "" {
				assert.Equal(t, RejectedQueueFull, reason)
				refused++
				continue
			}
			l.release(at, 0, false)
		}
		if adaptive {
			assert.Greater(t, refused, 100, "about 180 of 200 refused")
			assert.Less(t, refused, 200, "some get through, to keep measuring")
		} else {
			assert.Zero(t, refused)
		}
	}
}

// TestReadBacklog_after_a_reading_from_a_later_clock: a limiter on a
// made-up clock hours ahead (a test's) must not stop the others from
// reading the run queue. Not parallel: the reading is the process's.
func TestReadBacklog_after_a_reading_from_a_later_clock(t *testing.T) {
	t.Cleanup(func() { runQueue.at.Store(0) })
	runQueue.at.Store(now() + int64(time.Hour))
	// Eventually: a limiter elsewhere in the process may hold the lock.
	assert.Eventually(t, func() bool {
		t0 := now()
		readBacklog(t0)
		return runQueue.at.Load() <= t0
	}, 5*time.Second, time.Millisecond, "the run queue was not read again")
}

// TestRunQueueLatency: goroutines that wait for a P are seen. Not parallel:
// it measures the whole process.
func TestRunQueueLatency(t *testing.T) {
	runQueue.mu.Lock() // no limiter reads in between
	defer runQueue.mu.Unlock()
	readRunQueue()
	// All start at once and wait in the run queue for one another: most of
	// the scheduling events of the interval wait for milliseconds, however
	// many short ones the rest of the process adds.
	start := make(chan struct{})
	var wg sync.WaitGroup
	for range 300 {
		wg.Go(func() {
			<-start
			for begin := time.Now(); time.Since(begin) < 3*time.Millisecond; {
			}
		})
	}
	close(start)
	wg.Wait()
	latency, _ := readRunQueue()
	assert.GreaterOrEqual(t, latency, int64(time.Millisecond), "300 goroutines of 3 ms of CPU each, on at most a few Ps")
}

// TestReadRunQueue_runnable: goroutines waiting for a P are counted. Not
// parallel: it measures the whole process.
func TestReadRunQueue_runnable(t *testing.T) {
	runQueue.mu.Lock()
	defer runQueue.mu.Unlock()
	// They spin until the count is read, so that however late this
	// goroutine runs, all but GOMAXPROCS of them wait in the run queue.
	n := runtime.GOMAXPROCS(0) + 2*saturatedRunnable
	var stop atomic.Bool
	var spinning, wg sync.WaitGroup
	spinning.Add(n)
	for range n {
		wg.Go(func() {
			spinning.Done()
			for !stop.Load() {
			}
		})
	}
	spinning.Wait()
	_, runnable := readRunQueue()
	stop.Store(true)
	wg.Wait()
	assert.GreaterOrEqual(t, runnable, int64(saturatedRunnable), "%d goroutines spinning on %d Ps", n, runtime.GOMAXPROCS(0))
	// Goroutines that other tests left behind may still be on their way
	// out, so the run queue is given time to drain.
	assert.Eventually(t, func() bool {
		_, runnable = readRunQueue()
		return runnable < saturatedRunnable
	}, 10*time.Second, time.Millisecond, "once they have returned")
}
