package fasttimeout

import (
	"math"
	"slices"
	"sync/atomic"
	"time"
)

// The adaptive limit follows Netflix's Gradient2, with what a timeout
// middleware knows besides (docs/overload.md has the design and its
// measurements). Each window (see windowDone) compares the median latency of
// handlers that returned in time with the unloaded latency, minRTT:
//
//   - The gradient target/median, clamped to [0.5, 1] (target: 1.5 minRTT,
//     or minRTT plus latencySlack if greater), scales the limit, and √limit
//     is added while the limit binds (handlers running reached half of it,
//     or requests queued): a limit an idle server never reaches says nothing.
//   - With latency on target and requests queued, the limit doubles (slow
//     start), at most once per latency and not past ssthresh, the last
//     limit that latency over the target brought it back to: else handlers
//     slower than a window double it again and again.
//   - Only handlers admitted since the limit last fell may lower it (with
//     none, it holds), as TCP lowers its window at most once a round trip:
//     the others' latency or timeouts are what that fall answered, and after
//     a stall, or during an outage, they lowered it window after window.
//   - Timeouts are drops, but only in a window with no return in time (the
//     latency is out of sight): the limit halves. Hang-ups are neither: the
//     client's patience says nothing about the server.
//   - Late handlers, and handlers that moved their deadline (Disarm, Extend:
//     their latency is their choice), hold slots but give no samples; each
//     window leaves limitFloor slots beyond theirs (lateFloor), else nothing
//     would be admitted, return or time out, and it would never move again.
//     Not at once, but as a window closes: with no return in time and no
//     timeout, when a request finds no slot maxWindow after the last close
//     (see wait).
//   - minRTT is the median latency of a probe, as in Envoy: one window at the
//     floor at start and every probeEvery under sustained load, sampling
//     every return but none admitted before it; it stands until the next
//     probe. Not a lower quartile or the least window median: in a mix with
//     fast requests (cache hits, errors) that is a fast request's, and the
//     limit fell to its floor and stayed there. A median over the target
//     while the limit does not bind calls a probe early, so that a
//     downstream-bound server does not raise its target with its own
//     queueing.

// testHookProbeEnding, set only by tests, runs in endProbe once the probe
// no longer gives way, before the limit is restored.
var testHookProbeEnding atomic.Pointer[func(*limiter)]

// testHookCounted, set only by tests, runs in sample and drop once the
// event is counted in its window, before it looks at the window's start.
var testHookCounted atomic.Pointer[func(*limiter)]

// sample records the latency of a handler that returned in time.
func (l *limiter) sample(t int64, rtt time.Duration) {
	if p := l.probeFrom.Load(); p != 0 && t-int64(rtt) < p {
		return // admitted before the probe: its latency is the load's
	}
	i := l.count.Add(1) - 1
	if hook := testHookCounted.Load(); hook != nil {
		(*hook)(l)
	}
	l.openWindow(t)
	if i < windowSamples {
		l.admittedAt[i].Store(t - int64(rtt))
		l.samples[i].Store(int64(max(rtt, 1)))
	}
	if l.windowDone(i+1, t) {
		l.adapt(t)
	}
}

// drop records a timeout at t of a handler admitted at admitted; only those
// admitted since the limit last fell may halve it (see the top of the file).
func (l *limiter) drop(t, admitted int64) {
	if admitted >= l.loweredAt.Load() {
		l.freshDrops.Add(1)
	}
	l.drops.Add(1)
	if hook := testHookCounted.Load(); hook != nil {
		(*hook)(l)
	}
	l.openWindow(t)
	if l.windowDone(l.count.Load(), t) {
		l.adapt(t)
	}
}

// openWindow starts the current window at t, an event's time, unless an
// event has already started it: the window starts with its first event, not
// after an idle spell. By a compare-and-swap on the start, not by the order
// in which events count themselves: an event counted second, on another
// core, may look at the start before the first has set it, and it took the
// idle spell's for the window's and closed the window on those two events.
// Not before the last close: an event that read its time before it (its
// goroutine descheduled, the process stalled) would make the window due
// that much early.
func (l *limiter) openWindow(t int64) {
	if s := l.windowStart.Load(); s < 0 {
		l.windowStart.CompareAndSwap(s, max(t, ^s))
	}
}

// windowFrom returns when the current window started, or, before its first
// event, when the last one closed (see limiter.windowStart).
func (l *limiter) windowFrom() int64 {
	s := l.windowStart.Load()
	if s < 0 {
		return ^s
	}
	return s
}

