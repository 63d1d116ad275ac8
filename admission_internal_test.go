package fasttimeout

import (
	"fmt"
	"math"
	"math/rand/v2"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/valyala/fasthttp"

	"github.com/fasttimeout/fasttimeout/internal/godebugtest"
)

// The adaptive limit's logic, on a fake clock: the times given to the
// limiter are made up, so the windows close where the test says.

// cpuBound simulates a handler of 1 ms of CPU on one core, demand requests
// wanting to run at once: the n admitted share the core, so each takes n ms.
// It returns the fake time after rounds rounds.
func simulate(l *limiter, t int64, rounds, demand int, latency func(n int) time.Duration) int64 {
	for range rounds {
		n := 0
		for n < demand && l.tryAcquire() {
			n++
		}
		rtt := latency(n)
		t += int64(rtt)
		for range n {
			l.release(t, rtt, true)
		}
	}
	return t
}

func cpuBound(n int) time.Duration { return time.Duration(n) * time.Millisecond }

// seeded gives l a seeded random generator, the same for every test, so
// that a test on a fake clock samples the same returns, and logs the same
// figures, on every run. Only for a limiter that one goroutine drives.
func seeded(l *limiter) *limiter {
	l.rng = rand.New(rand.NewPCG(1, 2))
	return l
}

// warm runs light load on l until its first probe is over, and returns the
// fake time after it.
func warm(t *testing.T, l *limiter, clock int64) int64 {
	t.Helper()
	assert.Equal(t, int64(limitFloor), l.limit.Load(), "an adaptive limit starts with a probe at its floor")
	clock = simulate(l, clock, 100, 2, cpuBound)
	require.Zero(t, l.probeFrom.Load(), "the probe is over")
	assert.Equal(t, int64(2*time.Millisecond), l.minRTT, "it measured the unloaded latency")
	return clock
}

func TestLimiter_falls_under_overload_and_recovers(t *testing.T) {
	t.Parallel()
	stats := new(Stats)
	l := seeded(newLimiter(1000, true, time.Second, stats, new(atomic.Int64)))
	clock := int64(time.Hour)

	// Light load first: two requests at a time, 2 ms each.
	clock = warm(t, l, clock)
	clock = simulate(l, clock, 500, 2, cpuBound)
	assert.Equal(t, int64(initialLimit), l.limit.Load(), "a limit that does not bind does not move")

	// Overload: far more requests than the limit, sharing the core.
	clock = simulate(l, clock, 2000, 10000, cpuBound)
	overloaded := l.limit.Load()
	assert.LessOrEqual(t, overloaded, int64(8), "the limit falls to where latency is near its target")
	assert.GreaterOrEqual(t, overloaded, int64(limitFloor))
	assert.Equal(t, overloaded, stats.Snapshot().ConcurrencyLimit)

	// After it: 300 requests at once whose latency does not grow with
	// concurrency (they wait on a downstream with room to spare).
	simulate(l, clock, 2000, 300, func(int) time.Duration { return 2 * time.Millisecond })
	assert.GreaterOrEqual(t, l.limit.Load(), int64(300), "the limit grows back once latency is fine")
	assert.LessOrEqual(t, l.limit.Load(), int64(1000), "and stays under its ceiling")
	assert.Equal(t, l.limit.Load(), stats.Snapshot().ConcurrencyLimit)
	assert.Zero(t, l.holding())
}

// downstreamSim simulates handlers of 40 ms on a downstream of 20 slots,
// admitted by l: the slots are shared, so a handler that starts beside n
// others takes 40 ms × max(n+1, 20)/20.
type downstreamSim struct {
	l       *limiter
	running []struct{ admitted, returns int64 }
}

// start admits a handler at clock if a slot is free; otherwise the request
// counts as queued in the window, and start returns false.
func (d *downstreamSim) start(clock int64) bool {
	if !d.l.tryAcquire() {
		d.l.queuedInWin.Store(true)
		return false
	}
	rtt := 40 * time.Millisecond * time.Duration(max(len(d.running)+1, 20)) / 20
	d.running = append(d.running, struct{ admitted, returns int64 }{clock, clock + int64(rtt)})
	return true
}

// finish returns the handlers done by clock, in time, and gives each one's
// latency to done.
func (d *downstreamSim) finish(clock int64, done func(rtt time.Duration)) {
	kept := d.running[:0]
	for _, h := range d.running {
		if h.returns > clock {
			kept = append(kept, h)
			continue
		}
		rtt := time.Duration(clock - h.admitted)
		d.l.release(clock, rtt, true)
		done(rtt)
	}
	d.running = kept
}

// TestLimiter_limiters_seeded_alike_sample_alike: at high rates a limiter
// takes a share of the returns for samples, at random, and the backlog
// refuses at random too. Both drew from the process's generator, which no
// test can seed: a test on a fake clock gave different figures from run to
// run (TestLimiter_a_probe_under_load_lasts_three_latencies: 2.8 or 2.9
// latencies, 28142 to 29142 refused). Two limiters seeded alike, driven
// alike, take the same samples.
func TestLimiter_limiters_seeded_alike_sample_alike(t *testing.T) {
	t.Parallel()
	samples := func() (served []int64) {
		l := seeded(newLimiter(8000, true, time.Second, new(Stats), new(atomic.Int64)))
		clock := simulate(l, int64(time.Hour), 100, 2, cpuBound) // the probe at start
		downstream := func(int) time.Duration { return time.Millisecond }
		for range 100 {
			clock = simulate(l, clock, 1, 2000, downstream)
			served = append(served, l.served.Load())
		}
		require.NotZero(t, l.every.Load(), "a share of the returns a sample, at random")
		return served
	}
	assert.Equal(t, samples(), samples(), "the returns sampled, round after round")
}

// TestLimiter_slow_start_stops_where_latency_was_too_high: handlers of
// 40 ms on a downstream of 20 slots, under overload, so that a handler's
// latency grows with the handlers running beside it past 20. They return
// after the window that admitted them has closed, so the window after the
// limit doubles still sees the latency from before, and a slow start would
// double it again: the limit swung between 16 and 96 in the load test, and
// with it the latency, most of the p99. Once latency over the target has
// brought the limit back, the slow start stops there; before that, on a
// cold start, it doubles once per latency.
func TestLimiter_slow_start_stops_where_latency_was_too_high(t *testing.T) {
	t.Parallel()
	l := seeded(newLimiter(1000, true, time.Second, new(Stats), new(atomic.Int64)))
	d := &downstreamSim{l: l}
	highest, peak := int64(0), int64(0)
	for clock := int64(time.Hour); clock < int64(time.Hour+10*time.Second); clock += int64(time.Millisecond) {
		d.finish(clock, func(time.Duration) {})
		for d.start(clock) { // far more requests than the limit
		}
		peak = max(peak, l.limit.Load())
		if clock > int64(time.Hour+2*time.Second) { // settled
			highest = max(highest, l.limit.Load())
		}
	}
	t.Logf("limit %d, at most %d once settled, %d in all", l.limit.Load(), highest, peak)
	assert.Equal(t, int64(40*time.Millisecond), l.minRTT, "the probe measured the unloaded latency")
	assert.GreaterOrEqual(t, l.limit.Load(), int64(20), "enough to keep the downstream busy")
	assert.LessOrEqual(t, highest, int64(45), "latency never far over its target, 60 ms at 30 handlers")
	assert.LessOrEqual(t, peak, int64(60), "the cold start doubles once per latency, and overshoots little")
}

// TestLimiter_at_capacity_the_unloaded_latency_stays_unloaded: Poisson
// arrivals at a downstream's capacity (20 slots, 40 ms handlers: 500 a
// second), so that the handlers running wander above 20 and their latency
// with them, often while the limit does not bind. Such a window's median is
// the downstream's queueing, not the unloaded latency: taken for it, it
// raised the target and the limit window after window, and in the load
// test the median latency reached six times the unloaded one.
func TestLimiter_at_capacity_the_unloaded_latency_stays_unloaded(t *testing.T) {
	t.Parallel()
	l := seeded(newLimiter(1000, true, time.Second, new(Stats), new(atomic.Int64)))
	d := &downstreamSim{l: l}
	rng := rand.New(rand.NewPCG(1, 2))
	var latencies []int64
	arrival := int64(time.Hour)
	for clock := int64(time.Hour); clock < int64(time.Hour+30*time.Second); clock += int64(100 * time.Microsecond) {
		d.finish(clock, func(rtt time.Duration) {
			if clock > int64(time.Hour+5*time.Second) {
				latencies = append(latencies, int64(rtt))
			}
		})
		for ; arrival <= clock; arrival += int64(rng.ExpFloat64() * float64(2*time.Millisecond)) {
			d.start(clock) // refused when no slot is free
		}
	}
	median := medianOf(latencies)
	t.Logf("limit %d, unloaded latency %v, median latency %v", l.limit.Load(), time.Duration(l.minRTT), time.Duration(median))
	assert.LessOrEqual(t, l.minRTT, int64(50*time.Millisecond), "the unloaded latency is still about 40 ms")
	assert.LessOrEqual(t, median, int64(100*time.Millisecond), "latency stays within reach of its target, 60 ms")
}

func TestLimiter_timeouts(t *testing.T) {
	t.Parallel()
	t.Run("with no in-time return in a window the limit halves, once a timeout", func(t *testing.T) {
		t.Parallel()
		const timeout = time.Second
		l := seeded(newLimiter(1000, true, timeout, new(Stats), new(atomic.Int64)))
		clock := warm(t, l, int64(time.Hour))
		var cuts []int64
		for range 30 { // a window of timeouts, of handlers admitted a timeout before
			before := l.limit.Load()
			l.drop(clock, clock-int64(timeout))
			if l.limit.Load() < before {
				cuts = append(cuts, clock)
			}
			clock += int64(maxWindow)
		}
		assert.Equal(t, int64(limitFloor), l.limit.Load(), "halved down to the floor")
		for i := 1; i < len(cuts); i++ {
			assert.GreaterOrEqual(t, time.Duration(cuts[i]-cuts[i-1]), timeout, "cut %d a timeout after the one before", i)
		}
	})
	t.Run("beside in-time returns of normal latency they do not shrink it", func(t *testing.T) {
		t.Parallel()
		l := seeded(newLimiter(1000, true, time.Second, new(Stats), new(atomic.Int64)))
		clock := warm(t, l, int64(time.Hour))
		// Late handlers hold half the slots and time out one per
		// return in time; the others keep their unloaded 1 ms.
		for range l.limit.Load() / 2 {
			require.True(t, l.tryAcquire())
		}
		for range 1000 {
			n := 0
			for n < 4 && l.tryAcquire() {
				n++
			}
			clock += int64(time.Millisecond)
			for range n {
				l.drop(clock, clock-int64(time.Second))
				l.release(clock, time.Millisecond, true)
			}
		}
		assert.Greater(t, l.limit.Load(), int64(initialLimit), "the held slots bind the limit, and latency is fine: it grows")
	})
}

// TestLimiter_probes: under sustained overload the unloaded latency is
// never seen, so the limit drops to its floor now and then to measure it.
// A server started straight into overload learns it from its first probe.
func TestLimiter_probes(t *testing.T) {
	t.Parallel()
	l := seeded(newLimiter(1000, true, time.Second, new(Stats), new(atomic.Int64)))
	clock := int64(time.Hour)
	clock = simulate(l, clock, 200, 10000, cpuBound)
	assert.Equal(t, int64(limitFloor)*int64(time.Millisecond), l.minRTT, "measured at the floor, not at the load's concurrency")
	cold := l.limit.Load()
	assert.LessOrEqual(t, cold, int64(12), "latency near its target, from the floor's")

	// The workload gets slower: 10 ms of CPU a request. Until the next
	// probe, latency looks like congestion and the limit stays low; the
	// probe finds the new unloaded latency.
	slow := func(n int) time.Duration { return time.Duration(10*n) * time.Millisecond }
	probed := false
	for range 20000 {
		clock = simulate(l, clock, 1, 10000, slow)
		if l.probeFrom.Load() != 0 {
			probed = true
		}
	}
	assert.True(t, probed, "it probed again under sustained load")
	assert.Equal(t, int64(limitFloor*10)*int64(time.Millisecond), l.minRTT, "the probe found the slower unloaded latency")
	assert.LessOrEqual(t, l.limit.Load(), int64(12))
}

