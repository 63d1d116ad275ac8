package fasttimeout

import (
	"runtime/debug"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"
)

// serveRacing is the handler New returns in racing mode: it runs the handler
// on a worker and answers with whatever settles the call first (call.go).
// Inside another New's handler it runs inline: only the outermost New races,
// so the RequestCtx is answered once, with no inner timeout answer or late
// writes racing the outer one.
func (m *middleware) serveRacing(ctx *fasthttp.RequestCtx) {
	outer := lookup(ctx)
	start, deadline, admitted, run := m.admit(ctx, outer)
	if !run {
		return
	}
	if outer != nil {
		m.serveInline(ctx, outer, start, deadline, admitted)
		return
	}
	connID := ctx.ConnID()
	w := m.acquireWorker(connID)
	c := &w.call
	if w.owners.Load() != 2 { // 2 still, unless the last call timed out or lost its client
		w.owners.Store(2)
	}
	c.begin(ctx, nil, start, deadline, admitted)
	busy := admitted-w.returnedAt < int64(busyGap) || testAllBusy.Load()
	w.arm(c.nextWake()-admitted, busy)
	// Logger fills in ctx's logger on its first call: before the handoff,
	// so that OnTimeout, OnHangup and the late handler (or its panic's log)
	// only read it. Not without a server or Init (ConnID 0, a unit test's
	// &fasthttp.RequestCtx{}): Logger would dereference nil.
	if connID != 0 {
		ctx.Logger()
	}

	w.work <- struct{}{}
	w.await()
	c.unwatchClient()
	if !busy || c.phase() != callFinished {
		w.timer.Stop()
		c.timerAt.Store(0) // it holds nothing for the next call
	}

	if p := c.phase(); p != callFinished { // timed out or gone: late
		// Deferred: OnTimeout or OnHangup may panic, and the worker must
		// still go back to the pool once its late handler returns.
		defer m.disown(w, connID)
		if p == callGone {
			m.answerGone(ctx, c)
			return
		}
		m.stats.answerLateness.observe(time.Duration(now() - c.deadline.Load()))
		m.answerTimeout(ctx)
		return
	}
	c.ctx, c.conn = nil, nil
	// Last used at admission, which saves a clock reading (retired at most
	// the handler's run early); not at start, which with HonorQueueHeaders
	// may be minutes old and would get it retired at once.
	if !c.panicked {
		m.releaseWorker(w, connID, admitted)
		return
	}
	v := c.panicValue
	c.panicked, c.panicValue = false, nil
	// A worker that called Goexit is gone; one whose handler panicked with
	// ErrHandlerGoexit itself lives on.
	if !w.dead {
		m.releaseWorker(w, connID, admitted)
	}
	panic(v)
}

// answerTimeout sends the timeout response in place of the late handler's.
// TimeoutErrorWithResponse makes fasthttp give the connection a new
// RequestCtx, so the late handler can keep writing to its own.
func (m *middleware) answerTimeout(ctx *fasthttp.RequestCtx) {
	resp := fasthttp.AcquireResponse()
	// Deferred: if OnTimeout panics, a recover around the middleware must
	// still find ctx timed out, or fasthttp reuses it under the late handler.
	defer answerWith(ctx, resp)
	m.writeTimeoutResponse(resp)
	if m.OnTimeout != nil {
		runCallback(ctx, true, nil, func() { m.OnTimeout(ctx, resp) })
	}
}

// answerWith makes resp the answer to ctx in place of the late handler's
// response, and releases resp.
func answerWith(ctx *fasthttp.RequestCtx, resp *fasthttp.Response) {
	ctx.TimeoutErrorWithResponse(resp)
	fasthttp.ReleaseResponse(resp)
}

// worker is a pooled goroutine that runs raced handlers, one at a time.
type worker struct {
	call
	work     chan struct{} // cap 1: run call; closed to retire the worker
	done     chan bool     // cap 2: false once the race of the current call is decided; true to arm its timer again (see await)
	poked    atomic.Bool   // a true waits on done
	lastUsed atomic.Int64  // when it last went idle; read by the housekeeper to retire it

	// owners counts who holds a call that timed out or lost its client: the
	// server goroutine until it has answered, the late handler until it
	// returns. The last frees the worker, so that no stale signal or late
	// write reaches the next call.
	owners atomic.Int32
	// The goroutine is ending (a runtime.Goexit of the handler or of a late
	// callback, see serve and lateReturn) and never serves again, so nothing
	// resets it. Set before done is signalled or owners drops.
	dead bool

	returnedAt int64 // when its last handler returned; read by the next call's server goroutine

	removed bool // gone from the housekeeper's registry; guarded by housekeeper.mu
}

// loop serves the worker's calls until work is closed, or a handler ends
// the worker (see serve).
func (w *worker) loop() {
	for range w.work {
		if !w.serve() {
			return
		}
	}
}

