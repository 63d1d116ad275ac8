package fasttimeout

import (
	"fmt"
	"math"
	"math/rand/v2"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/fasthttputil"
)

// TestLimiter_invariants_hold_under_random_operations drives limiters, fixed
// and adaptive, through seeded random sequences of operations on a fake
// clock, one at a time: arrivals with a long budget (which wait), or one too
// short to wait; handlers returning in time, timing out or losing their
// client (late, and for the adaptive limit a drop), moving their deadline
// (Disarm, Extend) and returning late or moved; the clock moving on (windows
// close, probes begin and end, the queue turns LIFO); and the server
// shutting down. After every operation it checks, against a model of the
// queue and of the handlers holding slots:
//
//   - the handlers holding a slot are those admitted and not returned, and
//     none was admitted beyond the limit of the time;
//   - a free slot is never left while a request waits, and an arrival that
//     finds no one waiting and a free slot takes it;
//   - every request gets exactly one outcome, a slot or a refusal, and a
//     waiter leaves the queue only with one: the slots go to the oldest
//     waiters while the queue is young and to the newest once it has stayed
//     non-empty for lifoAfter, a full queue refuses the newcomer or, once
//     LIFO, evicts its oldest waiter, and shutdown refuses every waiter;
//   - the counts add up: arrivals are slots taken plus refusals, refusals
//     are Stats' by reason, Stats' waiting and queued are the queue's, and
//     Stats' limit the limiter's;
//   - the limit stays within [floor, ceiling] (a fixed one does not move),
//     and whenever a window closes, at limitFloor slots or more beyond the
//     late and moved handlers.
//
// A waiter's timer, and the wait it measures, run on the real clock: on the
// fake clock, hours ahead of it, waits have budgets of hours, and no timer
// ends one. A third of the seeds run on the real clock instead, without the
// clock moving on, and there some requests wait out their share (100 to
// 300 µs) before the next operation: a probe without load gives way to the
// first it would refuse, and a waiter so refused found no slot free. Each
// seed is deterministic but for the real clock's readings; a failure names
// its seed and step. Not parallel: testHookQueued is the process's, and is
// set until every seed has run.
func TestLimiter_invariants_hold_under_random_operations(t *testing.T) {
	var models sync.Map // *limiter -> chan chan bool
	hook := func(l *limiter, ready chan bool, _ int64) {
		if queued, ok := models.Load(l); ok {
			queued.(chan chan bool) <- ready
		}
	}
	testHookQueued.Store(&hook)
	t.Cleanup(func() { testHookQueued.Store(nil) })

	seeds, steps := 48, 400
	if testing.Short() {
		seeds = 12
	}
	for seed := range uint64(seeds) {
		max := []int64{1, 2, 3, 5, 8, 20, 1000}[seed%7]
		adaptive := seed%2 == 0
		realClock := seed%3 == 2
		t.Run(fmt.Sprintf("seed=%d/max=%d/adaptive=%v/real=%v", seed, max, adaptive, realClock), func(t *testing.T) {
			t.Parallel() // with one another only: each has its limiter, and the hook tells them apart
			m := newLimiterModel(t, seed, max, adaptive, realClock)
			models.Store(m.l, m.queuedHook)
			defer models.Delete(m.l)
			for step := range steps {
				m.step(step)
				if t.Failed() {
					t.Fatalf("seed %d: first failure at step %d (%s)", seed, step, m.lastOp)
				}
			}
			m.drain()
		})
	}
}

// limiterModel is what TestLimiter_invariants_hold_under_random_operations
// expects of a limiter.
type limiterModel struct {
	t     *testing.T
	rng   *rand.Rand
	mw    *middleware
	l     *limiter
	stats *Stats
	late  *atomic.Int64
	clock int64
	// realClock: the clock is the real one, and some requests wait out
	// their share of the budget (the waiter's timer is on the real clock).
	realClock bool
	waitedOut bool                 // the last operation was a request waiting out its share
	ctx       *fasthttp.RequestCtx // a request held on a server, whose shutdown ends the waits
	shutdown  func()
	down      bool

	queuedHook chan chan bool // the ready channel of each request queued (testHookQueued)
	queue      []*modelWaiter // oldest first
	busySince  int64          // when the queue last became non-empty; 0 while empty
	handlers   []*modelHandler
	moved      int64

	arrivals, admissions, refusedFull, refusedTimeout, queuedCount int64
	refusedNewcomer                                                bool // the last arrival, with budget to wait, was refused without waiting
	lastOp                                                         string
	nextID                                                         int
}