// TestLimiter_a_probe_under_load_lasts_three_latencies: handlers of
// 200 ms under sustained overload (50 requests a millisecond against a
// ceiling of 8000, which they fill), sampled one return in 16 or fewer, and
// probes that drop the limit to its floor of 4. A probe waits one latency
// for the handlers admitted before it to return and one for the first it
// admits, then for a window (here one more latency): its handlers return 4
// a latency, so it samples every return. At the load's rate it waited
// latency after latency for a sampled return, refusing nearly every
// request meanwhile: in five runs, 5 to 8 latencies on average, up to 16.
// The clock is fake, so the bound is exact.
func TestLimiter_a_probe_under_load_lasts_three_latencies(t *testing.T) {
	t.Parallel()
	const (
		latency = 200 * time.Millisecond
		arrive  = 50 // requests a millisecond
		probes  = 8
	)
	start := int64(time.Hour)
	l := seeded(newLimiter(8000, true, time.Second, new(Stats), new(atomic.Int64)))
	var running []int64 // when each running handler was admitted, oldest first
	var probeFrom, refused int64
	var every uint32 // the sampling rate before the probe
	var longest, lasted time.Duration
	var mostRefused, allRefused int64
	seen := 0
	for clock := start; seen < probes; clock += int64(time.Millisecond) {
		i := 0
		for ; i < len(running) && running[i]+int64(latency) <= clock; i++ {
			l.release(clock, time.Duration(clock-running[i]), true)
		}
		running = running[i:]
		for range arrive {
			if l.tryAcquire() {
				running = append(running, clock)
				continue
			}
			// As wait does before it queues a request.
			if clock-l.windowFrom() >= int64(maxWindow) {
				l.adapt(clock)
			}
			refused++ // or queued for a floor that admits 4 a latency
		}
		switch p := l.probeFrom.Load(); {
		case p > start && probeFrom == 0: // not the probe at start
			require.Equal(t, int64(8000), l.restore, "the load filled the ceiling")
			require.GreaterOrEqual(t, every, uint32(15), "one return in 16 or fewer was a sample before it")
			probeFrom, refused = p, 0
		case p == 0 && probeFrom != 0:
			probe := time.Duration(clock - probeFrom)
			t.Logf("a probe lasted %v and refused %d requests", probe, refused)
			assert.Equal(t, int64(latency), l.minRTT, "it measured the unloaded latency")
			longest, mostRefused = max(longest, probe), max(mostRefused, refused)
			lasted, allRefused = lasted+probe, allRefused+refused
			probeFrom = 0
			seen++
			// The next one in 3 s rather than 30, to keep the test short.
			l.adapting.Lock()
			l.nextProbe = clock + int64(3*time.Second)
			l.adapting.Unlock()
		}
		if probeFrom == 0 {
			every = l.every.Load()
		}
	}
	t.Logf("%d probes lasted %.1f latencies on average and refused %d requests, the longest %.1f and %d",
		probes, float64(lasted)/probes/float64(latency), allRefused/probes, float64(longest)/float64(latency), mostRefused)
	assert.LessOrEqual(t, longest, 3*latency, "a probe lasts one latency for the handlers before it to return, one for its own, and a window")
}

func TestLimiter_fixed_limit_does_not_adapt(t *testing.T) {
	t.Parallel()
	stats := new(Stats)
	l := seeded(newLimiter(3, false, time.Second, stats, new(atomic.Int64)))
	simulate(l, int64(time.Hour), 1000, 100, cpuBound)
	assert.Equal(t, int64(3), l.limit.Load())
	assert.Equal(t, int64(3), stats.Snapshot().ConcurrencyLimit)
	runtime.KeepAlive(l) // an unreachable limiter's limit leaves Stats (see newLimiter)
}

// stalledLoad runs a closed-loop load through middleware m's adaptive limit
// on a fake clock, each request through a call as the middleware makes it
// (see finish), so that timeouts are drops and late handlers hold slots.
type stalledLoad struct {
	m       *middleware
	l       *limiter
	clock   int64
	running []*call
	windows int // windows closed
}

// admit admits up to demand handlers at the clock; the rest of the demand
// waits, in the window's record.
func (s *stalledLoad) admit(demand int) int {
	for len(s.running) < demand && s.l.tryAcquire() {
		c := &call{m: s.m, admitted: s.clock}
		c.state.Store(generation | callRunning)
		c.deadline.Store(s.clock + int64(s.m.Timeout))
		c.slot.Store(slotHeld)
		s.running = append(s.running, c)
	}
	if len(s.running) < demand {
		s.l.queuedInWin.Store(true)
	}
	return len(s.running)
}

// finish returns every running handler at the clock, as finishCooperative
// does: in time, or late once its deadline has passed.
func (s *stalledLoad) finish() {
	for _, c := range s.running {
		before := s.l.windowStart.Load()
		c.settleOrTimeOut(callFinished, s.clock)
		inTime := c.phase() == callFinished
		s.m.release(c, s.clock, inTime)
		if !inTime {
			s.m.countLateReturn(time.Duration(s.clock - c.overAt.Load()))
		}
		if s.l.windowStart.Load() != before && s.l.count.Load() == 0 && s.l.drops.Load() == 0 {
			s.windows++
		}
	}
	s.running = s.running[:0]
}

// TestLimiter_after_a_process_stall_serves_its_load_again: a process stopped
// while its handlers run wakes with all of them returning at once, late if
// the stall outlasted their timeout, or else in time with the stall in
// their latency; to the adaptive limit a stall looks like a burst of drops,
// or like latency many times the unloaded one. Neither may leave the limit
// down for long: the drops share their window with the returns in time
// that follow the stall, and are not counted; the stalled latencies close
// one window, which halves the limit (and, while the limit does not bind,
// calls a probe, one window at the floor); it then grows by √limit a window
// while it binds, back within 2+√limit windows, where it had taken twice that
// from its floor. The loads sample every return (a window of 64 returns
// takes longer than minWindow/2), so the windows are the same in every run.
func TestLimiter_after_a_process_stall_serves_its_load_again(t *testing.T) {
	t.Parallel()
	latency := func(d time.Duration) func(int) time.Duration { return func(int) time.Duration { return d } }
	for _, load := range []struct {
		name    string
		ceiling int
		demand  int
		latency func(n int) time.Duration
	}{
		{"a downstream with room, below the limit", 1000, 60, latency(100 * time.Millisecond)},
		{"a downstream with room, at the ceiling", 60, 200, latency(100 * time.Millisecond)},
		{"cpu-bound, overloaded", 1000, 10000, cpuBound},
	} {
		for _, stall := range []time.Duration{300 * time.Millisecond, 2 * time.Second, probeEvery + probeEvery/4} {
			t.Run(fmt.Sprintf("%s/stall=%v", load.name, stall), func(t *testing.T) {
				t.Parallel()
				m := &middleware{settings: Config{Timeout: time.Second, MaxConcurrency: load.ceiling, AdaptiveConcurrency: true, IgnoreHangups: true}.resolve()}
				m.limiter = seeded(newLimiter(int64(m.MaxConcurrency), true, m.Timeout, m.stats, &m.late))
				s := &stalledLoad{m: m, l: m.limiter, clock: int64(time.Hour)}
				for range 100 {
					s.admit(load.demand)
					s.clock += int64(load.latency(len(s.running)))
					s.finish()
				}
				require.Zero(t, s.l.every.Load(), "every return a sample")
				before := s.l.limit.Load()
				served := s.admit(load.demand)
				s.clock += int64(stall) // the process stops, then every timer is due
				s.finish()
				woke := s.windows

				// back: the windows closed after the stall by the end of the
				// last round that admitted fewer than before it.
				back, short := 0, 0
				probed := false
				lowest := s.l.limit.Load()
				for range 100 { // 10 s at most: no regular probe comes
					n := s.admit(load.demand)
					probed = probed || s.l.probeFrom.Load() != 0
					lowest = min(lowest, s.l.limit.Load())
					s.clock += int64(load.latency(n))
					s.finish()
					if n < served {
						back, short = s.windows-woke, short+1
					}
				}
				t.Logf("limit %d before, lowest %d after (probe: %v), %d rounds short, back after %d windows", before, lowest, probed, short, back)
				assert.LessOrEqual(t, back, 2+int(math.Ceil(math.Sqrt(float64(before)))), "windows until the load before the stall is served again")
				if stall > m.Timeout && !probed {
					assert.GreaterOrEqual(t, lowest, before, "the drops of a stall are not counted beside returns in time")
				}
				assert.Zero(t, m.late.Load(), "every late handler returned")
				assert.Zero(t, s.l.holding())
				assert.Equal(t, s.l.limit.Load(), m.stats.Snapshot().ConcurrencyLimit)
				runtime.KeepAlive(m) // an unreachable limiter's limit leaves Stats (see newLimiter)
			})
		}
	}
}

// TestLimiter_a_stall_lowers_the_limit_once: handlers of a fixed latency (a
// downstream with room), two arriving a millisecond, more than the ceiling
// admits: the limit binds at its ceiling, with more handlers running than a
// window holds samples. The process stops for 300 ms, and every handler it
// caught returns at once with the stall in its latency. Those latencies
// fill a window, which lowers the limit, and spill into the next ones,
// which lowered it again, at 200 ms twice in the same instant, though every
// handler admitted since returned in its unloaded latency: a cut answered
// latency that the one before had answered already. As TCP lowers its
// window at most once a round trip, a cut counts only the handlers
// admitted after the last one. Every return after the stall's is either
// one it caught or of the unloaded latency, so the count holds whatever
// returns are sampled (one in two or four for a few windows after the
// stall: its returns come all at once).
func TestLimiter_a_stall_lowers_the_limit_once(t *testing.T) {
	t.Parallel()
	for _, load := range []struct {
		latency time.Duration
		ceiling int64
	}{
		{100 * time.Millisecond, 150},
		{200 * time.Millisecond, 300},
	} {
		t.Run(fmt.Sprintf("latency=%v/ceiling=%d", load.latency, load.ceiling), func(t *testing.T) {
			t.Parallel()
			const (
				arrive = 2 // requests a millisecond
				stall  = 300 * time.Millisecond
			)
			l := seeded(newLimiter(load.ceiling, true, time.Second, new(Stats), new(atomic.Int64)))
			var running []int64 // when each running handler was admitted, oldest first
			var cuts []string   // each cut of the limit: from, to, and when after the stall
			var woke int64
			refused := 0
			// step returns the handlers due at clock, then admits the
			// arrivals it can; the others are refused, as wait does once
			// their share of the budget is spent.
			step := func(clock int64, arrivals int) {
				i := 0
				for ; i < len(running) && running[i]+int64(load.latency) <= clock; i++ {
					before := l.limit.Load()
					l.release(clock, time.Duration(clock-running[i]), true)
					if l.limit.Load() < before {
						require.Zero(t, l.probeFrom.Load(), "no probe: the limit binds")
						cuts = append(cuts, fmt.Sprintf("%d to %d at +%v", before, l.limit.Load(), time.Duration(clock-woke)))
					}
				}
				running = running[i:]
				for range arrivals {
					if !l.tryAcquire() {
						l.queuedInWin.Store(true)
						refused++
						continue
					}
					running = append(running, clock)
				}
			}
			clock := int64(time.Hour)
			for ; clock < int64(time.Hour+6*time.Second); clock += int64(time.Millisecond) {
				step(clock, arrive)
			}
			require.Equal(t, load.ceiling, l.limit.Load(), "the limit binds at its ceiling")
			require.Zero(t, l.every.Load(), "every return a sample")
			require.Greater(t, len(running), windowSamples, "more handlers running than a window holds")
			require.Empty(t, cuts, "latency on target: no cut before the stall")

			caught := len(running)
			clock += int64(stall) // the process stops, and reads no request meanwhile
			woke, refused = clock, 0
			lowest, back := l.limit.Load(), time.Duration(0)
			for ; clock < woke+int64(3*time.Second); clock += int64(time.Millisecond) {
				step(clock, arrive)
				lowest = min(lowest, l.limit.Load())
				if back == 0 && lowest < load.ceiling && l.limit.Load() == load.ceiling {
					back = time.Duration(clock - woke)
				}
			}
			t.Logf("%d handlers caught by the stall; cuts of the limit: %d (%s), lowest %d, back at %d after %v; %d of %d arrivals refused in 3 s",
				caught, len(cuts), strings.Join(cuts, ", "), lowest, load.ceiling, back, refused, 3000*arrive)
			assert.Len(t, cuts, 1, "cuts of the limit after the stall")
			assert.Equal(t, load.ceiling, l.limit.Load(), "back at the ceiling")
			assert.Zero(t, l.probeFrom.Load())
		})
	}
}

// openLoad runs an open-loop load through middleware m's adaptive limit on
// a fake clock, each handler through a call as the middleware makes it, so
// that a handler past its deadline times out (a drop) and holds its slot,
// late, until it returns.
type openLoad struct {
	m       *middleware
	l       *limiter
	running []openHandler
	refused int
	cuts    []int64 // when the limit fell
}

