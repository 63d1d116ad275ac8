package fasttimeout

import (
	"errors"
	"net/http"
	"slices"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"
)

// ErrTimeout is the [context.Cause] of a request context whose deadline
// passed. Use it with errors.Is.
var ErrTimeout = errors.New("fasttimeout: request timed out")

// ErrShutdown is the [context.Cause] of a request context cancelled because
// its server is shutting down.
var ErrShutdown = errors.New("fasttimeout: server shutting down")

// ErrHandlerGoexit is the panic value that stands for a handler's
// runtime.Goexit. A handler running on a racing New's worker (in racing
// mode, or inside the handler of a racing New) that calls runtime.Goexit
// before its deadline and any hang-up ends only that goroutine: the server
// goroutine then panics with ErrHandlerGoexit in its place, or the request
// would go unanswered (a cooperative New's Goexit goes up the server
// goroutine as such). A handler that calls it after its deadline or its
// client's hang-up, in either mode, gives Config.OnPanic ErrHandlerGoexit,
// with no stack. A middleware around New that records panics compares a
// recovered value with it to tell a Goexit from a panic.
var ErrHandlerGoexit = errors.New("fasttimeout: handler called runtime.Goexit")

// New returns a handler that runs h with a deadline of cfg.Timeout.
//
// If h returns before the deadline, its response goes out exactly as h wrote
// it. At the deadline the client gets the timeout response (by default 504
// Gateway Timeout, Content-Type application/json, body
// {"detail":"Request processing time exceeded limit"}), the request's
// [Context] is cancelled with cause [ErrTimeout], and the connection stays
// usable for its next request.
//
// In [Racing] mode (the default) h runs on a pooled worker goroutine. A
// handler still running at the deadline keeps its *fasthttp.RequestCtx until
// it returns; fasthttp gives the connection a fresh one, so nothing the late
// handler writes reaches any client. A panic in h before the deadline is
// re-raised on the server goroutine with its original value; after the
// deadline (or the client's hang-up) it goes to Config.OnPanic and the
// process goes on. A middleware around the returned handler must leave a
// timed-out ctx alone (ctx.LastTimeoutErrorResponse() != nil), as
// fasthttp.CompressHandler does: the late handler may still be using it.
//
// In [Cooperative] mode h runs on the server goroutine; only its context is
// cancelled at the deadline, and a response written after it is replaced by
// the timeout response. Panics are handled as in racing mode. After a
// runtime.Goexit on the server goroutine, by h or, in either mode, by a
// Config callback (any but OnPanic and OnLateReturn, which in racing mode
// run on the worker; t.FailNow in a test's, say), fasthttp would neither
// answer nor close the connection: the middleware closes it (racing mode
// re-raises h's Goexit as a panic of [ErrHandlerGoexit]).
//
// Inside the handler of another New, h keeps the earlier of the two
// deadlines and, whatever the mode, runs cooperatively on the calling
// goroutine: only the outermost New races, and only it watches for the
// client's hang-up, which ends the inner contexts too. [Disarm] and [Extend]
// move the deadlines of all of them.
//
// New panics, with a message starting "fasttimeout: ", if h is nil or cfg is
// invalid (see [Config]).
func New(h fasthttp.RequestHandler, cfg Config) fasthttp.RequestHandler {
	if h == nil {
		panic("fasttimeout: New needs a handler, got nil")
	}
	m := &middleware{settings: cfg.resolve(), handler: h}
	m.housekeeper = newHousekeeper(m.Precision)
	if m.MaxConcurrency > 0 {
		m.limiter = newLimiter(int64(m.MaxConcurrency), m.AdaptiveConcurrency, m.Timeout, m.stats, &m.late)
	}
	if m.Mode == Cooperative {
		return m.serveCooperative
	}
	return m.serveRacing
}

// middleware is one New's state, shared by all its requests. In its
// methods, outer is the call of an enclosing New (nil: none).
type middleware struct {
	settings
	handler     fasthttp.RequestHandler
	housekeeper *housekeeper
	limiter     *limiter     // nil without a concurrency limit
	late        atomic.Int64 // handlers of this middleware running past their deadline
}