type modelWaiter struct {
	id     int
	ready  chan bool // its limiter waiter's channel, by which it is found in the queue
	result chan string
}

type modelHandler struct {
	c     *call // as the middleware keeps it: its slot, and whether it is late or moved
	state int
}

const (
	handlerInTime = iota
	handlerMoved
	handlerLate
)

func newLimiterModel(t *testing.T, seed uint64, max int64, adaptive, realClock bool) *limiterModel {
	stats := new(Stats)
	mw := &middleware{settings: Config{Timeout: time.Second, MaxConcurrency: int(max), AdaptiveConcurrency: adaptive, Stats: stats, IgnoreHangups: true}.resolve()}
	mw.limiter = newLimiter(max, adaptive, mw.Timeout, stats, &mw.late)
	l := mw.limiter
	// The backlog reads the process's run queue: never here.
	l.shedAt.Store(math.MaxInt64)
	// The sampled returns, from the seed too. Only the model's goroutine
	// returns handlers, and, the backlog off, draws.
	l.rng = rand.New(rand.NewPCG(seed, 0x5a3b1e))
	ctx, shutdown := heldRequest(t)
	return &limiterModel{
		t: t, rng: rand.New(rand.NewPCG(seed, 0x5eed)), mw: mw, l: l, stats: stats, late: &mw.late,
		clock: int64(time.Hour), realClock: realClock, ctx: ctx, shutdown: shutdown, queuedHook: make(chan chan bool, 1),
	}
}

// heldRequest returns the RequestCtx of a request that a server in memory
// holds until the test's cleanup, and a function that shuts the server down
// (its requests' Done closes).
func heldRequest(t *testing.T) (*fasthttp.RequestCtx, func()) {
	ln := fasthttputil.NewInmemoryListener()
	held := make(chan *fasthttp.RequestCtx, 1)
	release := make(chan struct{})
	server := &fasthttp.Server{Handler: func(ctx *fasthttp.RequestCtx) {
		held <- ctx
		<-release
	}}
	served := make(chan error, 1)
	go func() { served <- server.Serve(ln) }()
	client := &fasthttp.Client{Dial: func(string) (net.Conn, error) { return ln.Dial() }, MaxIdemponentCallAttempts: 1}
	answered := make(chan struct{})
	go func() {
		defer close(answered)
		_, _, _ = client.Get(nil, "http://test/") // answered, or cut by the shutdown
	}()
	ctx := receive(t, held, "the held request")
	shutDown := make(chan error, 1)
	var once sync.Once
	shutdown := func() { once.Do(func() { go func() { shutDown <- server.Shutdown() }() }) }
	t.Cleanup(func() {
		shutdown()
		close(release)
		assert.NoError(t, receive(t, shutDown, "the server's shutdown"))
		receive(t, served, "the end of Serve")
		client.CloseIdleConnections()
		receive(t, (<-chan struct{})(answered), "the held request's end")
	})
	return ctx, shutdown
}

// step runs one random operation and checks the invariants after it.
func (m *limiterModel) step(step int) {
	l := m.l
	limitBefore, holdingBefore, windowBefore := l.limit.Load(), l.holding(), l.windowFrom()
	queueBefore := slices.Clone(m.queue)
	busyBefore := m.busySince
	var newcomer *modelWaiter
	arrival := false
	m.waitedOut = false
	if m.realClock {
		m.clock = now()
	}

	switch r := m.rng.IntN(100); {
	case r < 35:
		arrival = true
		newcomer = m.arrive(int64(1000 * time.Hour))
	case r < 40:
		arrival = true
		newcomer = m.arrive(m.rng.Int64N(int64(waitShare * minWait))) // too short to wait
	case r < 60:
		m.returnHandler(handlerInTime)
	case r < 65:
		m.becomeLate(true)
	case r < 68:
		m.becomeLate(false)
	case r < 72:
		m.move()
	case r < 80:
		if m.rng.IntN(2) == 0 {
			m.returnHandler(handlerLate)
		} else {
			m.returnHandler(handlerMoved)
		}
	case r < 99 && m.realClock:
		if m.rng.IntN(2) == 0 {
			arrival = true
			newcomer = m.waitOut()
		} else {
			m.lastOp = "time passes"
		}
	case r < 99:
		d := []time.Duration{0, time.Microsecond, time.Millisecond, lifoAfter / 2, lifoAfter + 1, minWindow, maxWindow, earlyProbeEvery, probeEvery + probeEvery/4}[m.rng.IntN(9)]
		m.clock += int64(d)
		m.lastOp = fmt.Sprintf("clock +%v", d)
	default:
		if !m.down && step > 0 {
			m.shutDown()
		}
	}
	m.settle(queueBefore, busyBefore, newcomer, arrival)
	m.check(limitBefore, holdingBefore, windowBefore)
}