type openHandler struct {
	c       *call
	returns int64
}

// step times out the handlers past their deadline at clock, as their timers
// do, returns those due, and admits what arrives while a slot is free; the
// rest is refused, as wait does once its share of the budget is spent, and
// closes an overdue window as wait does. returns gives a handler admitted
// at a the time it returns.
func (o *openLoad) step(clock int64, arrivals int, returns func(a int64) int64) {
	before := o.l.limit.Load()
	kept := o.running[:0]
	for _, h := range o.running {
		if h.c.phase() == callRunning && h.c.deadline.Load() <= clock {
			h.c.settle(callTimedOut, clock)
		}
		if h.returns > clock {
			kept = append(kept, h)
			continue
		}
		h.c.settleOrTimeOut(callFinished, clock)
		inTime := h.c.phase() == callFinished
		o.m.release(h.c, clock, inTime)
		if !inTime {
			o.m.countLateReturn(time.Duration(clock - h.c.overAt.Load()))
		}
	}
	o.running = kept
	for range arrivals {
		if !o.l.tryAcquire() {
			o.l.queuedInWin.Store(true)
			if clock-o.l.windowFrom() >= int64(maxWindow) {
				o.l.adapt(clock)
			}
			o.refused++
			continue
		}
		c := &call{m: o.m, admitted: clock}
		c.state.Store(generation | callRunning)
		c.deadline.Store(clock + int64(o.m.Timeout))
		c.slot.Store(slotHeld)
		o.running = append(o.running, openHandler{c, returns(clock)})
	}
	if o.l.limit.Load() < before {
		o.cuts = append(o.cuts, clock)
	}
}

// TestLimiter_timeouts_halve_the_limit_once_a_timeout: handlers of 300 ms on
// a downstream, two arriving a millisecond, a timeout of 1 s: the limit
// binds at its ceiling of 300. The downstream stops answering for a while
// (an outage; the handlers return, cancelled, at their deadline), or the
// process stops for longer than the timeout. Timeouts with no return in
// time halve the limit, and during the outage each window of them halved
// it again, every 200 ms, though they were of handlers admitted before the
// last fall, which it had answered: at the floor within 2.3 s of the first
// timeout, and 4.6 s back to the ceiling once the downstream answered
// again. As latency lowers it only by handlers admitted since it last
// fell, timeouts do: the limit halves at most once a timeout. A stall
// times every handler out at once: the limit falls once, either way.
func TestLimiter_timeouts_halve_the_limit_once_a_timeout(t *testing.T) {
	t.Parallel()
	const (
		latency = 300 * time.Millisecond
		timeout = time.Second
		ceiling = 300
		arrive  = 2 // requests a millisecond
	)
	for _, c := range []struct {
		name   string
		outage time.Duration // the downstream answers nothing
		stall  time.Duration // the process stops
	}{
		{"an outage of a timeout", timeout, 0},
		{"an outage of three timeouts", 3 * timeout, 0},
		{"a stall past the timeout", 0, 3 * timeout / 2},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			m := &middleware{settings: Config{Timeout: timeout, MaxConcurrency: ceiling, AdaptiveConcurrency: true, IgnoreHangups: true}.resolve()}
			m.limiter = seeded(newLimiter(ceiling, true, timeout, m.stats, &m.late))
			o := &openLoad{m: m, l: m.limiter}
			from := int64(time.Hour + 6*time.Second)
			to := from + int64(c.outage)
			returns := func(a int64) int64 {
				r := a + int64(latency)
				if r >= from && a < to { // sent or due during the outage: answered after it
					r = max(a, to) + int64(latency)
				}
				return min(r, a+int64(timeout)) // cancelled at its deadline
			}
			clock := int64(time.Hour)
			for ; clock < from; clock += int64(time.Millisecond) {
				o.step(clock, arrive, returns)
			}
			require.Equal(t, int64(ceiling), o.l.limit.Load(), "the limit binds at its ceiling")
			require.Empty(t, o.cuts, "latency on target: no cut before")
			clock += int64(c.stall) // the process stops, and reads no request meanwhile
			start, over := clock, clock+int64(c.outage)
			refused := 0
			lowest, back := int64(ceiling), time.Duration(0)
			for ; clock < over+int64(6*time.Second); clock += int64(time.Millisecond) {
				if clock == over {
					refused = o.refused
				}
				o.step(clock, arrive, returns)
				lowest = min(lowest, o.l.limit.Load())
				if back == 0 && clock >= over && lowest < ceiling && o.l.limit.Load() == ceiling {
					back = time.Duration(clock - over)
				}
			}
			var cuts []string
			for i, at := range o.cuts {
				cuts = append(cuts, fmt.Sprintf("+%v", time.Duration(at-start)))
				// In time again, from the first return after the outage, the
				// limit goes by latency.
				if i > 0 && at < over+int64(latency) {
					assert.GreaterOrEqual(t, time.Duration(at-o.cuts[i-1]), timeout, "cut %d of the limit, at +%v, a timeout after the one before", i, time.Duration(at-start))
				}
			}
			t.Logf("cuts of the limit: %d (%s from its start), lowest %d, back at %d %v after its end; %d of %d arrivals refused in the 6 s after",
				len(cuts), strings.Join(cuts, " "), lowest, ceiling, back, o.refused-refused, 6000*arrive)
			assert.LessOrEqual(t, len(cuts), 1+int((c.outage+c.stall)/timeout), "cuts of the limit")
			assert.Equal(t, int64(ceiling), o.l.limit.Load(), "back at the ceiling")
			assert.Zero(t, m.late.Load())
		})
	}
}

// TestLimiter_a_minority_of_fast_requests_is_not_the_unloaded_latency: a
// mix of requests, most of 20 ms (a downstream with room to spare, so
// latency does not grow with concurrency) and some of 1 ms (cache hits,
// errors), two arriving a millisecond, about 30 running at once: no
// overload. A probe took its lower quartile for the unloaded latency, and
// between probes the least window median: with fast requests a quarter of
// the mix or more, both are theirs, and every window's median, a slow
// request's, was ten times the target. The limit fell to its floor and
// stayed there, refusing most requests. So with latencies drawn from an
// exponential distribution of mean 20 ms. The unloaded latency is the
// probe's median now, kept until the next probe.
func TestLimiter_a_minority_of_fast_requests_is_not_the_unloaded_latency(t *testing.T) {
	t.Parallel()
	const (
		slow    = 20 * time.Millisecond
		fast    = time.Millisecond
		timeout = time.Second
		arrive  = 2 // requests a millisecond
		seconds = 20
	)
	mix := func(share float64) func(*rand.Rand) time.Duration { // of fast requests
		return func(rng *rand.Rand) time.Duration {
			if rng.Float64() < share {
				return fast
			}
			return slow
		}
	}
	for _, c := range []struct {
		name    string
		latency func(*rand.Rand) time.Duration
	}{
		{"all slow", mix(0)},
		{"10% fast", mix(0.1)},
		{"30% fast", mix(0.3)},
		{"35% fast", mix(0.35)},
		// Widely spread: the lower quartile is 29 % of the median.
		{"exponential", func(rng *rand.Rand) time.Duration { return time.Duration(rng.ExpFloat64() * float64(slow)) }},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			m := &middleware{settings: Config{Timeout: timeout, AdaptiveConcurrency: true, IgnoreHangups: true}.resolve()}
			m.limiter = seeded(newLimiter(DefaultMaxConcurrency, true, timeout, m.stats, &m.late))
			o := &openLoad{m: m, l: m.limiter}
			rng := rand.New(rand.NewPCG(3, 4))
			returns := func(a int64) int64 { return a + int64(c.latency(rng)) }
			clock := int64(time.Hour)
			for ; clock < int64(time.Hour+time.Second); clock += int64(time.Millisecond) {
				o.step(clock, arrive, returns) // the probe at start, and the limit's climb
			}
			refused := o.refused
			for ; clock < int64(time.Hour+seconds*time.Second); clock += int64(time.Millisecond) {
				o.step(clock, arrive, returns)
			}
			refused = o.refused - refused
			arrived := (seconds - 1) * 1000 * arrive
			t.Logf("%d of %d arrivals refused after the first second; limit %d, unloaded latency %v",
				refused, arrived, o.l.limit.Load(), time.Duration(o.l.minRTT))
			assert.Less(t, refused, arrived/50, "refused under no overload")
			assert.GreaterOrEqual(t, o.l.minRTT, int64(slow)/2, "the unloaded latency of most requests")
		})
	}
}

// TestLimiter_a_window_reads_only_the_latencies_written: a return counts
// itself in its window (limiter.count) before it writes its latency, and
// another return or a timeout may close the window in between (two
// handlers returning at once, on two cores). The window read the slot not
// written yet: 0 in a limiter's first window, which its probe at start
// took for the unloaded latency, or the latency the slot held in an earlier
// window, which cut the limit. Here the first of two returns stops where it
// has counted itself and started the window (the first things sample does),
// and the second, maxWindow later, closes the window.
func TestLimiter_a_window_reads_only_the_latencies_written(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name string
		// prepare brings a limiter to the window, and returns the clock.
		prepare func(t *testing.T, l *limiter) int64
	}{
		{"the first window, the probe at start", func(*testing.T, *limiter) int64 { return int64(time.Hour) }},
		{"a window after one whose first return was slow", func(t *testing.T, l *limiter) int64 {
			clock := warm(t, l, int64(time.Hour)) + int64(maxWindow)
			returns := func(n int, rtt time.Duration) {
				for range n {
					require.True(t, l.tryAcquire())
					l.release(clock, rtt, true)
				}
			}
			returns(1, 2*time.Millisecond) // closes the window in progress
			require.Zero(t, l.count.Load())
			// The next window's first return took 300 ms, the others
			// 2 ms: latency on target.
			returns(1, 300*time.Millisecond)
			returns(minWindowSamples, 2*time.Millisecond)
			clock += int64(minWindow)
			returns(1, 2*time.Millisecond)
			require.Equal(t, int64(initialLimit), l.limit.Load(), "latency on target: the limit holds")
			return clock + int64(maxWindow)
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			l := seeded(newLimiter(1000, true, time.Second, new(Stats), new(atomic.Int64)))
			clock := c.prepare(t, l)
			require.Zero(t, l.count.Load(), "a window closed just before")
			require.True(t, l.tryAcquire())
			require.True(t, l.tryAcquire())
			// The first handler returns: sample counts it in the window,
			// starts the window, and stops before writing its latency.
			l.slots.Add(-1)
			l.count.Add(1)
			l.openWindow(clock)
			clock += int64(maxWindow)
			l.release(clock, 2*time.Millisecond, true) // the second returns and closes the window
			require.Zero(t, l.count.Load(), "the window closed")
			assert.Zero(t, l.probeFrom.Load(), "no probe")
			assert.Equal(t, int64(2*time.Millisecond), l.minRTT, "the unloaded latency")
			assert.Equal(t, int64(initialLimit), l.limit.Load(), "latency on target: the limit after the probe at start, held")
		})
	}
}

// TestLimiter_queue checks who gets a freed slot: the oldest waiter while
// the queue is new, the newest once it has stayed non-empty for lifoAfter.
func TestLimiter_queue(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name      string
		releaseAt time.Duration // after the first waiter came
		first     string
	}{
		{"oldest first while the queue is new", lifoAfter / 2, "old"},
		{"newest first once it has stayed non-empty", 2 * lifoAfter, "new"},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			stats := new(Stats)
			l := newLimiter(1, false, time.Second, stats, new(atomic.Int64))
			require.True(t, l.tryAcquire())
			t0 := int64(time.Hour)
			far := t0 + int64(time.Hour)
			order := make(chan string, 2)
			var wg sync.WaitGroup
			wait := func(name string, at int64) {
				defer wg.Done()
				if _, reason := l.acquire(nil, at, far, noDeadline); reason == "" {
					order <- name
				} else {
					order <- reason
				}
			}
			wg.Add(2)
			// Waiting in Stats counts a waiter once it is in the queue;
			// l.waiting counts it before, while it may still take a slot.
			go wait("old", t0)
			require.Eventually(t, func() bool { return stats.Snapshot().Waiting == 1 }, 10*time.Second, time.Millisecond)
			go wait("new", t0+1)
			require.Eventually(t, func() bool { return stats.Snapshot().Waiting == 2 }, 10*time.Second, time.Millisecond)
			assert.Equal(t, int64(2), stats.Snapshot().Waiting)

			l.release(t0+int64(c.releaseAt), 0, false)
			assert.Equal(t, c.first, receive(t, order, "a waiter's turn"))
			l.release(t0+int64(c.releaseAt), 0, false)
			receive(t, order, "a waiter's turn")
			wg.Wait()
			l.release(t0+int64(c.releaseAt), 0, false)
			assert.Zero(t, l.holding())
			assert.Zero(t, l.waiting.Load())
			assert.Equal(t, int64(2), stats.Snapshot().Queued)
			assert.Zero(t, stats.Snapshot().Waiting)
		})
	}
}