// admit decides what happens to a request before its handler runs: run is
// false for one answered already (refused, out of budget, its client gone
// while it waited) or skipped. Otherwise it returns when the request arrived,
// its deadline, and when it got its slot (now without a limit).
func (m *middleware) admit(ctx *fasthttp.RequestCtx, outer *call) (start, deadline, admitted int64, run bool) {
	if m.countRequests {
		m.stats.requests.add(ctx.ConnID(), 1)
	}
	if m.Skip != nil && m.skips(ctx, outer) {
		m.handler(ctx)
		return 0, 0, 0, false
	}
	if m.MaxLateHandlers > 0 && m.late.Load() >= int64(m.MaxLateHandlers) {
		m.stats.shed.Add(1)
		m.reject(ctx, outer, RejectedLateHandlers)
		return 0, 0, 0, false
	}
	t := now()
	start = m.arrival(ctx, t)
	deadline = m.requestDeadline(ctx, start, t, outer)
	if m.spent(start, deadline, t) {
		m.answerSpent(ctx, outer)
		return 0, 0, 0, false
	}
	admitted = t
	if m.limiter != nil {
		waited, reason := m.limiter.acquire(ctx, t, deadline, m.giveUp(start)) // counts its refusals
		switch reason {
		case "":
		case spentBudget:
			// It grew older than MaxQueueAge waiting: its caller gave up.
			m.answerSpent(ctx, outer)
			return 0, 0, 0, false
		default:
			m.reject(ctx, outer, reason)
			return 0, 0, 0, false
		}
		admitted += int64(waited)
		if m.spent(start, deadline, admitted) {
			// Handed a slot as its budget ran out (or its goroutine ran that
			// late), or past MaxQueueAge: the handler would start cancelled,
			// or run for a caller gone. A timeout to the limit, as if it ran.
			m.limiter.release(admitted, 0, false)
			if m.limiter.adaptive {
				m.limiter.drop(admitted, admitted)
			}
			m.answerSpent(ctx, outer)
			return 0, 0, 0, false
		}
		if waited > 0 && m.watchHangups && (outer.clientGone() || peerGone(ctx.Conn())) {
			// Its client (or the load balancer in front, answering for it)
			// hung up while it waited: neither a latency nor a timeout.
			// Inside a New that watches, this one looks too: that watch
			// may not have started (a cooperative handler that never asked
			// for Context, or within HangupDelay), or its goroutine not yet
			// run since the hang-up.
			m.limiter.release(admitted, 0, false)
			m.answerLeft(ctx, outer, start)
			return 0, 0, 0, false
		}
		if m.countRequests {
			m.stats.admitted.add(ctx.ConnID(), 1)
		}
	}
	if m.countRequests {
		m.stats.inFlight.add(ctx.ConnID(), 1)
	}
	return start, deadline, admitted, true
}

// spent reports whether a request that arrived at start is over at t before
// its handler starts: past deadline, or older than MaxQueueAge.
func (m *middleware) spent(start, deadline, t int64) bool {
	return deadline <= t || t > m.giveUp(start)
}

// giveUp returns when the caller of a request that arrived at start gives
// up: MaxQueueAge later, or never (noDeadline) without MaxQueueAge.
func (m *middleware) giveUp(start int64) int64 {
	if m.MaxQueueAge <= 0 {
		return noDeadline
	}
	return deadlineAfter(start, m.MaxQueueAge)
}

// arrival returns when the request ctx, reaching the middleware at t,
// arrived: when the server read it (its goroutine may run much later under
// load, and that wait is on the budget) or, with HonorQueueHeaders, when the
// proxy in front saw it, whichever is earlier.
func (m *middleware) arrival(ctx *fasthttp.RequestCtx, t int64) int64 {
	start := t
	// A RequestCtx set up by hand (Init) has no read time: ctx.Time() is
	// its ConnTime, which may be old.
	if arrived := ctx.Time(); arrived.After(ctx.ConnTime()) {
		start = min(start, int64(arrived.Sub(epoch)))
	}
	if m.HonorQueueHeaders {
		wall := time.Now()
		first, found, malformed := requestStart(&ctx.Request.Header, wall)
		if malformed {
			m.stats.badQueueHeaders.Add(1)
		}
		if found {
			start = min(start, t-int64(wall.Sub(first)))
		}
	}
	return start
}