// arrive runs a request with the given budget. It returns the request if it
// is waiting in the queue.
func (m *limiterModel) arrive(budget int64) *modelWaiter {
	m.nextID++
	w := &modelWaiter{id: m.nextID, result: make(chan string, 1)}
	m.lastOp = fmt.Sprintf("arrival %d, budget %v", w.id, time.Duration(budget))
	m.arrivals++
	m.refusedNewcomer = false
	free := len(m.queue) == 0 && m.l.holding() < m.l.limit.Load()
	at, deadline := m.clock, m.clock+budget
	go func() {
		_, reason := m.l.acquire(m.ctx, at, deadline, noDeadline)
		w.result <- reason
	}()
	var queued bool
	select {
	case reason := <-w.result:
		select { // the hook, if it ran, ran before the answer
		case w.ready = <-m.queuedHook:
			queued = true
		default:
		}
		m.outcome(w, reason)
		// On the real clock the limiter reads the clock again under its
		// lock, some time after the model's reading: a short share may
		// have had less than minWait left by then, and the request could
		// not wait at all, whatever the queue.
		noTimeLeft := m.realClock && now()-at > budget/waitShare-int64(minWait)
		m.refusedNewcomer = reason != "" && !queued && budget >= int64(waitShare*minWait) && !noTimeLeft
		// On the real clock a short share can run out before this
		// goroutine looks: the request queued and waited it out.
		waitedOut := queued && m.realClock && budget <= 3*int64(waitShare*minWait) && reason != RejectedQueueFull
		m.waitedOut = m.waitedOut || waitedOut
		assert.False(m.t, queued && !m.down && !waitedOut, "request %d answered (%q) once queued, with the server up", w.id, reason)
		if queued {
			m.queuedCount++
		}
		if free {
			assert.Empty(m.t, reason, "request %d found no one waiting and a slot free", w.id)
		}
		return nil
	case w.ready = <-m.queuedHook:
		m.queuedCount++
	case <-time.After(30 * time.Second):
		m.t.Fatalf("request %d neither answered nor queued within 30s", w.id)
	}
	assert.False(m.t, free, "request %d queued though no one waited and a slot was free", w.id)
	assert.GreaterOrEqual(m.t, budget, int64(waitShare*minWait), "request %d queued with no budget to wait", w.id)
	if m.down {
		reason := receive(m.t, w.result, "a refusal at shutdown")
		assert.Equal(m.t, RejectedQueueFull, reason, "request %d queued after shutdown", w.id)
		m.outcome(w, reason)
		return nil
	}
	if len(m.queue) == 0 {
		m.busySince = m.clock
	}
	m.queue = append(m.queue, w)
	return w
}

// waitOut runs a request whose share of its budget to wait is short (on the
// real clock), and waits for its answer. It returns the request if it
// queued.
func (m *limiterModel) waitOut() *modelWaiter {
	yields := m.l.probeYields.Load()
	budget := int64(waitShare*minWait) * (1 + m.rng.Int64N(3))
	w := m.arrive(budget)
	m.lastOp += ", waited out"
	if w == nil {
		return nil
	}
	m.queue = slices.DeleteFunc(m.queue, func(q *modelWaiter) bool { return q == w })
	reason := receive(m.t, w.result, "the answer to a request that waits out its share")
	m.outcome(w, reason)
	m.waitedOut = true
	if reason == RejectedQueueTimeout && yields {
		// A probe without load gives way to the first request it would
		// refuse (yieldProbe): this one was refused for want of a slot.
		assert.GreaterOrEqual(m.t, m.l.holding(), m.l.limit.Load(), "request %d refused by a probe without load", w.id)
	}
	return w
}