func TestLimiter_refusals(t *testing.T) {
	t.Parallel()
	t.Run("a waiter gives up after a tenth of its budget", func(t *testing.T) {
		t.Parallel()
		l := newLimiter(1, false, time.Second, new(Stats), new(atomic.Int64))
		require.True(t, l.tryAcquire())
		t0 := now()
		waited, reason := l.acquire(nil, t0, t0+int64(20*time.Millisecond), noDeadline)
		assert.Equal(t, RejectedQueueTimeout, reason)
		assert.GreaterOrEqual(t, waited, 2*time.Millisecond)
		assert.Zero(t, l.waiting.Load())
	})
	t.Run("no budget to wait is refused at once", func(t *testing.T) {
		t.Parallel()
		l := newLimiter(1, false, time.Second, new(Stats), new(atomic.Int64))
		require.True(t, l.tryAcquire())
		t0 := now()
		waited, reason := l.acquire(nil, t0, t0+int64(waitShare*minWait)-1, noDeadline)
		assert.Equal(t, RejectedQueueFull, reason)
		assert.Zero(t, waited)
	})
	t.Run("a full queue refuses the newcomer, or evicts the oldest once it has stayed non-empty", func(t *testing.T) {
		t.Parallel()
		l := newLimiter(1, false, time.Second, new(Stats), new(atomic.Int64))
		require.True(t, l.tryAcquire())
		t0 := int64(time.Hour)
		far := t0 + int64(time.Hour)
		reasons := make(chan string, minQueue+1)
		for i := range minQueue {
			go func() {
				_, reason := l.acquire(nil, t0+int64(i), far, noDeadline)
				reasons <- reason
			}()
			// In the queue, not only counted in l.waiting: see TestLimiter_queue.
			require.Eventually(t, func() bool { return l.stats.waiting.Load() == int64(i+1) }, 10*time.Second, time.Millisecond)
		}
		_, reason := l.acquire(nil, t0+int64(minQueue), far, noDeadline)
		assert.Equal(t, RejectedQueueFull, reason, "the queue is young: the newcomer is refused")

		go func() {
			_, reason := l.acquire(nil, t0+int64(2*lifoAfter), far, noDeadline)
			reasons <- reason
		}()
		assert.Equal(t, RejectedQueueFull, receive(t, reasons, "the newcomer's refusal"), "the queue has stayed full: the oldest waiter makes room")
		for range minQueue {
			l.release(t0+int64(2*lifoAfter), 0, false)
			assert.Empty(t, receive(t, reasons, "a waiter's admission"))
		}
		l.release(t0, 0, false)
		assert.Zero(t, l.holding())
		assert.Zero(t, l.waiting.Load())
	})
}

// TestLimiter_queue_of_a_huge_ceiling: a ceiling of math.MaxInt ("no ceiling")
// must not shrink the queue to minQueue: 2*ceiling overflowed.
func TestLimiter_queue_of_a_huge_ceiling(t *testing.T) {
	t.Parallel()
	for _, ceiling := range []int64{1000, math.MaxInt64/2 + 1, math.MaxInt64} {
		l := newLimiter(ceiling, true, time.Second, new(Stats), new(atomic.Int64))
		for l.tryAcquire() {
		}
		t0 := int64(time.Hour)
		far := t0 + int64(time.Hour)
		const waiters = minQueue + 8
		reasons := make(chan string, waiters)
		for range waiters {
			go func() {
				_, reason := l.acquire(nil, t0, far, noDeadline)
				reasons <- reason
			}()
		}
		require.Eventually(t, func() bool { return l.stats.waiting.Load()+int64(len(reasons)) == waiters }, 10*time.Second, time.Millisecond)
		assert.Zero(t, len(reasons), "ceiling %d: nobody refused while the queue holds 2*ceiling", ceiling)
		// Let every waiter through, one slot at a time, and give the slots back.
		require.Eventually(t, func() bool {
			if l.holding() > 0 {
				l.release(t0, 0, false)
			}
			return l.waiting.Load() == 0 && l.holding() == 0 && len(reasons) == waiters
		}, 10*time.Second, time.Millisecond)
	}
}

// TestLimiter_counts_arrivals: the slots word counts the handlers holding a
// slot and the slots taken, across the wrap of the latter; refusals are
// counted beside it.
func TestLimiter_counts_arrivals(t *testing.T) {
	t.Parallel()
	l := newLimiter(2, false, time.Second, new(Stats), new(atomic.Int64))
	l.slots.Store(math.MinInt64 | math.MaxInt32<<32) // taken: one short of the wrap
	at := now()
	for range 2 {
		_, reason := l.acquire(nil, at, at+int64(time.Second), noDeadline)
		require.Empty(t, reason)
	}
	assert.Equal(t, int64(2), l.holding())
	assert.Equal(t, uint32(1), l.taken(), "wrapped")
	_, reason := l.acquire(nil, at, at+int64(minWait), noDeadline) // no time to wait
	assert.Equal(t, RejectedQueueFull, reason)
	assert.Equal(t, int64(1), l.refused.Load())
	l.release(at, 0, false)
	l.release(at, 0, false)
	assert.Zero(t, l.holding())
	assert.Equal(t, uint32(1), l.taken(), "giving a slot back takes nothing from the count")
}

func TestMedianOf(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		in   []int64
		want int64
	}{
		{[]int64{5}, 5},
		{[]int64{3, 1, 2}, 2},
		{[]int64{9, 1, 8, 2}, 8},
		{[]int64{4, 4, 4, 1, 9}, 4},
	} {
		assert.Equal(t, c.want, medianOf(append([]int64(nil), c.in...)), "%v", c.in)
	}
}

// BenchmarkAdmission measures what admission adds to a request below the
// limit: taking a slot and giving it back (with a latency sample, for the
// adaptive limit). The goal is at most 50 ns and no allocation; compare
// with BenchmarkHandler's cooperative and cooperative-adaptive variants for
// the whole request.
func BenchmarkAdmission(b *testing.B) {
	for _, c := range []struct {
		name     string
		adaptive bool
		p        int
	}{
		{"fixed/p=1", false, 1},
		{"adaptive/p=1", true, 1},
		{"adaptive/p=32", true, 32},
	} {
		b.Run(c.name, func(b *testing.B) {
			l := newLimiter(1<<20, c.adaptive, time.Second, new(Stats), new(atomic.Int64))
			l.limit.Store(1 << 20) // below the limit, whatever the parallelism
			// Nor refused for the process's run queue: 64 goroutines on
			// two cores back it up, and the backlog would shed requests.
			l.shedAt.Store(math.MaxInt64)
			b.ReportAllocs()
			b.SetParallelism(c.p)
			b.RunParallel(func(pb *testing.PB) {
				t := now()
				for pb.Next() {
					t += int64(time.Microsecond)
					if _, reason := l.acquire(nil, t, t+int64(time.Second), noDeadline); reason != "" {
						b.Error(reason)
						return
					}
					l.release(t, time.Microsecond, true)
				}
			})
		})
	}
}

// Late handlers keep their slots until they return. Once they held the
// whole adaptive limit, nothing was admitted, so nothing returned in time
// or timed out, and the limit, which moves only on those, stayed where it
// was: handlers that hang refused every request for good. The limit now
// keeps limitFloor slots beyond them. Each case failed before: nothing was
// admitted for the rest of its fake minutes.
func TestLimiter_late_handlers_never_hold_every_slot(t *testing.T) {
	t.Parallel()
	t.Run("hung at a cold start", func(t *testing.T) {
		t.Parallel()
		l := seeded(newLimiter(1000, true, time.Second, new(Stats), new(atomic.Int64)))
		clock := int64(time.Hour)
		for range limitFloor { // the initial probe's slots, taken by handlers that hang
			require.True(t, l.tryAcquire())
		}
		clock += int64(time.Second)
		for range limitFloor { // they time out, and run on late
			l.late.Add(1)
			l.drop(clock, clock-int64(time.Second))
		}
		clock += int64(maxWindow)
		l.drop(clock, clock-int64(time.Second)) // a later timeout closes the window of drops
		admitted := 0
		for range 1000 {
			clock += int64(time.Millisecond)
			if l.tryAcquire() {
				admitted++
				l.release(clock, time.Millisecond, true)
			}
		}
		assert.Positive(t, admitted, "limit %d, %d slots held", l.limit.Load(), l.holding())
		assert.Zero(t, l.probeFrom.Load(), "the probe ends, measured beside the hung handlers")
	})
	t.Run("overload beside sleeping late handlers", func(t *testing.T) {
		t.Parallel()
		l := seeded(newLimiter(1000, true, 5*time.Second, new(Stats), new(atomic.Int64)))
		clock := warm(t, l, int64(time.Hour))
		// Four clients of 2 ms, and a handler that sleeps past its
		// deadline whenever the limit has room, up to 100.
		sleepers := int64(0)
		for range 20000 {
			if sleepers < 100 && l.limit.Load() > l.holding()+5 && l.tryAcquire() {
				sleepers++
				l.late.Add(1)
			}
			clock = simulate(l, clock, 1, 4, func(int) time.Duration { return 2 * time.Millisecond })
		}
		require.Equal(t, int64(100), sleepers, "the limit grew past the sleepers")
		// Then CPU-bound overload for two minutes, probes included: the
		// gradient and the probes pull the limit down.
		stalled := 0
		for end := clock + int64(2*time.Minute); clock < end; {
			n := 0
			for n < 10000 && l.tryAcquire() {
				n++
			}
			l.queuedInWin.Store(true)
			if n == 0 {
				stalled++
				clock += int64(time.Millisecond)
				continue
			}
			rtt := cpuBound(n)
			clock += int64(rtt)
			for range n {
				l.release(clock, rtt, true)
			}
		}
		assert.Zero(t, stalled, "rounds in which nothing was admitted")
		assert.GreaterOrEqual(t, l.limit.Load(), sleepers+limitFloor)
	})
	t.Run("clients gone", func(t *testing.T) {
		t.Parallel()
		// No timeouts at all: the handlers holding the limit are late
		// because their clients hung up. A request refused a slot then
		// closes the window that nothing else would.
		l := seeded(newLimiter(1000, true, time.Second, new(Stats), new(atomic.Int64)))
		clock := warm(t, l, int64(time.Hour))
		limit := l.limit.Load()
		for range limit {
			require.True(t, l.tryAcquire())
			l.late.Add(1)
		}
		clock += int64(maxWindow)
		_, reason := l.acquire(nil, clock, clock+int64(time.Second), noDeadline)
		assert.Empty(t, reason, "a request finds the slots beyond the late handlers")
		assert.Equal(t, limit+limitFloor, l.limit.Load())
	})
}

// TestLimiter_a_newcomer_stalled_past_a_windows_end_closes_it_by_the_clock:
// late handlers hold every slot of the adaptive limit, and nothing returns
// or times out: only a request refused a slot closes the window that keeps
// room beside them (see TestLimiter_late_handlers_never_hold_every_slot).
// The request read the clock on arrival and stalled (a slow TimeoutFunc)
// until after the window fell due. It went by its reading: the window was
// not due, so it queued behind the late handlers and, nothing else coming,
// was refused once its share had run out (queue_timeout). By the clock the
// window is over: it closes, and the request takes a slot beside them. A
// window due before the stall was closed at the reading, so the next
// started before the handlers admitted during the stall.
func TestLimiter_a_newcomer_stalled_past_a_windows_end_closes_it_by_the_clock(t *testing.T) {
	t.Parallel()
	const stall = time.Millisecond // after the arrival reading
	for _, c := range []struct {
		name string
		due  time.Duration // after the arrival reading, when the window falls due
	}{
		{"a window due during the stall", stall / 2},
		{"a window due before the stall", -stall},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			l := seeded(newLimiter(1000, true, time.Second, new(Stats), new(atomic.Int64)))
			warm(t, l, int64(time.Hour))
			// From here on the real clock: the stall is the test's.
			l.shedAt.Store(math.MaxInt64) // no refusal for the process's run queue
			limit := l.limit.Load()
			for range limit {
				require.True(t, l.tryAcquire())
				l.late.Add(1)
			}
			l.count.Store(0)
			l.drops.Store(0)
			at := now()
			l.windowStart.Store(at + int64(c.due) - int64(maxWindow))
			for d := at + int64(stall) - now(); d >= 0; d = at + int64(stall) - now() {
				time.Sleep(time.Duration(d) + 1)
			}
			resumed := now()
			_, reason := l.acquire(nil, at, at+int64(time.Second), noDeadline)
			assert.Empty(t, reason, "a request finds the slots beyond the late handlers")
			assert.Equal(t, limit+limitFloor, l.limit.Load())
			assert.GreaterOrEqual(t, l.windowFrom(), resumed, "the next window starts by the clock, %v early", time.Duration(resumed-l.windowFrom()))
		})
	}
}