// busyGap is the longest pause between a connection's requests that keeps
// its worker's timer armed from one to the next (see worker.arm).
const busyGap = time.Millisecond

// arm makes the worker's timer go off no later than d after the call's
// admission: at its deadline, or sooner to watch its client. A runtime
// timer per call, not a shared checker, which under load is late for every
// answer it owes. d counts from admit's clock reading (another costs a tenth
// of the fast path on some machines), so the timer is late by what the
// deadline headers, TimeoutFunc and taking a worker took.
//
// A timer reset and stop per request cost a fifth of the racing path. On a
// busy connection (requests within busyGap) the timer is not stopped, and
// the next call keeps it if it goes off no later than that call needs; gone
// off early, it signals the server goroutine to arm it again (see fire and
// await): about once per HangupDelay if the client is watched, once per
// timeout if not. On a quieter connection a kept timer would go off for
// nothing once per pause, so it is reset and stopped per request.
func (w *worker) arm(d int64, busy bool) {
	c := &w.call
	if !busy {
		w.timer.Reset(time.Duration(d))
		return
	}
	if at := c.timerAt.Load(); at > 0 && at <= c.admitted+d {
		return
	}
	// Unknown until reset: if fire runs before the compare-and-swap below
	// (a stalled goroutine), its mark of the timer gone off stays.
	c.timerAt.Store(0)
	w.timer.Reset(time.Duration(d))
	if hook := testHookArmed.Load(); hook != nil {
		(*hook)(c)
	}
	c.timerAt.CompareAndSwap(0, now()+d) // no earlier than it goes off
}

// testAllBusy, set only by tests, makes every connection busy (see arm).
var testAllBusy atomic.Bool

// testHookArmed, set only by tests, runs in arm between reset and timerAt.
var testHookArmed atomic.Pointer[func(*call)]

// await waits for the signal of whoever decided the call's race. Signals
// before it are the timer's, gone off early (see arm), and arm it again;
// one may be an earlier call's, sent as it ended, and only re-arms needlessly.
func (w *worker) await() {
	c := &w.call
	for <-w.done {
		w.poked.Store(false) // before looking: a signal from now on is sent
		c.rearmRunning()
		if hook := testHookRearmed.Load(); hook != nil {
			(*hook)(c)
		}
	}
}

// testHookRearmed, set only by tests, runs in await after each early signal.
var testHookRearmed atomic.Pointer[func(*call)]

// fire runs when a timer of the worker's call goes off: at the deadline it
// times the call out; sooner, it starts the hang-up watch (startWatch) or,
// too soon for that (a busy connection's earlier timer, see arm), signals
// the server goroutine to arm it again. An earlier call's timer settles
// nothing here, and an extra signal only makes the server look again.
func (w *worker) fire() {
	c := &w.call
	c.timerAt.Store(-1) // gone off: it holds nothing for a later call
	t := now()
	if c.settle(callTimedOut, t) {
		w.done <- false // the server goroutine answers with the timeout response
		return
	}
	if c.startWatch(t) || c.decided() {
		return
	}
	// At most one such signal waits on done, beside one decision, so no send
	// blocks: the hang-up callback's runs holding hangupWatcher.mu, a Mutex
	// all watched connections share, which a blocked send would stall.
	if w.poked.CompareAndSwap(false, true) {
		w.done <- true
	}
}

// serve runs the current call's handler and settles the race. It reports
// whether the worker lives on: not after what it took for a Goexit.
func (w *worker) serve() (alive bool) {
	c := &w.call
	m := c.m
	returned := false
	defer func() {
		if !returned {
			c.panicked = true
			if c.panicValue = recover(); c.panicValue == nil {
				// No value: runtime.Goexit, which ends this goroutine
				// after the deferred calls, or (GODEBUG=panicnil=1) a
				// panic(nil) recovered here; the worker ends either way.
				c.panicValue, w.dead = ErrHandlerGoexit, true
				m.housekeeper.dropWorker(w)
			}
			m.stats.panics.Add(1)
		}
		alive = !w.dead
		// Late is late, timer or not (see settleOrTimeOut). The slot goes
		// back before the signal: then the call may be another request's.
		t := now()
		w.returnedAt = t
		if c.settle(callTimedOut, t) {
			m.release(c, t, false)
			w.done <- false
		} else if c.settle(callFinished, t) {
			m.release(c, t, !c.panicked) // a panic's latency says nothing of congestion
			c.end()
			m.leaveFlight(c.connID)
			w.done <- false
			return
		} else {
			m.release(c, t, false) // settled already: by the timer, or the hang-up callback
		}
		var stack []byte
		if c.panicked && !w.dead {
			stack = debug.Stack() // still the panicking stack: deferred calls run on it
		}
		m.lateReturn(w, stack)
	}()
	m.handler(c.ctx)
	returned = true
	return true
}