// outcome counts the answer to request w.
func (m *limiterModel) outcome(w *modelWaiter, reason string) {
	switch reason {
	case "":
		m.admissions++
		c := &call{m: m.mw, admitted: m.clock}
		c.state.Store(generation | callRunning)
		c.deadline.Store(noDeadline)
		c.slot.Store(slotHeld)
		m.handlers = append(m.handlers, &modelHandler{c: c})
	case RejectedQueueFull:
		m.refusedFull++
	case RejectedQueueTimeout:
		m.refusedTimeout++
	default:
		m.t.Errorf("request %d refused for %q", w.id, reason)
	}
}

// pick returns the index of a random handler in state, or -1.
func (m *limiterModel) pick(state int) int {
	var in []int
	for i, h := range m.handlers {
		if h.state == state {
			in = append(in, i)
		}
	}
	if len(in) == 0 {
		return -1
	}
	return in[m.rng.IntN(len(in))]
}

// returnHandler returns a random handler in state, as racing mode does:
// middleware.release, and for a late one countLateReturn.
func (m *limiterModel) returnHandler(state int) {
	i := m.pick(state)
	m.lastOp = fmt.Sprintf("return of a handler in state %d (none: %v)", state, i < 0)
	if i < 0 {
		return
	}
	h := m.handlers[i]
	m.handlers = slices.Delete(m.handlers, i, i+1)
	switch state {
	case handlerInTime:
		m.mw.release(h.c, m.clock, true)
	case handlerMoved:
		m.mw.release(h.c, m.clock, true) // returned before its moved deadline: no sample all the same
		m.moved--
	case handlerLate:
		m.mw.release(h.c, m.clock, false)
		m.mw.countLateReturn(time.Duration(m.clock - h.c.overAt.Load()))
	}
}

// becomeLate makes a random handler, in time or moved, late: it timed out
// (a drop for the adaptive limit), or its client hung up (call.settle).
func (m *limiterModel) becomeLate(timedOut bool) {
	state := handlerInTime
	if m.rng.IntN(2) == 0 {
		state = handlerMoved
	}
	i := m.pick(state)
	m.lastOp = fmt.Sprintf("handler in state %d late, timed out %v (none: %v)", state, timedOut, i < 0)
	if i < 0 {
		return
	}
	h := m.handlers[i]
	outcome := callGone
	if timedOut {
		outcome = callTimedOut
		h.c.deadline.Store(m.clock)
	}
	require.True(m.t, h.c.settle(outcome, m.clock))
	if h.state == handlerMoved {
		m.moved--
	}
	h.state = handlerLate
}

// move moves a random in-time handler's deadline, as call.countMoved does.
func (m *limiterModel) move() {
	i := m.pick(handlerInTime)
	m.lastOp = fmt.Sprintf("a handler moves its deadline (none: %v)", i < 0)
	if i < 0 {
		return
	}
	m.handlers[i].c.countMoved()
	if m.l.adaptive { // a fixed limit does not count them
		m.handlers[i].state = handlerMoved
		m.moved++
	}
}

// shutDown shuts the server down: every waiter is refused.
func (m *limiterModel) shutDown() {
	m.lastOp = "shutdown"
	m.down = true
	m.shutdown()
	receive(m.t, serverDone(m.ctx), "the server's Done")
	for _, w := range m.queue {
		reason := receive(m.t, w.result, "a waiter's refusal at shutdown")
		assert.Equal(m.t, RejectedQueueFull, reason, "waiter %d at shutdown", w.id)
		m.outcome(w, reason)
	}
	m.queue, m.busySince = nil, 0
}

// inQueue returns the ready channels of the limiter's waiters, oldest
// first.
func (m *limiterModel) inQueue() []chan bool {
	m.l.mu.Lock()
	defer m.l.mu.Unlock()
	var in []chan bool
	for w := m.l.head; w != nil; w = w.next {
		in = append(in, w.ready)
	}
	return in
}