// TestLimiter_a_probe_without_load_yields: a probe that began without load
// (at start, or called early while the limit did not bind) ends for the
// first request it would refuse, which then runs; a probe under load does
// not, and the request is refused as any other beyond the limit.
func TestLimiter_a_probe_without_load_yields(t *testing.T) {
	t.Parallel()
	for _, yields := range []bool{true, false} {
		// A new limit starts with a probe without load: the limit at its
		// floor, every slot held here.
		l := newLimiter(1000, true, time.Second, new(Stats), new(atomic.Int64))
		l.probeYields.Store(yields)   // false: as if adapt had started it under load
		l.shedAt.Store(math.MaxInt64) // no refusal for the process's run queue, which parallel tests back up
		for range limitFloor {
			require.True(t, l.tryAcquire())
		}
		// It may wait a tenth of 1 s of budget: 100 ms. Of 2 ms, a stall
		// of its goroutine on a loaded machine left it no time to wait
		// (queue_full, without queueing).
		clock := now()
		_, reason := l.acquire(nil, clock, clock+int64(time.Second), noDeadline)
		if yields {
			assert.Empty(t, reason, "the probe gave way")
			assert.Zero(t, l.probeFrom.Load(), "the probe is over")
			assert.Equal(t, int64(initialLimit), l.limit.Load(), "the limit is back")
			assert.True(t, l.probeOwed, "a probe under load is owed")
			assert.Equal(t, int64(limitFloor+1), l.holding())
		} else {
			assert.Equal(t, RejectedQueueTimeout, reason, "a probe under load refuses as the limit does")
			assert.NotZero(t, l.probeFrom.Load(), "the probe goes on")
			assert.Equal(t, int64(limitFloor), l.limit.Load())
		}
	}
}

// TestLimiter_a_yielding_probe_refuses_none_of_its_waiters: two requests
// wait behind a probe without load and reach the end of their wait
// together. The first to look ends the probe and takes a slot; the other
// had left the queue before the probe ended, so nothing handed it a slot,
// and it was refused (queue_timeout) although the limit was back and slots
// were free: a new limit under light load refused a request now and then.
// Not parallel: the hook is the process's.
func TestLimiter_a_yielding_probe_refuses_none_of_its_waiters(t *testing.T) {
	l := newLimiter(1000, true, time.Second, new(Stats), new(atomic.Int64))
	l.shedAt.Store(math.MaxInt64) // no refusal for the process's run queue, which parallel tests back up
	for range limitFloor {
		require.True(t, l.tryAcquire()) // the probe's slots, all held
	}
	release := make(chan struct{})
	var timedOut atomic.Int32
	hook := func(hooked *limiter) {
		// The first waiter to give up waits here, out of the queue, until
		// the other has ended the probe.
		if hooked == l && timedOut.Add(1) == 1 {
			<-release
		}
	}
	testHookQueueTimedOut.Store(&hook)
	t.Cleanup(func() { testHookQueueTimedOut.Store(nil) })

	reasons := make(chan string, 2)
	for range 2 {
		go func() {
			// Each may wait a tenth of 1 s of budget: 100 ms. Of 2 ms, a
			// stall on a loaded machine could leave it no time to wait.
			clock := now()
			_, reason := l.acquire(nil, clock, clock+int64(time.Second), noDeadline)
			reasons <- reason
		}()
	}
	assert.Empty(t, <-reasons, "the probe gave way")
	require.Zero(t, l.probeFrom.Load(), "the probe is over")
	close(release)
	assert.Empty(t, <-reasons, "a slot is free: the request the probe held back runs")
	assert.Equal(t, int64(limitFloor+2), l.holding())
}

// TestLimiter_a_request_held_by_a_probe_waits_for_its_end: two requests
// wait behind a probe without load and reach the end of their wait
// together. The first to look ends the probe; the other, looking while the
// probe was ending (no longer giving way, its floor not yet lifted), found
// no slot under the floor and was refused (queue_timeout), although the
// limit was coming back: which of them was refused depended on goroutine
// order (a new limit under light load refused a request now and then, in
// TestAdmission_a_new_limit_refuses_nothing_at_light_load). A request the
// probe held back now waits for the probe's end before it looks for a
// slot. Not parallel: the hooks are the process's.
func TestLimiter_a_request_held_by_a_probe_waits_for_its_end(t *testing.T) {
	l := newLimiter(1000, true, time.Second, new(Stats), new(atomic.Int64))
	l.shedAt.Store(math.MaxInt64) // no refusal for the process's run queue, which parallel tests back up
	for range limitFloor {
		require.True(t, l.tryAcquire()) // the probe's slots, all held
	}
	reasons := make(chan string, 2)
	looked := make(chan struct{}) // the other request has its answer
	var ending atomic.Int32
	hook := func(hooked *limiter) {
		// The first to end the probe stops halfway, until the other has
		// its answer, or for a while if it waits for the probe's end.
		if hooked == l && ending.Add(1) == 1 {
			select {
			case <-looked:
			case <-time.After(300 * time.Millisecond):
			}
		}
	}
	testHookProbeEnding.Store(&hook)
	t.Cleanup(func() { testHookProbeEnding.Store(nil) })

	for range 2 {
		go func() {
			// Each may wait a tenth of 1 s of budget: 100 ms. Of 2 ms, a
			// stall on a loaded machine could leave it no time to wait.
			clock := now()
			_, reason := l.acquire(nil, clock, clock+int64(time.Second), noDeadline)
			reasons <- reason
		}()
	}
	first := <-reasons
	close(looked)
	second := <-reasons
	assert.Empty(t, first, "the first answer")
	assert.Empty(t, second, "the second answer")
	assert.Zero(t, l.probeFrom.Load(), "the probe is over")
	assert.Equal(t, int64(limitFloor+2), l.holding())
}

// TestLimiter_a_probe_ends_above_the_late_handlers: a probe called under
// load restores the limit it computed before it began, but handlers that
// were running then may have timed out during the probe, late, and hold
// more slots than that limit. The limit fell under them when the probe
// ended: nothing was admitted until a window with no event at all raised
// it again. As everywhere else, it keeps limitFloor slots beyond them.
func TestLimiter_a_probe_ends_above_the_late_handlers(t *testing.T) {
	t.Parallel()
	l := seeded(newLimiter(1000, true, time.Second, new(Stats), new(atomic.Int64)))
	clock := warm(t, l, int64(time.Hour))
	require.Equal(t, int64(initialLimit), l.limit.Load())
	// A probe under load, to come back to the limit of now.
	l.restore = l.limit.Load()
	l.probeFrom.Store(clock)
	l.count.Store(0)
	l.windowStart.Store(clock)
	l.setLimit(l.lateFloor(), clock)
	// Thirty handlers admitted before it time out during it, and hold
	// their slots.
	const late = 30
	l.slots.Add(late * oneSlot)
	l.late.Add(late)
	clock += int64(maxWindow)
	l.adapt(clock) // a window without events: room beside them
	require.Equal(t, int64(late+limitFloor), l.limit.Load())
	// Handlers admitted in the probe return in time: it ends.
	for l.probeFrom.Load() != 0 {
		require.True(t, l.tryAcquire(), "in the probe")
		clock += int64(time.Millisecond)
		l.release(clock, time.Millisecond, true)
	}
	assert.GreaterOrEqual(t, l.limit.Load(), int64(late+limitFloor))
	assert.True(t, l.tryAcquire(), "limit %d, %d slots held", l.limit.Load(), l.holding())
}

// A long poll that moved its deadline (Extend, Disarm) and then went late
// (its new deadline passed, or its client left) holds one slot: it counts
// among the late handlers from then on, not among the moved ones too, or
// the adaptive limit would keep twice the room beyond it.
func TestLimiter_a_moved_handler_gone_late_counts_once(t *testing.T) {
	t.Parallel()
	stats := new(Stats)
	type counts struct{ moved, late int64 }
	seen := make(chan counts, 1)
	release := make(chan struct{})
	h := New(func(ctx *fasthttp.RequestCtx) {
		m := lookup(ctx).m
		if !Extend(ctx, time.Millisecond) {
			seen <- counts{-1, -1}
			return
		}
		c := Context(ctx)
		<-c.Done() // the racing call has timed out: its timer settled it
		seen <- counts{m.limiter.moved.Load(), m.late.Load()}
		<-release
	}, Config{Timeout: time.Second, AdaptiveConcurrency: true, Stats: stats, IgnoreHangups: true})
	client := serveInMemory(t, h)

	status, _, err := client.GetTimeout(nil, "http://test/", time.Minute)
	require.NoError(t, err)
	require.Equal(t, fasthttp.StatusGatewayTimeout, status)
	var got counts
	select {
	case got = <-seen:
	case <-time.After(30 * time.Second):
		t.Fatal("the handler never saw its context end")
	}
	close(release)
	assert.Equal(t, counts{moved: 0, late: 1}, got)
	require.Eventually(t, func() bool { return stats.Snapshot().InFlight == 0 }, 30*time.Second, time.Millisecond)
}

// TestAdmission_a_slot_granted_past_the_deadline_runs_nothing: a queued
// request handed its slot once its deadline has passed (its goroutine ran
// that late) is answered with the timeout response without running: its
// handler would only start cancelled. Its slot is given back, and the
// adaptive limit counts a timeout, as if it had run.
func TestAdmission_a_slot_granted_past_the_deadline_runs_nothing(t *testing.T) {
	// Not parallel: testHookQueued is global.
	for _, adaptive := range []bool{false, true} {
		t.Run(map[bool]string{false: "fixed", true: "adaptive"}[adaptive], func(t *testing.T) {
			stats := new(Stats)
			var l atomic.Pointer[limiter]
			release := make(chan struct{})
			var runs atomic.Int32
			h := New(func(ctx *fasthttp.RequestCtx) {
				runs.Add(1)
				l.Store(lookup(ctx).m.limiter)
				<-release
			}, Config{Timeout: time.Second, MaxConcurrency: 1, AdaptiveConcurrency: adaptive, Stats: stats, IgnoreHangups: true})
			var once sync.Once
			hook := func(hooked *limiter, ready chan bool, deadline int64) {
				if hooked != l.Load() {
					return
				}
				once.Do(func() {
					close(release) // the running handler returns and hands its slot over
					assert.Eventually(t, func() bool { return len(ready) == 1 }, 30*time.Second, time.Millisecond, "the slot handed over")
					for d := deadline - now(); d > 0; d = deadline - now() {
						time.Sleep(time.Duration(d)) // the queued request's goroutine runs past its deadline
					}
					// No window closes, and clears its drops, before the test reads them.
					hooked.windowStart.Store(now() + int64(time.Hour))
				})
			}
			testHookQueued.Store(&hook)
			t.Cleanup(func() { testHookQueued.Store(nil) })
			client := serveInMemory(t, h)

			first := getAsync(t, client, "/first")
			require.Eventually(t, func() bool { return l.Load() != nil }, 30*time.Second, time.Millisecond, "the first handler runs")
			status, body, err := client.GetTimeout(nil, "http://test/second", time.Minute)
			require.NoError(t, err)
			assert.Equal(t, fasthttp.StatusGatewayTimeout, status)
			assert.Equal(t, DefaultBody, string(body))
			assert.Equal(t, fasthttp.StatusOK, receive(t, first, "first answer"))

			assert.Equal(t, int32(1), runs.Load(), "only the first handler ran")
			got := stats.Snapshot()
			assert.Equal(t, int64(1), got.SpentBudgets)
			assert.Equal(t, int64(1), got.Timeouts)
			assert.Equal(t, int64(1), got.Admitted, "the late grant is not an admission")
			assert.Equal(t, int64(1), got.Queued)
			require.Eventually(t, func() bool { return l.Load().holding() == 0 }, 30*time.Second, time.Millisecond, "every slot given back")
			if adaptive {
				assert.Equal(t, int64(1), l.Load().drops.Load(), "a timeout to the limit")
			}
		})
	}
}