// windowDone reports whether a window with n samples is complete at t: full,
// or long enough for a median, or so long that what it has must do.
func (l *limiter) windowDone(n, t int64) bool {
	elapsed := time.Duration(t - l.windowFrom())
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
		// Nothing returned or timed out for a whole window: hanging
		// handlers may hold every slot.
		l.windowStart.Store(^t) // started by its first event
		l.setLimit(max(l.limit.Load(), l.lateFloor()), t)
		return
	}
	// The latencies written, rtts, and among them fresh ones (admitted
	// since the limit last fell). A return counts itself before it writes
	// its latency, so a slot may still hold an earlier window's, or 0:
	// adapt empties every slot it reads and skips the empty ones.
	var rttsBuf, freshBuf [windowSamples]int64
	rtts, fresh := rttsBuf[:0], freshBuf[:0]
	lowered := l.loweredAt.Load()
	for i := range windowSamples {
		rtt := l.samples[i].Swap(0)
		if rtt == 0 || int64(i) >= n {
			continue
		}
		rtts = append(rtts, rtt)
		if l.admittedAt[i].Load() >= lowered {
			fresh = append(fresh, rtt)
		}
	}
	// About one full window per minWindow: sample less when it fills
	// sooner, more when later. Not in a probe, which samples every return.
	probing := l.probeFrom.Load() != 0
	every := l.every.Load()
	start := l.windowFrom()
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
	l.windowStart.Store(^t) // started by its first event
	peak := l.peak.Swap(l.holding())
	queued := l.queuedInWin.Swap(false)

	if probing {
		if len(rtts) > 0 {
			l.minRTT = medianOf(rtts)
			l.probed = true
			l.endProbe(t)
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
	case len(rtts) > 0:
		var early bool
		next, early = l.byLatency(limit, rtts, fresh, start, t, binding, queued)
		probe = probe || early
	case n > 0:
		// Returns, but no latency written yet: nothing to go by.
	case freshDrops > 0:
		// Fresh timeouts and no return in time: back off (see the top of the file).
		next /= 2
	}
	nextLimit := min(max(int64(next), l.lateFloor()), l.ceiling)
	if nextLimit < limit {
		l.ssthresh = nextLimit
		l.loweredAt.Store(t)
	}
	if probe {
		// Measure the unloaded latency at the floor, then come back.
		l.restore = nextLimit
		l.probeFrom.Store(t)
		// Every return a sample: few return at the floor, and at the load's
		// rate (1 in 64) the probe would refuse most requests for long.
		l.restoreEvery = l.every.Swap(0)
		l.probeYields.Store(!binding) // called early, without load
		l.probeOwed = false
		nextLimit = l.lateFloor()
	}
	l.setLimit(nextLimit, t)
}

// byLatency returns the next limit after limit, unbounded yet, for a window
// from start to t with latencies rtts, fresh those admitted since the limit
// last fell (both reordered), and whether it calls a probe early (see the
// top of the file). binding and queued are as adapt found them. l.adapting
// is held.
func (l *limiter) byLatency(limit int64, rtts, fresh []int64, start, t int64, binding, queued bool) (next float64, probe bool) {
	median := medianOf(rtts)
	if !l.probed && (l.minRTT == 0 || median < l.minRTT) {
		// The least window median, until a probe measures it.
		l.minRTT = median
	}
	target := max(l.minRTT+l.minRTT/2, l.minRTT+int64(latencySlack))
	// Over the target without binding: slower, or loaded below the limit.
	probe = !binding && median > target && t-l.probedAt >= int64(earlyProbeEvery)
	gradient := min(max(float64(target)/float64(median), 0.5), 1)
	if gradient < 1 && len(fresh) < len(rtts) {
		// Only fresh latencies may lower it (see the top of the file).
		if len(fresh) == 0 {
			return float64(limit), probe
		}
		gradient = min(max(float64(target)/float64(medianOf(fresh)), 0.5), 1)
	}
	next = float64(limit) * gradient
	switch {
	case gradient == 1 && queued && (l.ssthresh == 0 || limit < l.ssthresh) && start-l.doubledAt >= median:
		// A burst, or a cold limit: double rather than refuse most of the
		// burst while √limit creeps up. Once per latency: a window that
		// began sooner after the last doubling measured the limit before it.
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
// early) for a request it would otherwise refuse, or held past MaxQueueAge
// (see wait), and reports whether it found one on (now over): such a probe
// stops measuring rather than cost the server requests. A probe under load
// does not yield (requests are refused then anyway); the next window in
// which requests queue probes again (probeOwed).
//
// held: the request queued behind such a probe, and is let through (true)
// once it is over, whoever ended it. It waits on the adapting lock for an
// end under way: in between the request would find no slot, and which of
// two requests was refused would depend on goroutine order.
func (l *limiter) yieldProbe(t int64, held bool) bool {
	if !held && !l.probeYields.Load() {
		return false
	}
	l.adapting.Lock()
	defer l.adapting.Unlock()
	if l.probeYields.Load() && l.probeFrom.Load() != 0 {
		l.probeOwed = true
		l.queuedInWin.Store(false) // only what queues from now on
		l.endProbe(t)
	}
	l.probeYields.Store(false)
	return true
}

// endProbe ends the current probe at t, the limit going back to l.restore,
// and schedules the next one. l.adapting is held.
func (l *limiter) endProbe(t int64) {
	l.probeFrom.Store(0)
	l.probeYields.Store(false)
	if hook := testHookProbeEnding.Load(); hook != nil {
		(*hook)(l)
	}
	l.every.Store(l.restoreEvery)
	l.probedAt = t
	l.nextProbe = t + int64(probeEvery) + t%int64(probeEvery/4)
	// Not under the handlers that went late or moved during the probe.
	l.setLimit(max(l.restore, l.lateFloor()), t)
}

// lateFloor is the least a window (or a probe's end) sets the adaptive limit
// to: limitFloor slots beyond those of late and moved handlers, within the
// ceiling. Handlers going late or moving in between do not raise it.
func (l *limiter) lateFloor() int64 {
	return min(l.floor+l.late.Load()+l.moved.Load(), l.ceiling)
}

// setLimit moves the limit, counts the move in Stats as the limiter's
// share, and hands the slots it frees to waiters.
func (l *limiter) setLimit(limit, t int64) {
	old := l.limit.Swap(limit)
	l.share.Add(limit - old)
	l.stats.limit.Add(limit - old)
	if limit > old && l.waiting.Load() > 0 {
		l.mu.Lock()
		l.dispatchLocked(t)
		l.mu.Unlock()
	}
}

// medianOf returns the median of s, sorting it.
func medianOf(s []int64) int64 {
	slices.Sort(s)
	return s[len(s)/2]
}