// settle collects the answers of the waiters that left the queue in the
// last operation, and checks who they were. before is the queue before it,
// busySince its time of becoming non-empty; newcomer, the request that
// arrived and queued, if any.
func (m *limiterModel) settle(before []*modelWaiter, busySince int64, newcomer *modelWaiter, arrival bool) {
	in := m.inQueue()
	// The limiter decides whether its queue serves the newest first by the
	// clock under its lock: the model's reading, or on the real clock any
	// time from then until now. Near lifoAfter either decision is right.
	latest := m.clock
	if m.realClock {
		latest = now()
	}
	lifoAt := func(clock int64) bool { return busySince != 0 && clock-busySince > int64(lifoAfter) }
	var granted, evicted []*modelWaiter
	var kept []*modelWaiter
	for _, w := range m.queue {
		// Waiters are pooled: a newcomer may have the channel of one that
		// left in this operation.
		if slices.Contains(in, w.ready) && (w == newcomer || newcomer == nil || w.ready != newcomer.ready) {
			kept = append(kept, w)
			continue
		}
		reason := receive(m.t, w.result, "the answer of a waiter out of the queue")
		m.outcome(w, reason)
		if reason == "" {
			granted = append(granted, w)
		} else {
			evicted = append(evicted, w)
		}
	}
	var order []int
	for _, w := range kept {
		order = append(order, w.id)
	}
	var want []int
	for _, c := range in {
		for _, w := range kept {
			if w.ready == c {
				want = append(want, w.id)
			}
		}
	}
	assert.Equal(m.t, order, want, "the queue's order")
	assert.Len(m.t, in, len(kept), "waiters in the limiter's queue the model does not know")

	// Slots go to the oldest waiters while the queue is young, to the
	// newest once it has stayed non-empty for lifoAfter: as many as were
	// granted, from the queue before the operation.
	// grant returns the ids given a slot, sorted, and the queue left, had
	// the limiter served the newest first (lifo) or not.
	grant := func(lifo bool) (ids []int, rest []*modelWaiter) {
		rest = slices.Clone(before)
		for range granted {
			if len(rest) == 0 {
				break
			}
			i := 0
			if lifo {
				i = len(rest) - 1
			}
			ids = append(ids, rest[i].id)
			rest = slices.Delete(rest, i, i+1)
		}
		slices.Sort(ids)
		return ids, rest
	}
	wantGranted, rest := grant(lifoAt(m.clock))
	var gotGranted []int
	for _, w := range granted {
		gotGranted = append(gotGranted, w.id)
	}
	slices.Sort(gotGranted)
	if ids, left := grant(true); lifoAt(latest) && slices.Equal(ids, gotGranted) {
		wantGranted, rest = ids, left
	}
	if len(rest) == 0 {
		busySince = 0
	}
	if m.waitedOut && len(granted) > 0 && len(granted) <= len(before) {
		// The probe that gave way handed its slots over at the end of a
		// wait on the real clock, which the model does not know: the
		// oldest or the newest, then.
		var oldest, newest []int
		for _, w := range before[:len(granted)] {
			oldest = append(oldest, w.id)
		}
		for _, w := range before[len(before)-len(granted):] {
			newest = append(newest, w.id)
		}
		slices.Sort(oldest)
		slices.Sort(newest)
		if slices.Equal(gotGranted, oldest) || slices.Equal(gotGranted, newest) {
			wantGranted = gotGranted
		}
	}
	assert.Equal(m.t, wantGranted, gotGranted, "the waiters given a slot")
	assert.NotContains(m.t, granted, newcomer, "a newcomer served before those waiting")

	// A full queue, once LIFO, evicts its oldest waiter for the newcomer.
	capacity := max(2*int(min(m.l.ceiling, math.MaxInt/2)), minQueue)
	if arrival && newcomer != nil && len(rest) >= capacity {
		require.Len(m.t, evicted, 1, "a full queue made room for a newcomer")
		assert.Equal(m.t, rest[0].id, evicted[0].id, "the oldest waiter gives way")
		assert.True(m.t, lifoAt(latest), "evicted from a young queue")
	} else {
		for _, w := range evicted {
			m.t.Errorf("waiter %d refused without a full queue", w.id)
		}
	}
	if arrival && m.refusedNewcomer && len(rest) >= capacity {
		assert.False(m.t, lifoAt(m.clock), "a newcomer refused by a full queue that had turned LIFO")
	}
	m.queue = kept
	switch {
	case len(m.queue) == 0:
		m.busySince = 0
	case len(m.queue) == 1 && m.queue[0] == newcomer:
		m.busySince = m.clock // those before it were served before it queued
	}
	m.l.mu.Lock()
	busy := m.l.busySince
	m.l.mu.Unlock()
	if m.realClock && newcomer != nil && len(m.queue) > 0 && m.queue[0] == newcomer {
		// The newcomer started the queue, busy from the clock as it
		// reached the queue's lock: on the real clock, after the model's
		// reading.
		assert.True(m.t, m.busySince <= busy && busy <= now(), "the queue busy from %v, not between the arrival (%v) and now", busy, m.busySince)
		m.busySince = busy
	}
	assert.Equal(m.t, m.busySince, busy, "when the queue became non-empty")
}