// slotHolder is the handler of tests of a limit of one slot: the request
// to /first holds its slot until release is closed. It counts the handlers
// run and keeps the limiter they ran under, whose probe at start it stops
// from giving way to the first request it would refuse (its design, which
// a probe under load does not share).
type slotHolder struct {
	runs    atomic.Int32
	limiter atomic.Pointer[limiter]
	release chan struct{}
}

func newSlotHolder() *slotHolder { return &slotHolder{release: make(chan struct{})} }

func (s *slotHolder) serve(ctx *fasthttp.RequestCtx) {
	s.runs.Add(1)
	l := lookup(ctx).m.limiter
	l.probeYields.Store(false)
	s.limiter.Store(l)
	if string(ctx.Path()) == "/first" {
		<-s.release
	}
}

// TestAdmission_a_slot_freed_after_a_waiters_share_ran_out_is_not_its: a
// queued request whose share of its budget has run out, and a handler
// returning, are due at the same moment after a stall (or on a starved
// process). The return handed the slot over without looking at the
// waiter's time, so the request ran, with a good part of its budget gone,
// whenever the returning goroutine ran before the waiter's timer, and was
// refused (queue_timeout) otherwise. By the clock its wait is over: it is
// refused, whichever goroutine runs first. Not parallel: testHookQueued is
// the process's.
func TestAdmission_a_slot_freed_after_a_waiters_share_ran_out_is_not_its(t *testing.T) {
	for _, mode := range []Mode{Racing, Cooperative} {
		for _, adaptive := range []bool{false, true} {
			t.Run(fmt.Sprintf("%v/adaptive=%v", mode, adaptive), func(t *testing.T) {
				stats := new(Stats)
				holder := newSlotHolder()
				l, release, runs := &holder.limiter, holder.release, &holder.runs
				h := New(holder.serve, Config{Timeout: time.Second, Mode: mode, MaxConcurrency: 1, AdaptiveConcurrency: adaptive, Stats: stats, IgnoreHangups: true})
				var once sync.Once
				hook := func(hooked *limiter, ready chan bool, deadline int64) {
					if hooked != l.Load() {
						return
					}
					once.Do(func() {
						// The request was queued at or before now: its share
						// of the budget ends by shareEnd.
						at := now()
						shareEnd := at + (deadline-at)/waitShare
						for d := shareEnd - now(); d >= 0; d = shareEnd - now() {
							time.Sleep(time.Duration(d) + 1) // its goroutine runs again only once its share has run out
						}
						close(release) // the running handler returns, its slot free
						assert.Eventually(t, func() bool { return len(ready) == 1 }, 30*time.Second, time.Millisecond, "the waiter handed the slot or refused")
					})
				}
				testHookQueued.Store(&hook)
				t.Cleanup(func() { testHookQueued.Store(nil) })
				client := serveInMemory(t, h)

				first := getAsync(t, client, "/first")
				require.Eventually(t, func() bool { return l.Load() != nil }, 30*time.Second, time.Millisecond, "the first handler runs")
				status, _, err := client.GetTimeout(nil, "http://test/second", time.Minute)
				require.NoError(t, err)
				assert.Equal(t, fasthttp.StatusServiceUnavailable, status)
				assert.Equal(t, fasthttp.StatusOK, receive(t, first, "first answer"))

				assert.Equal(t, int32(1), runs.Load(), "only the first handler ran")
				require.Eventually(t, func() bool { return stats.Snapshot().InFlight == 0 }, 30*time.Second, time.Millisecond)
				got := stats.Snapshot()
				assert.Equal(t, int64(1), got.Admitted)
				assert.Equal(t, int64(1), got.Queued)
				assert.Equal(t, int64(1), got.RejectedQueueTimeout)
				assert.Equal(t, int64(1), got.Rejected)
				assert.Zero(t, got.SpentBudgets)
				assert.Zero(t, got.Waiting)
				assert.Zero(t, l.Load().holding(), "every slot given back")
			})
		}
	}
}

// TestWaiter_no_stale_tick_in_the_pool runs itself again in a child process
// with Go's timers before 1.23 (GODEBUG=asynctimerchan=1), where a timer's
// tick waits in its channel: a waiter's tick that came as its slot was
// handed over must not stay there for the next request that takes the
// waiter from the pool, or that request's wait ends at once, refused.
func TestWaiter_no_stale_tick_in_the_pool(t *testing.T) {
	t.Parallel()
	if !godebugtest.Child(t, "asynctimerchan=1") {
		return
	}
	w := waiterPool.New().(*waiter)
	w.timer.Reset(time.Nanosecond) // fires while the waiter takes its slot
	require.Eventually(t, func() bool { return len(w.timer.C) == 1 }, 10*time.Second, time.Millisecond,
		"the tick never waited in the channel: GODEBUG=asynctimerchan=1 is not in effect")
	w.stopTimer()
	require.Zero(t, len(w.timer.C), "a tick stayed in the timer's channel")
}

// TestLimiter_a_timeout_that_closes_a_window_keeps_room_beside_its_handler:
// the timeout of a handler is a drop to the adaptive limit, and the drop
// may close a window; the handler runs on, late, holding its slot. The
// window closed before the handler was counted late, so the limit kept
// limitFloor slots beyond the other late handlers only: one fewer than the
// rule, beside every handler that went late that way.
func TestLimiter_a_timeout_that_closes_a_window_keeps_room_beside_its_handler(t *testing.T) {
	t.Parallel()
	m := &middleware{settings: Config{Timeout: time.Second, AdaptiveConcurrency: true, IgnoreHangups: true}.resolve()}
	m.limiter = newLimiter(int64(m.MaxConcurrency), true, m.Timeout, m.stats, &m.late)
	l := m.limiter
	clock := warm(t, l, int64(time.Hour))
	require.Equal(t, int64(initialLimit), l.limit.Load())
	// Twelve handlers hold slots, and time out: the first eleven in a new
	// window, the last as it closes, with no return in time (the limit
	// halves, to 10, under the room beside them).
	l.count.Store(0)
	l.drops.Store(0)
	l.windowStart.Store(clock)
	const hung = 12
	for i := range hung {
		require.True(t, l.tryAcquire())
		c := &call{m: m, admitted: clock}
		c.state.Store(generation | callRunning)
		c.deadline.Store(clock)
		c.slot.Store(slotHeld)
		at := clock
		if i == hung-1 {
			at += int64(maxWindow)
		}
		require.True(t, c.settle(callTimedOut, at))
	}
	require.Zero(t, l.drops.Load(), "the last timeout closed the window")
	require.Equal(t, int64(hung), m.late.Load())
	assert.Equal(t, int64(hung+limitFloor), l.limit.Load(), "limitFloor slots beyond the %d late handlers", hung)
}

// TestLimiter_a_waiter_is_refused_at_shutdown_even_as_its_wait_runs_out: a
// request that leaves the queue as its server shuts down is refused, as
// docs/overload.md says. One whose share of its budget had run out by then
// (a loaded machine ran its goroutine late) was taken for a request that
// waited out its share, and a probe without load gave way to it: it was
// admitted, and its handler ran during the shutdown, in the probe's place.
// Not parallel: testHookQueued is the process's.
func TestLimiter_a_waiter_is_refused_at_shutdown_even_as_its_wait_runs_out(t *testing.T) {
	ctx, shutdown := heldRequest(t)
	shutdown()
	receive(t, serverDone(ctx), "the server's Done")
	l := newLimiter(1000, true, time.Second, new(Stats), new(atomic.Int64))
	l.shedAt.Store(math.MaxInt64) // no refusal for the process's run queue
	for range limitFloor {
		require.True(t, l.tryAcquire()) // the probe's slots, all held
	}
	at := now()
	deadline := at + int64(20*time.Millisecond)
	share := at + (deadline-at)/waitShare
	hook := func(hooked *limiter, _ chan bool, _ int64) {
		if hooked != l {
			return
		}
		for d := share - now(); d > 0; d = share - now() {
			time.Sleep(time.Duration(d)) // queued, its goroutine runs again only once its share has run out
		}
	}
	testHookQueued.Store(&hook)
	t.Cleanup(func() { testHookQueued.Store(nil) })
	_, reason := l.acquire(ctx, at, deadline, noDeadline)
	assert.Equal(t, RejectedQueueFull, reason)
	assert.Equal(t, int64(limitFloor), l.holding(), "nothing admitted")
	assert.NotZero(t, l.probeFrom.Load(), "the probe goes on")
}

// TestLimiter_a_request_with_no_time_to_wait_before_its_caller_gives_up_is_not_queued:
// a request that finds no slot free when its caller gives up
// (Config.MaxQueueAge) in less than minWait, or at once, gets the timeout
// response without queueing, as one whose share of its budget is that short
// is refused without queueing: it cannot wait, so it is not counted in
// Stats.Queued, nor in QueueWait. It was queued with a wait of zero (or a
// few microseconds), counted as queued, and answered on leaving the queue.
func TestLimiter_a_request_with_no_time_to_wait_before_its_caller_gives_up_is_not_queued(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name   string
		left   time.Duration // at its arrival, until its caller gives up
		queued bool
	}{
		{"its caller gives up as it arrives", 0, false},
		{"its caller gives up within minWait", minWait - 1, false},
		// Not exactly at minWait: that counts from the clock as the
		// limiter takes the queue's lock, after the reading at, and a
		// loaded machine may stall in between.
		{"its caller gives up well after minWait: it waits", time.Second, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			stats := new(Stats)
			l := newLimiter(1, false, time.Second, stats, new(atomic.Int64))
			require.True(t, l.tryAcquire()) // no slot free, and none freed
			at := now()
			waited, reason := l.acquire(nil, at, at+int64(time.Minute), at+int64(c.left))
			assert.Equal(t, spentBudget, reason, "the timeout response: its caller gives up before a slot is free")
			got := stats.Snapshot()
			if c.queued {
				assert.Equal(t, int64(1), got.Queued)
				assert.Equal(t, int64(1), stats.QueueWait().Count)
			} else {
				assert.Zero(t, waited)
				assert.Zero(t, got.Queued, "a request that cannot wait is not queued")
				assert.Zero(t, stats.QueueWait().Count)
			}
			assert.Zero(t, got.Rejected, "not a 503")
			assert.Zero(t, got.Waiting)
			assert.Zero(t, l.waiting.Load())
			assert.Equal(t, int64(1), l.refused.Load(), "an arrival turned away, for the backlog")
			assert.Equal(t, int64(1), l.holding(), "no slot taken")
		})
	}
}

// TestAdmission_a_slot_handed_over_after_a_stall_goes_by_the_clock: a
// handler returns and its slot is to go to a queued request, but the
// goroutine handing it over stalls (a wait for the queue's lock, or a
// stopped process) until the waiter's share of its budget has run out.
// Dispatch went by the returning handler's reading of the clock, taken
// before the stall, and handed the slot over: the request ran, where its
// wait was over by the clock, and which it got depended on whether its
// own timer's goroutine took the lock first. By the clock of the hand-over
// it is refused (queue_timeout). Not parallel: testHookDispatching is the
// process's.
func TestAdmission_a_slot_handed_over_after_a_stall_goes_by_the_clock(t *testing.T) {
	for _, mode := range []Mode{Racing, Cooperative} {
		for _, adaptive := range []bool{false, true} {
			t.Run(fmt.Sprintf("%v/adaptive=%v", mode, adaptive), func(t *testing.T) {
				stats := new(Stats)
				holder := newSlotHolder()
				l, release, runs := &holder.limiter, holder.release, &holder.runs
				h := New(holder.serve, Config{Timeout: time.Second, Mode: mode, MaxConcurrency: 1, AdaptiveConcurrency: adaptive, Stats: stats, IgnoreHangups: true})
				var armed atomic.Bool
				hook := func(hooked *limiter) {
					if hooked != l.Load() || !armed.CompareAndSwap(true, false) {
						return
					}
					// The returning handler's hand-over, the queue's lock
					// held: it stalls until the waiter's wait is over.
					if !assert.NotNil(t, hooked.head, "a waiter") {
						return
					}
					until := hooked.head.until
					for d := until - now(); d >= 0; d = until - now() {
						time.Sleep(time.Duration(d) + 1)
					}
				}
				testHookDispatching.Store(&hook)
				t.Cleanup(func() { testHookDispatching.Store(nil) })
				client := serveInMemory(t, h)

				first := getAsync(t, client, "/first")
				require.Eventually(t, func() bool { return l.Load() != nil }, 30*time.Second, time.Millisecond, "the first handler runs")
				second := getAsync(t, client, "/second")
				require.Eventually(t, func() bool { return stats.Snapshot().Waiting == 1 }, 30*time.Second, time.Millisecond, "the second request waits")
				armed.Store(true)
				close(release) // the first handler returns, its slot to be handed over
				assert.Equal(t, fasthttp.StatusOK, receive(t, first, "first answer"))
				assert.Equal(t, fasthttp.StatusServiceUnavailable, receive(t, second, "second answer"))

				assert.False(t, armed.Load(), "the hand-over stalled")
				assert.Equal(t, int32(1), runs.Load(), "only the first handler ran")
				require.Eventually(t, func() bool { return stats.Snapshot().InFlight == 0 }, 30*time.Second, time.Millisecond)
				got := stats.Snapshot()
				assert.Equal(t, int64(1), got.Admitted)
				assert.Equal(t, int64(1), got.Queued)
				assert.Equal(t, int64(1), got.RejectedQueueTimeout)
				assert.Equal(t, int64(1), got.Rejected)
				assert.Zero(t, got.Waiting)
				assert.Zero(t, l.Load().holding(), "every slot given back")
			})
		}
	}
}