// requestDeadline returns the deadline of the request ctx, which arrived
// at start and reaches the middleware at t: its timeout (TimeoutFunc's, or
// Timeout) after start, or sooner for a caller's budget
// (HonorDeadlineHeaders) or outer's deadline.
func (m *middleware) requestDeadline(ctx *fasthttp.RequestCtx, start, t int64, outer *call) int64 {
	timeout := m.Timeout
	if m.TimeoutFunc != nil {
		if d := m.timeoutOf(ctx, outer); d > 0 {
			timeout = d
		}
	}
	deadline := deadlineAfter(start, timeout) // math.MaxInt64 is a common "no timeout"
	if m.HonorDeadlineHeaders {
		budget, found, malformed := incomingBudget(&ctx.Request.Header)
		if malformed {
			m.stats.badDeadlineHeaders.Add(1)
		}
		if found {
			deadline = min(deadline, t+int64(budget-m.DeadlineMargin))
		}
	}
	if outer != nil {
		// Already here, not only in call.begin: the wait for a slot is a
		// share of what is left, and a budget spent outside is spent here.
		deadline = min(deadline, outer.deadline.Load())
	}
	return deadline
}

// answerSpent answers the request ctx with the timeout response without
// running its handler, its budget spent (see SpentBudget).
func (m *middleware) answerSpent(ctx *fasthttp.RequestCtx, outer *call) {
	m.stats.timeouts.Add(1)
	m.stats.spentBudgets.Add(1)
	markUnrun(ctx, outer, spentBudget)
	m.writeTimeoutResponse(&ctx.Response)
	if m.OnTimeout != nil {
		runCallback(ctx, outer == nil, nil, func() { m.OnTimeout(ctx, &ctx.Response) })
	}
}

// skips reports whether Config.Skip exempts the request ctx. A Skip that
// panics or calls runtime.Goexit is counted in Panics, as a handler's panic
// would be: it leaves the request no other outcome in Stats.
func (m *middleware) skips(ctx *fasthttp.RequestCtx, outer *call) (skip bool) {
	runCallback(ctx, outer == nil, &m.stats.panics, func() { skip = m.Skip(ctx) })
	return skip
}

// timeoutOf returns Config.TimeoutFunc's timeout for the request ctx,
// whose panic or runtime.Goexit is counted as Skip's is (see skips).
func (m *middleware) timeoutOf(ctx *fasthttp.RequestCtx, outer *call) (d time.Duration) {
	runCallback(ctx, outer == nil, &m.stats.panics, func() { d = m.TimeoutFunc(ctx) })
	return d
}

// runCallback runs f, which calls a Config callback on the server goroutine
// of the request ctx, and sees to the request if the callback does not
// return (see endCallback). f does not escape: it allocates nothing.
func runCallback(ctx *fasthttp.RequestCtx, outermost bool, panics *atomic.Int64, f func()) {
	returned := false
	defer endCallback(ctx, outermost, &returned, panics)
	f()
	returned = true
}

// endCallback, deferred by runCallback, sees to a callback that did not
// return: it is counted in panics, if not nil; a panic goes on with its
// value, as a handler's in time does; after a runtime.Goexit the outermost
// New closes the connection, as for a cooperative handler's (see
// finishCooperative), and an inner one lets it go on to the enclosing New,
// which takes it for its handler's. With GODEBUG=panicnil=1 a panic(nil)
// looks like a Goexit: the connection is closed, and as recover stopped the
// panic, the callback seems to have returned its zero values.
func endCallback(ctx *fasthttp.RequestCtx, outermost bool, returned *bool, panics *atomic.Int64) {
	if *returned {
		return
	}
	if panics != nil {
		panics.Add(1)
	}
	if v := recover(); v != nil {
		panic(v) // deferred calls run on the panicking stack: its trace is kept
	}
	if outermost {
		closeConn(ctx)
	}
}

