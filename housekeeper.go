package fasttimeout

import (
	"context"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

const (
	// idleWorkerTimeout is how long an idle worker goroutine is kept for
	// reuse before it exits.
	idleWorkerTimeout = time.Second
	// restPeriod is how often a housekeeper with no context to watch wakes
	// up to watch for shutdown and retire idle workers.
	restPeriod = 100 * time.Millisecond
	// contextShards is how many locks the watched contexts are spread over,
	// by connection: one lock, taken twice by every cooperative request that
	// calls Context, would be contended across cores.
	contextShards = 64
)

// housekeeper is the one goroutine per middleware that times out
// cooperative calls with a context at their deadline (call.expire), starts
// their clients' hang-up watch, cancels contexts at server shutdown and
// retires idle workers; racing calls have their own timers (worker.fire).
// It runs only while there are workers or watched contexts, ticking every
// precision while a watched context has a deadline or a watch to start, and
// resting otherwise (a disarmed one needs only a look for shutdown).
type housekeeper struct {
	precision time.Duration

	idle idleWorkers

	// snapshot holds every live worker, to scan without locking; replaced
	// under mu when workers start or exit. Never nil (see newHousekeeper).
	snapshot atomic.Pointer[[]*worker]

	// The watched contexts, by connection.
	shards [contextShards]contextShard

	mu      sync.Mutex  // guards starting and stopping the goroutine, and the worker registry
	running atomic.Bool // the housekeeper goroutine exists; written under mu

	resting atomic.Bool   // it ticks slowly; a context watched, or given a deadline again, must wake it
	wake    chan struct{} // cap 1: ends a rest early
}

// contextShard is one lock's share of the watched contexts.
type contextShard struct {
	mu       sync.Mutex
	contexts []*requestContext
	_        [64]byte // the fields above never share a cache line with a neighbour's, locked from another core
}

// newHousekeeper returns a housekeeper that, while it watches contexts,
// ticks every precision but no less often than it rests: its ticks also
// look for shutdown and retire idle workers. It starts its goroutine lazily.
func newHousekeeper(precision time.Duration) *housekeeper {
	h := &housekeeper{precision: min(precision, restPeriod), wake: make(chan struct{}, 1)}
	h.snapshot.Store(new([]*worker))
	return h
}

// startLocked starts the housekeeper goroutine if it is not running. h.mu
// is held.
func (h *housekeeper) startLocked() {
	if !h.running.Load() {
		h.running.Store(true)
		h.resting.Store(false)
		go h.run()
	}
}

// nudge ends a rest, so a context watched now, or whose deadline came back
// (call.moveBack), is checked at full precision. Call it after storing the
// deadline: a housekeeper about to rest looks once more after flagging it.
func (h *housekeeper) nudge() {
	if h.resting.Load() && h.resting.CompareAndSwap(true, false) {
		select {
		case h.wake <- struct{}{}:
		default:
		}
	}
}

// run is the housekeeper's goroutine: each tick it cancels what is due,
// every restPeriod it retires idle workers, and it returns once it has
// none left and no context to watch.
func (h *housekeeper) run() {
	ticker := time.NewTicker(h.precision)
	defer ticker.Stop()
	lastRetire := now()
	for {
		select {
		case <-ticker.C:
		case <-h.wake:
			ticker.Reset(h.precision)
		}
		t := now()
		h.cancelRacingAtShutdown(t)
		busy := h.expireContexts(t)
		if t-lastRetire >= int64(restPeriod) {
			lastRetire = t
			if !h.retireIdle(t) {
				return
			}
		}
		switch {
		case busy && h.resting.CompareAndSwap(true, false):
			// A rest's look found a context that needs ticks and did not
			// nudge: tick at full precision rather than be a rest late.
			ticker.Reset(h.precision)
		case !busy && !h.resting.Load():
			// Rest, then look once more: a context watched, or given its
			// deadline back, before the flag was set did not nudge.
			h.resting.Store(true)
			if h.expireContexts(now()) {
				h.resting.Store(false)
				continue
			}
			ticker.Reset(restPeriod)
		}
	}
}

// cancelRacingAtShutdown cancels the contexts of racing calls whose server
// is shutting down, within a rest: their deadlines are their timers'
// (worker.fire), so they never keep the housekeeper from resting.
func (h *housekeeper) cancelRacingAtShutdown(t int64) {
	var shutdown serverWatch
	for _, w := range *h.snapshot.Load() {
		c := &w.call
		// Skipped: decided (its context, if any, has ended), or past its
		// deadline, timed out even if its timer has not run yet (the
		// timer gives the cause).
		if c.decided() || c.deadline.Load() <= t {
			continue
		}
		// Against when the shutdown was seen, not t: a scan that stalled
		// past the deadline may see a shutdown that came after it.
		if b := c.bridge.Load(); b != nil && shutdown.closed(b.serverDone) && c.deadline.Load() > shutdown.at {
			b.cancel(context.Canceled, &shutdownCause)
		}
	}
}

// serverWatch tells whether a server's done channel is closed, checking each
// channel once per scan: most requests share one server.
type serverWatch struct {
	last   <-chan struct{}
	isDone bool
	at     int64 // when last was seen closed: the shutdown came no later
}

// closed reports whether done is closed.
func (s *serverWatch) closed(done <-chan struct{}) bool {
	if done != s.last {
		s.last = done
		if s.isDone = closed(done); s.isDone {
			s.at = now()
		}
	}
	return s.isDone
}

// expireContexts cancels the watched contexts whose deadline has passed or
// whose server is shutting down, and starts the hang-up watches that are
// due. It reports whether one still watched has a deadline or a watch to
// start, and so needs a tick every precision.
func (h *housekeeper) expireContexts(t int64) (busy bool) {
	var shutdown serverWatch
	for i := range h.shards {
		s := &h.shards[i]
		s.mu.Lock()
		for j := 0; j < len(s.contexts); {
			b := s.contexts[j]
			switch {
			case b.deadline.Load() <= t && b.expire(t):
				h.unwatchLocked(s, b)
			case shutdown.closed(b.serverDone):
				// A deadline passed by when the shutdown was seen (a tick
				// that stalled since t) came first: the call timed out.
				expired := b.deadline.Load() <= shutdown.at && b.expire(shutdown.at)
				h.unwatchLocked(s, b)
				if !expired {
					b.cancel(context.Canceled, &shutdownCause)
				}
			case b.causes.Load() == &goneCause && b.call == nil && !b.ownerRunning():
				// Ended by a hang-up, its call gone: nothing can change it,
				// and it would keep the housekeeper ticking. An inner New's
				// context ended by the outer hang-up (follow) stays: its own
				// call runs on, to time out at its deadline (call.expire).
				h.unwatchLocked(s, b)
			default:
				if c := b.call; c != nil {
					c.startWatch(t)
					if c.watch.Load()&watchMask != watchPending {
						b.call = nil // started, or never will be
					}
				}
				busy = busy || b.deadline.Load() != noDeadline || b.call != nil
				j++
			}
		}
		s.mu.Unlock()
	}
	return busy
}

// retireIdle stops the workers idle for longer than idleWorkerTimeout. It
// reports whether the housekeeper must keep running.
func (h *housekeeper) retireIdle(t int64) bool {
	retired := h.idle.takeStale(t - int64(idleWorkerTimeout))
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, w := range retired {
		close(w.work)
	}
	if len(retired) > 0 {
		h.removeWorkersLocked(retired...)
	}
	if len(*h.snapshot.Load()) > 0 {
		return true
	}
	// Stop, then look at every shard: a context watched meanwhile is seen
	// here, or its watch finds the goroutine stopped and starts another.
	h.running.Store(false)
	for i := range h.shards {
		s := &h.shards[i]
		s.mu.Lock()
		n := len(s.contexts)
		s.mu.Unlock()
		if n > 0 {
			h.running.Store(true)
			return true
		}
	}
	return false
}

// watch makes the housekeeper end b at its deadline (through its call, see
// requestContext.expire) or at server shutdown. b.shard is already set.
func (h *housekeeper) watch(b *requestContext) {
	if t := now(); b.deadline.Load() <= t && b.expire(t) {
		return
	}
	s := &h.shards[b.shard]
	s.mu.Lock()
	b.slot = len(s.contexts)
	s.contexts = append(s.contexts, b)
	s.mu.Unlock()
	// Only now look for the goroutine: one about to stop or rest locks this
	// shard after flagging it (retireIdle, run), so it sees b or this the flag.
	if !h.running.Load() {
		h.mu.Lock()
		h.startLocked()
		h.mu.Unlock()
	}
	h.nudge()
}

// unwatch stops watching b, if it is watched.
func (h *housekeeper) unwatch(b *requestContext) {
	s := &h.shards[b.shard]
	s.mu.Lock()
	h.unwatchLocked(s, b)
	s.mu.Unlock()
}

// unwatchLocked stops watching b, if it is watched in shard s, whose lock
// is held.
func (h *housekeeper) unwatchLocked(s *contextShard, b *requestContext) {
	b.owner, b.call = nil, nil
	i := b.slot
	if i < 0 {
		return
	}
	last := len(s.contexts) - 1
	s.contexts[i] = s.contexts[last]
	s.contexts[i].slot = i
	s.contexts[last] = nil
	s.contexts = s.contexts[:last]
	b.slot = -1
}

// addWorker registers a new worker so that the housekeeper checks its calls
// and retires it when idle.
func (h *housekeeper) addWorker(w *worker) {
	h.mu.Lock()
	defer h.mu.Unlock()
	// Append in place when there is room: a scan of an earlier snapshot
	// never reads past its own length, so it cannot see the new slot.
	workers := append(*h.snapshot.Load(), w)
	h.snapshot.Store(&workers)
	h.startLocked()
}

// removeWorkersLocked forgets workers that have exited. h.mu is held.
func (h *housekeeper) removeWorkersLocked(gone ...*worker) {
	for _, w := range gone {
		w.removed = true
	}
	// A new array: the housekeeper may be scanning the current one.
	workers := slices.Clone(*h.snapshot.Load())
	workers = slices.DeleteFunc(workers, func(w *worker) bool { return w.removed })
	h.snapshot.Store(&workers)
}

// dropWorker forgets a worker whose goroutine is ending.
func (h *housekeeper) dropWorker(w *worker) {
	h.mu.Lock()
	h.removeWorkersLocked(w)
	h.mu.Unlock()
}