// check checks the invariants that hold between operations.
func (m *limiterModel) check(limitBefore, holdingBefore, windowBefore int64) {
	t, l := m.t, m.l
	limit, holding := l.limit.Load(), l.holding()
	assert.Equal(t, int64(len(m.handlers)), holding, "handlers holding a slot")
	if holding > holdingBefore {
		assert.LessOrEqual(t, holding, max(limitBefore, limit), "admitted beyond the limit")
	}
	if len(m.queue) > 0 {
		assert.GreaterOrEqual(t, holding, limit, "a slot free while %d requests wait", len(m.queue))
	}
	assert.Equal(t, int64(len(m.queue)), l.waiting.Load(), "waiting, in the limiter")
	assert.Equal(t, int64(len(m.queue)), m.stats.waiting.Load(), "waiting, in Stats")
	assert.Equal(t, len(m.queue), l.queued)
	assert.Equal(t, m.queuedCount, m.stats.queued.Load(), "queued, in Stats")
	assert.Equal(t, uint32(m.admissions), l.taken(), "slots taken")
	assert.Equal(t, m.arrivals, m.admissions+m.refusedFull+m.refusedTimeout+int64(len(m.queue)), "every arrival admitted, refused or waiting")
	assert.Equal(t, m.refusedFull+m.refusedTimeout, l.refused.Load(), "refusals")
	assert.Equal(t, m.refusedFull, m.stats.rejectedFull.Load(), "refusals for a full queue, in Stats")
	assert.Equal(t, m.refusedTimeout, m.stats.rejectedTimeout.Load(), "refusals for a wait out, in Stats")
	assert.Equal(t, limit, m.stats.limit.Load(), "the limit, in Stats")
	assert.GreaterOrEqual(t, limit, l.floor, "the limit, above its floor")
	assert.LessOrEqual(t, limit, l.ceiling, "the limit, under its ceiling")
	assert.Equal(t, m.moved, l.moved.Load())
	if !l.adaptive {
		assert.Equal(t, l.ceiling, limit, "a fixed limit")
		return
	}
	// A window closed (adapt stores its end, and empties the counts): at
	// the step's clock, or on the real clock after it (wait closes one by
	// the clock as it runs).
	if ws := l.windowFrom(); ws != windowBefore && ws >= m.clock && l.count.Load() == 0 && l.drops.Load() == 0 {
		assert.GreaterOrEqual(t, limit, l.lateFloor(), "limit %d as the window closed with %d late and %d moved handlers", limit, m.late.Load(), m.moved)
	}
}

// drain shuts the server down, returns every handler and checks that
// nothing is left held or waiting.
func (m *limiterModel) drain() {
	if !m.down {
		m.shutDown()
		m.check(m.l.limit.Load(), m.l.holding(), m.l.windowFrom())
	}
	for len(m.handlers) > 0 {
		m.returnHandler(m.handlers[0].state)
	}
	assert.Zero(m.t, m.l.holding())
	assert.Zero(m.t, m.l.waiting.Load())
	assert.Zero(m.t, m.stats.waiting.Load())
	assert.Zero(m.t, m.late.Load())
	assert.Zero(m.t, m.l.moved.Load())
}