// lateReturn runs on a worker whose handler returned after its deadline.
func (m *middleware) lateReturn(w *worker, stack []byte) {
	c := &w.call
	c.awaitCounted()
	ctx := c.ctx
	late := time.Duration(now() - c.overAt.Load())
	m.countLateReturn(late)
	reported := false
	// Deferred: a callback's runtime.Goexit ends this goroutine (a panic
	// ends the process), and the call must still end.
	defer func() {
		if !reported && !w.dead {
			w.dead = true
			m.housekeeper.dropWorker(w)
		}
		// fasthttp never resets a timed-out RequestCtx: release what the
		// late response holds, above all a body stream writer's goroutine,
		// which would block forever on a pipe nobody reads.
		ctx.Response.Reset()
		c.panicked, c.panicValue = false, nil
		m.disown(w, ctx.ConnID())
	}()
	if c.panicked {
		m.reportPanic(ctx, c.panicValue, stack)
	}
	if m.OnLateReturn != nil {
		m.OnLateReturn(ctx, late)
	}
	reported = true
}

// disown gives up one hold on a timed-out call's worker (worker.owners).
// The last ends the call, returns the worker to the pool and counts the
// request out of InFlight, once the server goroutine's part (AnswerLateness,
// OnTimeout or OnHangup) and the late handler's are both counted.
func (m *middleware) disown(w *worker, connID uint64) {
	if w.owners.Add(-1) != 0 {
		return
	}
	c := &w.call
	c.end()
	c.ctx, c.conn = nil, nil
	if !w.dead {
		m.releaseWorker(w, connID, now())
	}
	m.leaveFlight(connID)
}

// acquireWorker takes an idle worker, or starts one.
func (m *middleware) acquireWorker(connID uint64) *worker {
	if w := m.housekeeper.idle.get(connID); w != nil {
		return w
	}
	w := &worker{call: call{m: m}, work: make(chan struct{}, 1), done: make(chan bool, 2)}
	w.timer = time.AfterFunc(time.Hour, w.fire)
	w.timer.Stop()
	w.later = time.AfterFunc(time.Hour, w.fire)
	w.later.Stop()
	w.onGone = w.hungUp
	w.onDeadline = w.fire
	m.housekeeper.addWorker(w)
	go w.loop()
	return w
}

// releaseWorker makes w idle, last used at t, for the next request of
// connection connID.
func (m *middleware) releaseWorker(w *worker, connID uint64, t int64) {
	w.lastUsed.Store(t)
	m.housekeeper.idle.put(connID, w)
}

// idleSlots is the number of per-connection slots of an idleWorkers.
const idleSlots = 256

// idleWorkers keeps the workers waiting for a call. A connection's requests
// use the slot of its ID, so the fast path takes and returns a worker with
// one atomic swap each, mostly the connection's previous one; the overflow
// waits in a shared LIFO stack.
type idleWorkers struct {
	slots [idleSlots]struct {
		w atomic.Pointer[worker]
		_ [56]byte // one cache line per slot: neighbours are busy on other cores
	}

	mu    sync.Mutex
	stack []*worker
}

// get returns an idle worker for connection connID, or nil.
func (p *idleWorkers) get(connID uint64) *worker {
	if w := p.slots[connID%idleSlots].w.Swap(nil); w != nil {
		return w
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	n := len(p.stack)
	if n == 0 {
		return nil
	}
	w := p.stack[n-1]
	p.stack = slices.Delete(p.stack, n-1, n) // which zeroes the slot for the GC
	return w
}

// put makes w available to the next request of connection connID.
func (p *idleWorkers) put(connID uint64, w *worker) {
	if p.slots[connID%idleSlots].w.CompareAndSwap(nil, w) {
		return
	}
	p.mu.Lock()
	p.stack = append(p.stack, w)
	p.mu.Unlock()
}

// takeStale removes and returns the workers last used before t.
func (p *idleWorkers) takeStale(t int64) []*worker {
	var stale []*worker
	for i := range p.slots {
		s := &p.slots[i].w
		if w := s.Load(); w != nil && w.lastUsed.Load() < t && s.CompareAndSwap(w, nil) {
			stale = append(stale, w)
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0 // the stack is LIFO: the stale ones are at the bottom
	for n < len(p.stack) && p.stack[n].lastUsed.Load() < t {
		n++
	}
	stale = append(stale, p.stack[:n]...)
	p.stack = slices.Delete(p.stack, 0, n) // which zeroes the vacated tail for the GC
	return stale
}

// testHookAwaitCounted, set only by tests, runs in awaitCounted if it waits.
var testHookAwaitCounted atomic.Pointer[func(*call)]