// countLateReturn counts the return of a handler late by late: after its
// deadline, or after its client hung up.
func (m *middleware) countLateReturn(late time.Duration) {
	m.late.Add(-1)
	m.stats.lateRunning.Add(-1)
	m.stats.lateFinished.Add(1)
	m.stats.lateRun.observe(late)
}

// leaveFlight counts a handler out of Stats.InFlight on connID's stripe,
// last of all (see Stats.Snapshot): after counting it late and its callbacks
// and, for a racing call that timed out or lost its client, after its server
// goroutine has answered (see disown).
func (m *middleware) leaveFlight(connID uint64) {
	if m.countRequests {
		m.stats.inFlight.add(connID, -1)
	}
}

// release gives back the concurrency slot of call c, whose handler returned
// at t, in time or not.
func (m *middleware) release(c *call, t int64, inTime bool) {
	if m.limiter != nil {
		if m.limiter.adaptive && c.slot.Swap(slotReleased) == slotMoved {
			m.limiter.moved.Add(-1)
			inTime = false // its latency is what it chose, not congestion
		}
		m.limiter.release(t, time.Duration(t-c.admitted), inTime)
	}
}

// States of call.slot. A handler whose deadline Disarm or Extend moved (a
// long poll, an event stream) holds its slot as long as it chose, as a late
// one does: the adaptive limit keeps room beyond both (limiter.lateFloor),
// or a few long polls would refuse every request while they ran.
const (
	slotHeld     uint32 = iota // admitted (or no limit), deadline as set
	slotMoved                  // counted in limiter.moved
	slotReleased               // given back: a move from now on counts nothing
)

// countMoved counts call c, whose deadline Disarm or Extend has just moved,
// as moved until release or until it is late. The compare-and-swap keeps a
// move racing the handler's return from counting a slot given back.
func (c *call) countMoved() {
	l := c.m.limiter
	if l == nil || !l.adaptive || !c.slot.CompareAndSwap(slotHeld, slotMoved) {
		return
	}
	l.moved.Add(1)
	// A hang-up (or, after a short Extend, the deadline) making the call late
	// may have looked before this count: then this look sees its write.
	if p := c.phase(); p == callTimedOut || p == callGone {
		c.uncountMoved()
	}
}

// uncountMoved takes a call that has become late out of the moved
// handlers: it counts among the late ones from now on.
func (c *call) uncountMoved() {
	if c.slot.Load() == slotMoved && c.slot.CompareAndSwap(slotMoved, slotHeld) {
		c.m.limiter.moved.Add(-1)
	}
}

// Reasons given by [RejectReason] for a request refused with 503 without
// running its handler. They are also the values of the "reason" label of the
// Prometheus adaptor's rejected-requests counter.
const (
	// RejectedLateHandlers: Config.MaxLateHandlers handlers were running late.
	RejectedLateHandlers = "late_handlers"
	// RejectedQueueFull: the concurrency limit was reached and the queue was
	// full (on arrival, or a waiter in a queue that had stayed busy gave
	// way to a newer request), the request's budget left no time to wait,
	// or the server shut down while it waited; or, with
	// Config.AdaptiveConcurrency, the CPU is so saturated that requests wait
	// too long to be read at all.
	RejectedQueueFull = "queue_full"
	// RejectedQueueTimeout: the request waited its share of its budget for
	// a slot under the concurrency limit without getting one.
	RejectedQueueTimeout = "queue_timeout"
)

// rejectKey is the user-value key of a refusal's reason, spentBudget or
// leftWaiting.
type rejectKey struct{}

// spentBudget marks a request answered with the timeout response without
// running (see SpentBudget), leftWaiting one whose client hung up while it
// waited for a slot (see Stats.LeftWaiting).
const (
	spentBudget = "spent_budget"
	leftWaiting = "left_waiting"
)