// TestAdmission_a_waiter_stalled_before_its_timer_is_set_waits_until_its_end:
// a request is queued, and its goroutine stalls once it has released the
// queue's lock, before it sets the timer of its wait (descheduled, or a
// stopped process). The timer was set for the whole wait from then, so it
// ran the stall's length past the wait's end by the clock, where dispatch
// already refuses the request: with nothing freed, its 503 came that much
// late. It is set for the time left until the wait's end (none, past it:
// due at once), and the request is refused (queue_timeout) as before. Not
// parallel: testHookQueued and testHookWaitArmed are the process's.
func TestAdmission_a_waiter_stalled_before_its_timer_is_set_waits_until_its_end(t *testing.T) {
	for _, stallPast := range []bool{false, true} {
		for _, adaptive := range []bool{false, true} {
			name := map[bool]string{false: "a stall within the wait", true: "a stall past the wait's end"}[stallPast]
			t.Run(fmt.Sprintf("adaptive=%v/%s", adaptive, name), func(t *testing.T) {
				stats := new(Stats)
				holder := newSlotHolder()
				l, release := &holder.limiter, holder.release
				h := New(holder.serve, Config{Timeout: time.Second, MaxConcurrency: 1, AdaptiveConcurrency: adaptive, Stats: stats, IgnoreHangups: true})
				var resumedAt, until atomic.Int64
				stalled := func(hooked *limiter, _ chan bool, _ int64) {
					if hooked != l.Load() {
						return
					}
					hooked.mu.Lock()
					end := hooked.head.until // the only waiter: nothing is freed
					hooked.mu.Unlock()
					at := end // past the wait's end, or half way from now to it
					if !stallPast {
						at = now() + (end-now())/2
					}
					for d := at - now(); d >= 0; d = at - now() {
						time.Sleep(time.Duration(d) + 1)
					}
					resumedAt.Store(now())
				}
				armed := make(chan time.Duration, 1)
				arm := func(hooked *limiter, end int64, d time.Duration) {
					if hooked == l.Load() {
						until.Store(end)
						armed <- d
					}
				}
				testHookQueued.Store(&stalled)
				testHookWaitArmed.Store(&arm)
				t.Cleanup(func() {
					testHookQueued.Store(nil)
					testHookWaitArmed.Store(nil)
				})
				client := serveInMemory(t, h)

				first := getAsync(t, client, "/first")
				require.Eventually(t, func() bool { return l.Load() != nil }, 30*time.Second, time.Millisecond, "the first handler runs")
				second := getAsync(t, client, "/second")
				d := receive(t, armed, "the second request's timer set")
				if stallPast {
					assert.LessOrEqual(t, d, time.Duration(0), "the wait is over by the clock: the timer is due at once")
				}
				assert.LessOrEqual(t, resumedAt.Load()+int64(d), until.Load(), "the timer runs %v past the wait's end", time.Duration(resumedAt.Load()+int64(d)-until.Load()))
				assert.Equal(t, fasthttp.StatusServiceUnavailable, receive(t, second, "second answer"))
				close(release)
				assert.Equal(t, fasthttp.StatusOK, receive(t, first, "first answer"))

				assert.Equal(t, int32(1), holder.runs.Load(), "only the first handler ran")
				require.Eventually(t, func() bool { return stats.Snapshot().InFlight == 0 }, 30*time.Second, time.Millisecond)
				got := stats.Snapshot()
				assert.Equal(t, int64(1), got.Queued)
				assert.Equal(t, int64(1), got.RejectedQueueTimeout)
				assert.Equal(t, int64(1), got.Rejected)
				assert.Zero(t, got.Waiting)
				assert.Zero(t, l.Load().holding(), "every slot given back")
			})
		}
	}
}

// TestAdmission_a_newcomer_stalled_on_its_way_to_the_queue_goes_by_the_clock:
// a request reads the clock as it reaches the middleware, and stalls before
// it takes the queue's lock (here in its TimeoutFunc; a wait for the lock
// or a stopped process does the same). Meanwhile the queue fills, or stays
// busy, for longer than lifoAfter. The queue's decisions went by the
// newcomer's reading: a full queue that had stayed busy refused the
// newcomer rather than evict its oldest waiter, and a queue the newcomer
// started counted as busy from before the newcomer reached it, so it served
// the newest first sooner. By the clock under the lock the newcomer is
// queued, the oldest waiter giving way (queue_full), and the queue is busy
// from when it became so. Not parallel: the stall is timed by the clock.
func TestAdmission_a_newcomer_stalled_on_its_way_to_the_queue_goes_by_the_clock(t *testing.T) {
	for _, mode := range []Mode{Racing, Cooperative} {
		for _, adaptive := range []bool{false, true} {
			for _, full := range []bool{true, false} {
				name := map[bool]string{true: "a full queue that stayed busy evicts its oldest waiter", false: "a queue is busy from when it became so"}[full]
				t.Run(fmt.Sprintf("%v/adaptive=%v/%s", mode, adaptive, name), func(t *testing.T) {
					stats := new(Stats)
					holder := newSlotHolder()
					l, release, runs := &holder.limiter, holder.release, &holder.runs
					stalled, resume := make(chan int64, 1), make(chan struct{})
					var resumedAt atomic.Int64
					h := New(holder.serve, Config{
						Timeout: time.Minute, Mode: mode, MaxConcurrency: 1, AdaptiveConcurrency: adaptive, Stats: stats, IgnoreHangups: true,
						TimeoutFunc: func(ctx *fasthttp.RequestCtx) time.Duration {
							if string(ctx.Path()) == "/newcomer" {
								stalled <- now() // after the middleware's reading
								<-resume
								resumedAt.Store(now())
							}
							return 0 // Timeout
						},
					})
					client := serveInMemory(t, h)
					get := func(path string) <-chan int { return getAsync(t, client, path) }
					busyFor := func() time.Duration {
						l := l.Load()
						l.mu.Lock()
						defer l.mu.Unlock()
						if l.busySince == 0 {
							return 0
						}
						return time.Duration(now() - l.busySince)
					}

					first := get("/first")
					require.Eventually(t, func() bool { return l.Load() != nil }, 30*time.Second, time.Millisecond, "the first handler runs")
					newcomer := get("/newcomer")
					stalledAt := receive(t, stalled, "the newcomer's stall")
					var waiters []<-chan int
					if full {
						for i := range minQueue {
							waiters = append(waiters, get(fmt.Sprintf("/waiter/%d", i)))
							require.Eventually(t, func() bool { return stats.Snapshot().Waiting == int64(i+1) }, 30*time.Second, time.Millisecond, "waiter %d queued", i)
						}
						require.Eventually(t, func() bool { return busyFor() > lifoAfter }, 30*time.Second, time.Millisecond, "the queue stays busy")
					} else {
						require.Eventually(t, func() bool { return time.Duration(now()-stalledAt) > lifoAfter }, 30*time.Second, time.Millisecond, "the newcomer stalls")
					}
					close(resume)
					if full {
						select {
						case status := <-newcomer:
							// Refused at once; the waiters would wait out their share.
							t.Errorf("the newcomer answered %d before the oldest waiter gave way", status)
							close(release)
							return
						case status := <-waiters[0]:
							assert.Equal(t, fasthttp.StatusServiceUnavailable, status, "the oldest waiter gives way")
						case <-time.After(30 * time.Second):
							t.Fatal("neither the newcomer nor the oldest waiter answered within 30s")
						}
						waiters = waiters[1:]
					} else {
						require.Eventually(t, func() bool { return stats.Snapshot().Waiting == 1 }, 30*time.Second, time.Millisecond, "the newcomer queued")
						l := l.Load()
						l.mu.Lock()
						busySince := l.busySince
						l.mu.Unlock()
						assert.GreaterOrEqual(t, busySince, resumedAt.Load(), "the queue busy from before the newcomer reached it, %v early", time.Duration(resumedAt.Load()-busySince))
					}
					close(release)
					assert.Equal(t, fasthttp.StatusOK, receive(t, first, "the first answer"))
					assert.Equal(t, fasthttp.StatusOK, receive(t, newcomer, "the newcomer's answer"), "the newcomer queued and ran")
					for i, w := range waiters {
						assert.Equal(t, fasthttp.StatusOK, receive(t, w, "a waiter's answer"), "waiter %d", i+1)
					}
					assert.Equal(t, int32(2+len(waiters)), runs.Load())
					require.Eventually(t, func() bool { return stats.Snapshot().InFlight == 0 }, 30*time.Second, time.Millisecond)
					got := stats.Snapshot()
					assert.Equal(t, map[bool]int64{true: 1, false: 0}[full], got.RejectedFull)
					assert.Equal(t, got.RejectedFull, got.Rejected)
					assert.Equal(t, int64(1+len(waiters)+map[bool]int{true: 1, false: 0}[full]), got.Queued)
					assert.Zero(t, got.Waiting)
				})
			}
		}
	}
}

