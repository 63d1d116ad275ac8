package fasttimeout

import (
	"context"
	"math"
	"sync"
	"sync/atomic"
	"time"
)

// epoch anchors deadlines: they are stored as nanoseconds since epoch on the
// monotonic clock, so they fit an atomic int64 and need no time.Time.
var epoch = time.Now()

// noDeadline marks a call or context whose deadline is switched off.
const noDeadline = math.MaxInt64

// now returns the monotonic time since epoch in nanoseconds.
func now() int64 { return int64(time.Since(epoch)) }

const (
	// idleWorkerTimeout is how long an idle worker goroutine is kept for
	// reuse before it exits.
	idleWorkerTimeout = time.Second
	// restPeriod is how often a clock with nothing in flight wakes up to
	// retire idle workers.
	restPeriod = 100 * time.Millisecond
)

// clock is the one goroutine per middleware that cancels cooperative
// contexts at their deadline, watches for server shutdown and retires idle
// workers. It runs only while the middleware has workers or watched
// contexts, ticking every precision while contexts are watched and resting
// otherwise, and exits once everything is idle and retired.
type clock struct {
	precision time.Duration

	idle idleWorkers

	// snapshot holds every live worker, idle or busy, for the clock to scan
	// without locking; it is replaced, under mu, when workers start or exit.
	snapshot atomic.Pointer[[]*worker]

	mu       sync.Mutex
	running  bool              // the clock goroutine exists
	contexts []*requestContext // contexts whose deadline or shutdown is watched

	resting atomic.Bool   // the clock ticks slowly; a new call must wake it
	wake    chan struct{} // cap 1: ends a rest early
}

func newClock(precision time.Duration) *clock {
	return &clock{precision: precision, wake: make(chan struct{}, 1)}
}

// startLocked starts the clock goroutine if it is not running. k.mu is held.
func (k *clock) startLocked() {
	if !k.running {
		k.running = true
		k.resting.Store(false)
		go k.run()
	}
}

// nudge ends a rest, so a call started now is checked at full precision.
func (k *clock) nudge() {
	if k.resting.Load() && k.resting.CompareAndSwap(true, false) {
		select {
		case k.wake <- struct{}{}:
		default:
		}
	}
}

func (k *clock) run() {
	ticker := time.NewTicker(k.precision)
	defer ticker.Stop()
	lastRetire := now()
	for {
		select {
		case <-ticker.C:
		case <-k.wake:
			ticker.Reset(k.precision)
		}
		t := now()
		k.watchCalls()
		busy := k.expireContexts(t)
		if t-lastRetire >= int64(restPeriod) {
			lastRetire = t
			if !k.retireIdle(t) {
				return
			}
		}
		if !busy && !k.resting.Load() {
			// Rest, then look once more: a context watched before the
			// flag was set did not nudge, and must be seen now.
			k.resting.Store(true)
			if k.expireContexts(now()) {
				k.resting.Store(false)
				continue
			}
			ticker.Reset(restPeriod)
		}
	}
}

// watchCalls cancels the contexts of racing calls whose server is shutting
// down. Deadlines are not its business: each racing call has its own timer
// (see call.expire); so racing calls alone never keep the clock from
// resting, and shutdown reaches their contexts within a rest period.
func (k *clock) watchCalls() {
	workers := k.snapshot.Load()
	if workers == nil {
		return
	}
	var shutdown serverWatch
	for _, w := range *workers {
		c := &w.call
		switch c.phase() {
		case callRunning, callDisarmed:
		default:
			continue
		}
		if b := c.bridge.Load(); b != nil && shutdown.closed(b.serverDone) {
			b.cancel(context.Canceled, &shutdownCause)
		}
	}
}

// serverWatch tells whether a server's done channel is closed, checking each
// channel once per scan: most requests share one server.
type serverWatch struct {
	last   <-chan struct{}
	isDone bool
}