// RejectReason returns why the middleware refused the request ctx with 503
// Service Unavailable without running its handler (RejectedLateHandlers,
// RejectedQueueFull or RejectedQueueTimeout), or "" if it did not. Call it
// after the handler returned by New has returned, from a middleware around
// it (to log or trace refusals, say).
//
// A request answered with the timeout response was not refused: after a
// racing timeout its RequestCtx belongs to the late handler, which may still
// write it, so RejectReason does not look at its user values then.
//
// Inside nested News an inner New's refusal is the request's, though the
// News around it ran their handlers: RejectReason returns its reason around
// that inner New, in the handlers around it once it has returned, and
// around any enclosing New, unless the outermost answered the request at
// its deadline or its client's hang-up in racing mode (as above). The client
// gets the inner New's 503 unless a handler around it writes over it. If
// several News refused the request (a handler calling an inner New more
// than once), RejectReason returns the last one's reason.
func RejectReason(ctx *fasthttp.RequestCtx) string {
	if reason := answeredUnrun(ctx); reason != spentBudget && reason != leftWaiting {
		return reason
	}
	return ""
}

// SpentBudget reports whether the middleware answered the request ctx with
// the timeout response without running its handler, because the request's
// budget was spent before it could start: by the caller's deadline header
// (Config.HonorDeadlineHeaders), by its age (Config.MaxQueueAge, on arrival
// or while it waited for a slot), or by a deadline that passed first. Such
// requests count in Stats.SpentBudgets and Timeouts. Call it where you
// would call RejectReason; inside nested News an inner New's spent budget
// is seen around the enclosing ones too, as RejectReason's refusals are.
func SpentBudget(ctx *fasthttp.RequestCtx) bool {
	return answeredUnrun(ctx) == spentBudget
}

// answeredUnrun returns why the middleware answered ctx without running its
// handler (a RejectReason, spentBudget or leftWaiting), or "", reading no
// user value of a timed-out RequestCtx. While an outermost New's handler runs, an inner
// New's mark is on the outermost call (see markUnrun).
func answeredUnrun(ctx *fasthttp.RequestCtx) string {
	if ctx == nil || ctx.LastTimeoutErrorResponse() != nil {
		return ""
	}
	if root := rootCall(ctx); root != nil {
		if r := root.unrun.Load(); r != 0 {
			return unrunReasons[r]
		}
	}
	mark, _ := ctx.UserValue(rejectKey{}).(string)
	return mark
}

// unrunReasons are the values of call.unrun, which holds the index of one
// (0: none).
var unrunReasons = [...]string{"", RejectedLateHandlers, RejectedQueueFull, RejectedQueueTimeout, spentBudget, leftWaiting}

// markUnrun records that ctx was answered without running its handler, and
// why (a RejectReason, spentBudget or leftWaiting). Inside another New it
// goes on the outermost call, which moves it to the user values when it
// ends (call.end): until then an enclosing handler's goroutine may be
// reading them to look up the call (call.begin), and a write would race. An
// inner New runs on the goroutine of the handler around it, so outer.root
// is its to call.
func markUnrun(ctx *fasthttp.RequestCtx, outer *call, reason string) {
	if outer == nil {
		ctx.SetUserValue(rejectKey{}, reason)
		return
	}
	if i := slices.Index(unrunReasons[:], reason); i > 0 { // a reason not listed is dropped, not stored as an index out of range
		outer.root().unrun.Store(uint32(i))
	}
}

// reject answers ctx with the 503 of a refused request.
func (m *middleware) reject(ctx *fasthttp.RequestCtx, outer *call, reason string) {
	m.writeShedResponse(&ctx.Response)
	markUnrun(ctx, outer, reason)
}

// reportPanic hands the panic of a handler past its deadline to OnPanic, or
// logs it.
func (m *middleware) reportPanic(ctx *fasthttp.RequestCtx, v any, stack []byte) {
	if m.OnPanic != nil {
		m.OnPanic(ctx, v, stack)
		return
	}
	// As in net/http: http.ErrAbortHandler aborts a response on purpose
	// (httputil.ReverseProxy's failed copy); its stack would be noise.
	if v == http.ErrAbortHandler {
		return
	}
	ctx.Logger().Printf("fasttimeout: panic in handler after its deadline: %v\n%s", v, stack)
}