// TestAdmission_a_waiter_that_gives_way_is_refused_by_the_clock: the oldest
// waiter of a full queue that has stayed busy gives way to a newcomer, and
// its goroutine runs again only once its share of its budget has run out
// (after a stall, or on a starved process). Its refusal went by when its
// goroutine ran: a waiter pushed out with time left to wait was counted as
// a timeout (queue_timeout), as if it had waited its share. By the clock
// as it gave way, it is refused for the full queue (queue_full), however
// late its goroutine runs; one whose wait was already over then is refused
// as its timer would have it, queue_timeout (RejectedFull and
// RejectedQueueTimeout in Stats). So with MaxQueueAge, where its wait ends
// as its caller gives up: a waiter pushed out before then was answered with
// the timeout response (a spent budget) if its goroutine ran after. Not
// parallel: testHookQueued is the process's.
func TestAdmission_a_waiter_that_gives_way_is_refused_by_the_clock(t *testing.T) {
	for _, c := range []struct {
		name        string
		maxQueueAge time.Duration // its wait ends then rather than at its share
		waitOver    bool          // the oldest waiter's wait is over when it gives way
		want        string
	}{
		{"with time left to wait it is refused for the full queue", 0, false, RejectedQueueFull},
		{"with its wait over it is refused as waited out", 0, true, RejectedQueueTimeout},
		{"with time left before its caller gives up it is refused for the full queue", time.Second, false, RejectedQueueFull},
		{"with its caller given up it gets the timeout response", time.Second, true, spentBudget},
	} {
		for _, adaptive := range []bool{false, true} {
			t.Run(fmt.Sprintf("adaptive=%v/%s", adaptive, c.name), func(t *testing.T) {
				stats := new(Stats)
				holder := newSlotHolder()
				l, release, runs := &holder.limiter, holder.release, &holder.runs
				wake := make(chan struct{})
				// With c.maxQueueAge, only the oldest waiter's caller gives up
				// that soon: its proxy stamped it queueAge-c.maxQueueAge ago.
				// The others' MaxQueueAge is queueAge, which no wait here
				// comes near: with c.maxQueueAge for all, the waiters, served
				// newest first after the oldest's end, had a few
				// milliseconds left, and a loaded machine ran them late.
				const queueAge = 10 * time.Minute
				cfg := Config{
					Timeout: time.Minute, MaxConcurrency: 1, AdaptiveConcurrency: adaptive, Stats: stats, IgnoreHangups: true,
					TimeoutFunc: func(ctx *fasthttp.RequestCtx) time.Duration {
						switch {
						case string(ctx.Path()) != "/oldest":
							return 0 // Timeout
						case c.maxQueueAge == 0:
							return 10 * time.Second // a share of 1 s: the rest of the queue comes well within it
						default:
							return time.Hour // a share far beyond its caller's patience
						}
					},
				}
				if c.maxQueueAge > 0 {
					cfg.MaxQueueAge, cfg.HonorQueueHeaders = queueAge, true
				}
				h := New(holder.serve, cfg)
				oldestReady := make(chan chan bool, 1)
				var hooked atomic.Bool
				hook := func(hl *limiter, ready chan bool, _ int64) {
					if hl != l.Load() || !hooked.CompareAndSwap(false, true) {
						return
					}
					oldestReady <- ready
					<-wake // the oldest waiter's goroutine stalls
				}
				testHookQueued.Store(&hook)
				t.Cleanup(func() { testHookQueued.Store(nil) })
				client := serveInMemory(t, func(ctx *fasthttp.RequestCtx) {
					if string(ctx.Path()) == "/oldest" && c.maxQueueAge > 0 {
						stamp := time.Now().Add(c.maxQueueAge - queueAge).UnixMilli()
						ctx.Request.Header.Set("X-Request-Start", fmt.Sprintf("t=%d.%03d", stamp/1000, stamp%1000))
					}
					h(ctx)
				})
				get := func(path string) <-chan int { return getAsync(t, client, path) }
				queue := func() (busySince, oldestUntil int64) {
					l := l.Load()
					l.mu.Lock()
					defer l.mu.Unlock()
					return l.busySince, l.head.until
				}
				sleepUntil := func(at int64) {
					for d := at - now(); d >= 0; d = at - now() {
						time.Sleep(time.Duration(d) + 1)
					}
				}

				first := get("/first")
				require.Eventually(t, func() bool { return l.Load() != nil }, 30*time.Second, time.Millisecond, "the first handler runs")
				oldest := get("/oldest")
				ready := receive(t, oldestReady, "the oldest waiter queued")
				busySince, until := queue()
				// Past lifoAfter the queue hands slots, and looks for waiters
				// whose wait is over, at its newest end: nothing but the
				// newcomer takes the oldest out.
				sleepUntil(busySince + int64(lifoAfter))
				if c.waitOver {
					sleepUntil(until)
				}
				var waiters []<-chan int
				for i := range minQueue - 1 {
					waiters = append(waiters, get(fmt.Sprintf("/waiter/%d", i)))
					require.Eventually(t, func() bool { return stats.Snapshot().Waiting == int64(i+2) }, 30*time.Second, time.Millisecond, "waiter %d queued", i)
				}
				newcomer := get("/newcomer")
				require.Eventually(t, func() bool { return len(ready) == 1 }, 30*time.Second, time.Millisecond, "the oldest waiter gives way")
				if !c.waitOver {
					require.Less(t, now(), until, "the rest of the queue came within the oldest waiter's share")
				}
				sleepUntil(until) // its goroutine runs again past its share
				close(wake)
				assert.Equal(t, map[bool]int{true: fasthttp.StatusGatewayTimeout, false: fasthttp.StatusServiceUnavailable}[c.want == spentBudget], receive(t, oldest, "the oldest waiter's answer"))
				close(release)
				assert.Equal(t, fasthttp.StatusOK, receive(t, first, "the first answer"))
				assert.Equal(t, fasthttp.StatusOK, receive(t, newcomer, "the newcomer's answer"))
				for i, w := range waiters {
					assert.Equal(t, fasthttp.StatusOK, receive(t, w, "a waiter's answer"), "waiter %d", i)
				}
				assert.Equal(t, int32(minQueue+1), runs.Load(), "all but the oldest waiter ran")
				require.Eventually(t, func() bool { return stats.Snapshot().InFlight == 0 }, 30*time.Second, time.Millisecond)
				got := stats.Snapshot()
				assert.Equal(t, map[bool]int64{true: 1}[c.want == RejectedQueueFull], got.RejectedFull, "RejectedFull")
				assert.Equal(t, map[bool]int64{true: 1}[c.want == RejectedQueueTimeout], got.RejectedQueueTimeout, "RejectedQueueTimeout")
				assert.Equal(t, map[bool]int64{true: 1}[c.want == spentBudget], got.SpentBudgets, "SpentBudgets")
				assert.Equal(t, got.RejectedFull+got.RejectedQueueTimeout, got.Rejected)
				assert.Zero(t, got.Waiting)
			})
		}
	}
}

// TestAdmission_a_newcomer_stalled_until_it_cannot_wait_is_not_queued: a
// request reads the clock as it reaches the middleware, and stalls before
// it takes the queue's lock (here in its TimeoutFunc; a wait for the lock
// or a stopped process does the same) until its share of its budget, or
// its MaxQueueAge, has run out. Whether it had time to wait went by its
// reading: it was queued, counted in Queued and QueueWait, and refused at
// once by the hand-over as a wait run out (queue_timeout). By the clock
// under the lock it cannot wait at all, and is answered as a request whose
// budget leaves it no time to wait: refused (queue_full) for its share, the
// timeout response if its caller has given up, without queueing.
func TestAdmission_a_newcomer_stalled_until_it_cannot_wait_is_not_queued(t *testing.T) {
	t.Parallel()
	const stall = 10 * time.Millisecond // from the middleware's reading of the clock
	for _, c := range []struct {
		name        string
		timeout     time.Duration // the newcomer's budget, a tenth of it its share
		maxQueueAge time.Duration
		want        string
	}{
		{"its share run out it is refused", waitShare * stall, 0, RejectedQueueFull},
		{"its caller given up it gets the timeout response", time.Minute, stall, spentBudget},
		{"its share run out and its caller given up it gets the timeout response", waitShare * stall, stall / 2, spentBudget},
	} {
		for _, adaptive := range []bool{false, true} {
			t.Run(fmt.Sprintf("adaptive=%v/%s", adaptive, c.name), func(t *testing.T) {
				t.Parallel()
				stats := new(Stats)
				holder := newSlotHolder()
				l, release := &holder.limiter, holder.release
				h := New(holder.serve, Config{
					Timeout: time.Minute, MaxQueueAge: c.maxQueueAge, MaxConcurrency: 1, AdaptiveConcurrency: adaptive, Stats: stats, IgnoreHangups: true,
					TimeoutFunc: func(ctx *fasthttp.RequestCtx) time.Duration {
						if string(ctx.Path()) != "/newcomer" {
							return 0 // Timeout
						}
						// After the middleware's reading: the share, or
						// MaxQueueAge, counted from it is over after the
						// stall.
						until := now() + int64(stall)
						for d := until - now(); d >= 0; d = until - now() {
							time.Sleep(time.Duration(d) + 1)
						}
						return c.timeout
					},
				})
				client := serveInMemory(t, h)

				first := getAsync(t, client, "/first")
				require.Eventually(t, func() bool { return l.Load() != nil }, 30*time.Second, time.Millisecond, "the first handler runs")
				newcomer := getAsync(t, client, "/newcomer")
				assert.Equal(t, map[bool]int{true: fasthttp.StatusGatewayTimeout, false: fasthttp.StatusServiceUnavailable}[c.want == spentBudget], receive(t, newcomer, "the newcomer's answer"))
				close(release)
				assert.Equal(t, fasthttp.StatusOK, receive(t, first, "the first answer"))
				assert.Equal(t, int32(1), holder.runs.Load(), "only the first handler ran")

				require.Eventually(t, func() bool { return stats.Snapshot().InFlight == 0 }, 30*time.Second, time.Millisecond)
				got := stats.Snapshot()
				assert.Zero(t, got.Queued, "a request that cannot wait is not queued")
				assert.Zero(t, stats.QueueWait().Count, "nor counted in QueueWait")
				assert.Equal(t, map[bool]int64{true: 1}[c.want == RejectedQueueFull], got.RejectedFull, "RejectedFull")
				assert.Zero(t, got.RejectedQueueTimeout, "it did not wait its share out")
				assert.Equal(t, map[bool]int64{true: 1}[c.want == spentBudget], got.SpentBudgets, "SpentBudgets")
				assert.Zero(t, got.Waiting)
				assert.Zero(t, l.Load().holding(), "every slot given back")
			})
		}
	}
}

// TestAdmission_a_newcomer_whose_wait_is_over_by_the_clock_evicts_nobody:
// a request stalls on its way to the queue (in its TimeoutFunc, as above)
// until its own wait is over: its share of its budget, or its MaxQueueAge.
// Meanwhile a full queue stays busy past lifoAfter. The queue went by the
// clock for its own decisions, but by the newcomer's earlier reading for
// the newcomer's wait: the newcomer, with no time left to wait, pushed the
// oldest waiter out (503 queue_full, with most of its share left) and was
// then refused itself by the dispatch that followed. By the clock it has
// no time to wait: it is answered at once, as one whose budget leaves less
// than minWait is (queue_full; the timeout response at MaxQueueAge), and
// queued nowhere. Not parallel: the stall is timed by the clock.
func TestAdmission_a_newcomer_whose_wait_is_over_by_the_clock_evicts_nobody(t *testing.T) {
	for _, c := range []struct {
		name        string
		maxQueueAge time.Duration // its wait ends then rather than at its share
		timeout     time.Duration // the newcomer's (TimeoutFunc); Timeout a minute for the others
		want        int
	}{
		{"its share of its budget spent", 0, time.Second, fasthttp.StatusServiceUnavailable},
		{"its caller given up", time.Second, 0, fasthttp.StatusGatewayTimeout},
	} {
		for _, adaptive := range []bool{false, true} {
			t.Run(fmt.Sprintf("adaptive=%v/%s", adaptive, c.name), func(t *testing.T) {
				stats := new(Stats)
				holder := newSlotHolder()
				l, release, runs := &holder.limiter, holder.release, &holder.runs
				stalled, resume := make(chan int64, 1), make(chan struct{})
				h := New(holder.serve, Config{
					Timeout: time.Minute, MaxConcurrency: 1, AdaptiveConcurrency: adaptive, MaxQueueAge: c.maxQueueAge,
					Stats: stats, IgnoreHangups: true,
					TimeoutFunc: func(ctx *fasthttp.RequestCtx) time.Duration {
						if string(ctx.Path()) == "/newcomer" {
							stalled <- now() // after the middleware's reading
							<-resume
							return c.timeout
						}
						return 0 // Timeout
					},
				})
				client := serveInMemory(t, h)
				get := func(path string) <-chan int { return getAsync(t, client, path) }

				first := get("/first")
				require.Eventually(t, func() bool { return l.Load() != nil }, 30*time.Second, time.Millisecond, "the first handler runs")
				newcomer := get("/newcomer")
				stalledAt := receive(t, stalled, "the newcomer's stall")
				// Its wait ends by stalledAt plus its share (a tenth of its
				// timeout) or its MaxQueueAge; the waiters come after that,
				// with a minute's share and a MaxQueueAge from their own
				// arrival, and wait long past the newcomer's return.
				over := stalledAt + int64(max(c.timeout/waitShare, c.maxQueueAge))
				require.Eventually(t, func() bool { return now() > over }, 30*time.Second, time.Millisecond, "the newcomer's wait runs out")
				var waiters []<-chan int
				for i := range minQueue {
					waiters = append(waiters, get(fmt.Sprintf("/waiter/%d", i)))
					require.Eventually(t, func() bool { return stats.Snapshot().Waiting == int64(i+1) }, 30*time.Second, time.Millisecond, "waiter %d queued", i)
				}
				require.Eventually(t, func() bool {
					l := l.Load()
					l.mu.Lock()
					defer l.mu.Unlock()
					return l.lifo(now())
				}, 30*time.Second, time.Millisecond, "the queue stays busy")
				close(resume)
				assert.Equal(t, c.want, receive(t, newcomer, "the newcomer's answer"))
				close(release)
				assert.Equal(t, fasthttp.StatusOK, receive(t, first, "the first answer"))
				for i, w := range waiters {
					assert.Equal(t, fasthttp.StatusOK, receive(t, w, "a waiter's answer"), "waiter %d", i)
				}
				assert.Equal(t, int32(1+minQueue), runs.Load())
				require.Eventually(t, func() bool { return stats.Snapshot().InFlight == 0 }, 30*time.Second, time.Millisecond)
				got := stats.Snapshot()
				assert.Equal(t, int64(minQueue), got.Queued, "the waiters only")
				assert.Equal(t, map[bool]int64{true: 1, false: 0}[c.want == fasthttp.StatusServiceUnavailable], got.RejectedFull, "the newcomer's refusal, if any")
				assert.Zero(t, got.RejectedQueueTimeout)
				assert.Equal(t, map[bool]int64{true: 1, false: 0}[c.want == fasthttp.StatusGatewayTimeout], got.SpentBudgets)
				assert.Zero(t, got.Waiting)
			})
		}
	}
}