func (s *serverWatch) closed(done <-chan struct{}) bool {
	if done != s.last {
		s.last = done
		select {
		case <-done:
			s.isDone = true
		default:
			s.isDone = false
		}
	}
	return s.isDone
}

// expireContexts cancels the watched contexts whose deadline has passed or
// whose server is shutting down. It reports whether any remain watched.
func (k *clock) expireContexts(t int64) (busy bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	var shutdown serverWatch
	for i := 0; i < len(k.contexts); {
		b := k.contexts[i]
		switch {
		case b.deadline.Load() <= t && b.expire(t):
			k.unwatchLocked(b)
		case shutdown.closed(b.serverDone):
			k.unwatchLocked(b)
			b.cancel(context.Canceled, &shutdownCause)
		default:
			if b.watching == contextPending && b.watchAt <= t {
				var ok bool
				if b.hangup, ok = clientHangups.add(b.conn, b.hungUp); ok {
					b.watching = contextRegistered
				} else {
					b.watching = contextUnwatched
				}
			}
			i++
		}
	}
	return len(k.contexts) > 0
}

// retireIdle stops the workers idle for longer than idleWorkerTimeout. It
// reports whether the clock must keep running.
func (k *clock) retireIdle(t int64) bool {
	retired := k.idle.takeStale(t - int64(idleWorkerTimeout))
	k.mu.Lock()
	defer k.mu.Unlock()
	for _, w := range retired {
		close(w.work)
	}
	if len(retired) > 0 {
		k.removeWorkersLocked(retired...)
	}
	if len(k.workersLocked()) == 0 && len(k.contexts) == 0 {
		k.running = false
		return false
	}
	return true
}

// watch makes the clock cancel b at its deadline or at server shutdown.
func (k *clock) watch(b *requestContext) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if b.deadline.Load() <= now() {
		b.cancel(context.DeadlineExceeded, &timeoutCause)
		return
	}
	b.slot = len(k.contexts)
	k.contexts = append(k.contexts, b)
	k.startLocked()
	k.nudge()
}

// unwatch stops watching b, if it is watched.
func (k *clock) unwatch(b *requestContext) {
	k.mu.Lock()
	k.unwatchLocked(b)
	k.mu.Unlock()
}

func (k *clock) unwatchLocked(b *requestContext) {
	if b.watching == contextRegistered {
		clientHangups.remove(b.hangup) // final: no callback runs after it
	}
	b.watching = contextUnwatched
	i := b.slot
	if i < 0 {
		return
	}
	last := len(k.contexts) - 1
	k.contexts[i] = k.contexts[last]
	k.contexts[i].slot = i
	k.contexts[last] = nil
	k.contexts = k.contexts[:last]
	b.slot = -1
}

// addWorker registers a new worker so that the clock checks its calls.
func (k *clock) addWorker(w *worker) {
	k.mu.Lock()
	defer k.mu.Unlock()
	// Append in place when there is room: a scan of an earlier snapshot
	// never reads past its own length, so it cannot see the new slot.
	workers := append(k.workersLocked(), w)
	k.snapshot.Store(&workers)
	k.startLocked()
}

// removeWorkersLocked forgets workers that have exited. k.mu is held.
func (k *clock) removeWorkersLocked(gone ...*worker) {
	for _, w := range gone {
		w.removed = true
	}
	// A new array: the clock may be scanning the current one.
	old := k.workersLocked()
	workers := make([]*worker, 0, len(old))
	for _, w := range old {
		if !w.removed {
			workers = append(workers, w)
		}
	}
	k.snapshot.Store(&workers)
}

// workersLocked returns the registered workers. k.mu is held.
func (k *clock) workersLocked() []*worker {
	if workers := k.snapshot.Load(); workers != nil {
		return *workers
	}
	return nil
}

// dropWorker forgets a worker whose goroutine is ending.
func (k *clock) dropWorker(w *worker) {
	k.mu.Lock()
	k.removeWorkersLocked(w)
	k.mu.Unlock()
}
