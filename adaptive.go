package fasttimeout

import (
	"math"
	"sync/atomic"
	"time"
)

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
//     are left out, and every return in it is a sample). It is the
//     median of the probe's returns, as a window goes by its median, and
//     it stays until the next probe. A lower quartile, or the least of
//     the window medians since, is a fast request's in a mix where a
//     quarter are fast (cache hits, errors), or whose latency varies
//     widely: the median of the whole mix, unloaded, was then over the
//     target, and the limit fell to its floor and stayed there. A
//     median over the target while the limit does not bind calls a probe
//     early: taking that median for the unloaded latency let a
//     downstream-bound server raise its target with its own queueing,
//     window after window.

// testHookProbeEnding, set only by tests, runs in endProbe once the probe
// no longer gives way, before the limit is restored.
var testHookProbeEnding atomic.Pointer[func(*limiter)]

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
			l.minRTT = medianOf(rtts[:k])
			l.probed = true
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
	if !l.probed && (l.minRTT == 0 || median < l.minRTT) {
		// No probe has measured it yet (the one at start gave way): the
		// least window median until one does.
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
