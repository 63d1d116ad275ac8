// Nothing lost: once a server is quiet, the counters and histograms of Stats
// must add up, whatever happened to each request. Users alert on them
// (prometheus/alerts.yml), so a request counted twice or never is a false
// alarm or a missed one.
package fasttimeout_test

import (
	"bufio"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/valyala/fasthttp"

	"github.com/fasttimeout/fasttimeout"
)

// accountingKind is one kind of request of TestStats_nothing_lost: what its
// client sends and what its handler does.
type accountingKind struct {
	name    string
	weight  int
	timeout time.Duration                 // of its middleware (TimeoutFunc)
	headers func(*fasthttp.RequestHeader) // sets what its client sends, if not nil
	badHdrs bool                          // its deadline and queue headers are malformed: counted, then ignored
	hangUp  bool                          // its client hangs up once the handler has started
	leaves  bool                          // its client hangs up once it has sent it: it may be waiting for a slot
	handler func(a *accounting, ctx *fasthttp.RequestCtx)
}

// accountingLate is the timeout of the kinds that outlive it: short, so that
// a case stays short, and they time out or not as the machine runs them.
const accountingLate = 20 * time.Millisecond

var accountingKinds = []accountingKind{
	{name: "fast", weight: 30, timeout: waitTimeout, handler: func(_ *accounting, ctx *fasthttp.RequestCtx) {
		ctx.SetBodyString("fast")
	}},
	// Never looks at its context: works past its deadline.
	{name: "ignore", weight: 12, timeout: accountingLate, handler: func(_ *accounting, ctx *fasthttp.RequestCtx) {
		time.Sleep(accountingLate + time.Duration(rand.N(20))*time.Millisecond)
		ctx.SetBodyString("ignore")
	}},
	// Returns when its context ends.
	{name: "honour", weight: 10, timeout: accountingLate, handler: func(_ *accounting, ctx *fasthttp.RequestCtx) {
		<-fasttimeout.Context(ctx).Done()
		ctx.SetBodyString("honour")
	}},
	{name: "panic-now", weight: 4, timeout: waitTimeout, handler: func(a *accounting, _ *fasthttp.RequestCtx) {
		a.thrown.Add(1)
		panic("panic-now")
	}},
	{name: "panic-late", weight: 4, timeout: accountingLate, handler: func(a *accounting, ctx *fasthttp.RequestCtx) {
		<-fasttimeout.Context(ctx).Done()
		a.thrown.Add(1)
		panic("panic-late")
	}},
	{name: "goexit", weight: 2, timeout: waitTimeout, handler: func(a *accounting, _ *fasthttp.RequestCtx) {
		a.thrown.Add(1)
		runtime.Goexit()
	}},
	// Switches its deadline off, or moves it, then works past the first
	// one; too late on a loaded machine, and it times out.
	{name: "disarm", weight: 5, timeout: accountingLate, handler: func(_ *accounting, ctx *fasthttp.RequestCtx) {
		fasttimeout.Disarm(ctx)
		time.Sleep(accountingLate + 10*time.Millisecond)
		ctx.SetBodyString("disarm")
	}},
	{name: "extend", weight: 5, timeout: accountingLate, handler: func(_ *accounting, ctx *fasthttp.RequestCtx) {
		fasttimeout.Extend(ctx, 2*accountingLate)
		time.Sleep(accountingLate + 10*time.Millisecond)
		ctx.SetBodyString("extend")
	}},
	{name: "skip", weight: 5, timeout: waitTimeout, handler: func(_ *accounting, ctx *fasthttp.RequestCtx) {
		ctx.SetBodyString("skip")
	}},
	// Config.Skip, or TimeoutFunc, panics for them (see accounting.config):
	// their handler never runs.
	{name: "bad-skip", weight: 2, timeout: waitTimeout, handler: func(*accounting, *fasthttp.RequestCtx) {}},
	{name: "bad-timeout-func", weight: 2, timeout: waitTimeout, handler: func(*accounting, *fasthttp.RequestCtx) {}},
	// Budgets spent on arrival: the caller's, and the age a proxy in front
	// gives the request.
	{name: "spent", weight: 5, timeout: waitTimeout, headers: setHeader("Grpc-Timeout", "0m"), handler: func(_ *accounting, ctx *fasthttp.RequestCtx) {
		ctx.SetBodyString("spent")
	}},
	{name: "old", weight: 3, timeout: waitTimeout, headers: hourOld, handler: func(_ *accounting, ctx *fasthttp.RequestCtx) {
		ctx.SetBodyString("old")
	}},
	// Its age is a little under MaxQueueAge: it runs, or, as the machine
	// runs it, is spent on arrival, waits past MaxQueueAge for a slot, or
	// has no time left to wait for one.
	{name: "aging", weight: 4, timeout: waitTimeout, headers: nearlyOld, handler: func(_ *accounting, ctx *fasthttp.RequestCtx) {
		ctx.SetBodyString("aging")
	}},
	{name: "bad-headers", weight: 4, timeout: waitTimeout, badHdrs: true, headers: func(h *fasthttp.RequestHeader) {
		h.Set("Grpc-Timeout", "soon")
		h.Set("X-Request-Start", "yesterday")
	}, handler: func(_ *accounting, ctx *fasthttp.RequestCtx) {
		ctx.SetBodyString("bad-headers")
	}},
	// A budget too short to wait for a slot: refused at once beyond the
	// limit, and too short to run, mostly, below it.
	{name: "tight", weight: 4, timeout: waitTimeout, headers: setHeader("Grpc-Timeout", "500u"), handler: func(_ *accounting, ctx *fasthttp.RequestCtx) {
		ctx.SetBodyString("tight")
	}},
	// Its client hangs up while it waits for its context; its timeout is
	// long enough for its client to be watched (and bounds it if not).
	{name: "hangup", weight: 4, timeout: 3 * time.Second, hangUp: true, handler: func(a *accounting, ctx *fasthttp.RequestCtx) {
		c := fasttimeout.Context(ctx)
		if started, ok := a.started.LoadAndDelete(string(ctx.Request.Header.Peek("X-Id"))); ok {
			close(started.(chan struct{}))
		}
		<-c.Done()
	}},
	// Its client hangs up at once: under a limit, it is answered 499
	// without running if it waited for a slot (LeftWaiting), run if not.
	{name: "leave", weight: 4, timeout: waitTimeout, leaves: true, handler: func(_ *accounting, ctx *fasthttp.RequestCtx) {
		ctx.SetBodyString("leave")
	}},
}

// setHeader returns a func that sets header name to value.
func setHeader(name, value string) func(*fasthttp.RequestHeader) {
	return func(h *fasthttp.RequestHeader) { h.Set(name, value) }
}

// hourOld sets X-Request-Start, as nginx does, to an hour ago less a
// minute: a start still believed, and past MaxQueueAge.
func hourOld(h *fasthttp.RequestHeader) {
	old := time.Now().Add(-time.Hour + time.Minute)
	h.Set("X-Request-Start", fmt.Sprintf("t=%d.%03d", old.Unix(), old.Nanosecond()/1e6))
}

// nearlyOld sets X-Request-Start, as nginx does, to MaxQueueAge (a minute;
// see accounting.config) ago, less twice accountingLate.
func nearlyOld(h *fasthttp.RequestHeader) {
	old := time.Now().Add(-time.Minute + 2*accountingLate)
	h.Set("X-Request-Start", fmt.Sprintf("t=%d.%03d", old.Unix(), old.Nanosecond()/1e6))
}

// accounting is what the test itself counts of a case, to compare with
// Stats: what entered the middlewares, what their handlers did, and how
// each request was answered.
type accounting struct {
	kinds   map[string]*accountingKind
	started sync.Map // X-Id -> chan struct{}, closed when a hangup handler starts

	entered, left atomic.Int64 // calls of the middlewares (the server's handler)
	ran           atomic.Int64 // handlers run under a deadline
	skipped       atomic.Int64 // requests Config.Skip exempted
	thrown        atomic.Int64 // panics and runtime.Goexit calls of handlers, Skip and TimeoutFunc
	unrun         atomic.Int64 // panics of Skip and TimeoutFunc: the handler never ran
	badDeadline   atomic.Int64 // malformed deadline headers that reached the middleware's check
	badQueue      atomic.Int64 // malformed queue headers, likewise

	timeoutAnswers atomic.Int64 // answered with the timeout response
	goneAnswers    atomic.Int64 // answered with 499, the client gone
	refusedAnswers atomic.Int64 // answered with 503
	shed           atomic.Int64 // RejectReason: late_handlers
	full           atomic.Int64 // RejectReason: queue_full
	queueTimeout   atomic.Int64 // RejectReason: queue_timeout
	spent          atomic.Int64 // SpentBudget

	onTimeout, onHangup, onLateReturn, onPanic atomic.Int64
}

func newAccounting() *accounting {
	a := &accounting{kinds: map[string]*accountingKind{}}
	for i := range accountingKinds {
		a.kinds[accountingKinds[i].name] = &accountingKinds[i]
	}
	return a
}

// kindOf returns the kind of request ctx, from its path's last element.
func (a *accounting) kindOf(ctx *fasthttp.RequestCtx) *accountingKind {
	path := string(ctx.Path())
	return a.kinds[path[strings.LastIndexByte(path, '/')+1:]]
}

// config is the Config of a case's middleware in mode, counting its
// callbacks.
func (a *accounting) config(mode fasttimeout.Mode, stats *fasttimeout.Stats) fasttimeout.Config {
	return fasttimeout.Config{
		Mode:                 mode,
		Stats:                stats,
		HonorDeadlineHeaders: true,
		HonorQueueHeaders:    true,
		MaxQueueAge:          time.Minute, // the "old" requests are an hour old, less a minute
		TimeoutFunc: func(ctx *fasthttp.RequestCtx) time.Duration {
			k := a.kindOf(ctx)
			if k.name == "bad-timeout-func" {
				a.throwUnrun()
			}
			return k.timeout
		},
		Skip: func(ctx *fasthttp.RequestCtx) bool {
			switch a.kindOf(ctx).name {
			case "skip":
				a.skipped.Add(1)
				return true
			case "bad-skip":
				a.throwUnrun()
			}
			return false
		},
		OnTimeout:    func(*fasthttp.RequestCtx, *fasthttp.Response) { a.onTimeout.Add(1) },
		OnHangup:     func(*fasthttp.RequestCtx, time.Duration) { a.onHangup.Add(1) },
		OnLateReturn: func(*fasthttp.RequestCtx, time.Duration) { a.onLateReturn.Add(1) },
		OnPanic:      func(*fasthttp.RequestCtx, any, []byte) { a.onPanic.Add(1) },
	}
}

// throwUnrun panics in Skip or TimeoutFunc, counting it.
func (a *accounting) throwUnrun() {
	a.thrown.Add(1)
	a.unrun.Add(1)
	panic("a bug in Config")
}

// handler is the handler every middleware of a case runs.
func (a *accounting) handler(ctx *fasthttp.RequestCtx) {
	k := a.kindOf(ctx)
	if k.name != "skip" {
		a.ran.Add(1)
	}
	k.handler(a, ctx)
}

// around is the server's handler: it routes to a middleware, recovers what
// it re-raises (as users' recover middlewares do) and records how the
// request was answered.
func (a *accounting) around(route func(*fasthttp.RequestCtx) fasthttp.RequestHandler) fasthttp.RequestHandler {
	return func(ctx *fasthttp.RequestCtx) {
		a.entered.Add(1)
		k := a.kindOf(ctx) // read now: after a racing timeout, ctx is the late handler's
		// Deferred: it runs after a panic the middleware re-raises, and
		// after a cooperative handler's runtime.Goexit, which nothing
		// answers.
		defer func() {
			if v := recover(); v != nil {
				ctx.Response.Reset()
				ctx.SetStatusCode(fasthttp.StatusInternalServerError)
			}
			a.record(ctx, k)
			a.left.Add(1)
		}()
		route(ctx)(ctx)
	}
}

// record counts how ctx, a request of kind k, was answered, and whether its
// malformed headers reached the middleware's check (it reads them after the
// MaxLateHandlers check and Skip only).
func (a *accounting) record(ctx *fasthttp.RequestCtx, k *accountingKind) {
	var status int
	if resp := ctx.LastTimeoutErrorResponse(); resp != nil {
		status = resp.StatusCode() // racing: the late handler keeps ctx.Response
	} else {
		status = ctx.Response.StatusCode()
	}
	switch status {
	case fasttimeout.DefaultStatusCode:
		a.timeoutAnswers.Add(1)
	case fasttimeout.StatusClientClosedRequest:
		a.goneAnswers.Add(1)
	case fasthttp.StatusServiceUnavailable:
		a.refusedAnswers.Add(1)
	}
	reason := fasttimeout.RejectReason(ctx)
	switch reason {
	case fasttimeout.RejectedLateHandlers:
		a.shed.Add(1)
	case fasttimeout.RejectedQueueFull:
		a.full.Add(1)
	case fasttimeout.RejectedQueueTimeout:
		a.queueTimeout.Add(1)
	}
	if fasttimeout.SpentBudget(ctx) {
		a.spent.Add(1)
	}
	if k.badHdrs && reason != fasttimeout.RejectedLateHandlers {
		a.badDeadline.Add(1)
		a.badQueue.Add(1)
	}
}

// accountingClient is one keep-alive connection of a case's clients.
type accountingClient struct {
	addr string
	conn net.Conn
	br   *bufio.Reader
	bw   *bufio.Writer
}

func (c *accountingClient) dial() error {
	conn, err := net.DialTimeout("tcp", c.addr, stressBound)
	if err != nil {
		return err
	}
	c.conn, c.br, c.bw = conn, bufio.NewReader(conn), bufio.NewWriter(conn)
	return nil
}

func (c *accountingClient) close() {
	if c.conn != nil {
		_ = c.conn.Close()
		c.conn = nil
	}
}

// send writes a request of kind k to path; id names it.
func (c *accountingClient) send(path string, k *accountingKind, id string) error {
	var req fasthttp.Request
	req.SetRequestURI(path)
	req.Header.SetHost("accounting.test")
	req.Header.Set("X-Id", id)
	if k.headers != nil {
		k.headers(&req.Header)
	}
	if err := c.conn.SetDeadline(time.Now().Add(stressBound)); err != nil {
		return err
	}
	if err := req.Write(c.bw); err != nil {
		return err
	}
	return c.bw.Flush()
}

// accountingCase is one configuration of TestStats_nothing_lost.
type accountingCase struct {
	name            string
	mode            fasttimeout.Mode
	shared          bool // a second middleware, in the other mode, shares the Stats
	maxConcurrency  int
	adaptive        bool
	maxLateHandlers int
	shutdown        bool // the server shuts down halfway, requests in flight and waiting
}

// TestStats_nothing_lost drives a seeded mix of requests (in time, late,
// honouring their context or not, panicking, calling runtime.Goexit, Disarm
// or Extend, skipped, failing in Skip or TimeoutFunc, spent on arrival, with
// malformed headers, refused by a limit, shed, and clients hanging up while
// their request runs or waits for a slot)
// concurrently through a real server, then, once it is quiet, checks that
// Stats accounts for every request once: every request that entered ends
// in exactly one of handler run, skipped, failed in Skip or TimeoutFunc,
// shed, refused, spent and left waiting, and each counter agrees with the
// answers the clients got, the callbacks, the histograms that shadow it and
// the other counters. Which outcome each request has depends on the machine's timing;
// the identities do not.
func TestStats_nothing_lost(t *testing.T) {
	t.Parallel()
	seed := uint64(time.Now().UnixNano())
	if s, err := strconv.ParseUint(os.Getenv("FASTTIMEOUT_SEED"), 10, 64); err == nil {
		seed = s
	}
	t.Logf("seed %d (FASTTIMEOUT_SEED=%d to replay the mix; the timing differs)", seed, seed)
	const (
		connections = 12
		requests    = 300
	)
	cases := []accountingCase{
		{name: "racing", mode: fasttimeout.Racing, maxLateHandlers: 6},
		{name: "cooperative", mode: fasttimeout.Cooperative, maxLateHandlers: 3},
		{name: "racing_fixed_limit", mode: fasttimeout.Racing, maxConcurrency: 4},
		{name: "cooperative_fixed_limit", mode: fasttimeout.Cooperative, maxConcurrency: 4},
		{name: "racing_adaptive", mode: fasttimeout.Racing, adaptive: true, maxLateHandlers: 6},
		{name: "cooperative_adaptive", mode: fasttimeout.Cooperative, adaptive: true, maxLateHandlers: 6},
		{name: "shared_fixed_limit", mode: fasttimeout.Racing, shared: true, maxConcurrency: 3, maxLateHandlers: 2},
		{name: "shared_adaptive", mode: fasttimeout.Cooperative, shared: true, adaptive: true},
		{name: "shutdown_racing", mode: fasttimeout.Racing, maxConcurrency: 4, shutdown: true},
		{name: "shutdown_cooperative", mode: fasttimeout.Cooperative, maxConcurrency: 4, shutdown: true},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			runAccountingCase(t, tc, seed+uint64(i), connections, requests)
		})
	}
}

func runAccountingCase(t *testing.T, tc accountingCase, seed uint64, connections, requests int) {
	a := newAccounting()
	stats := new(fasttimeout.Stats)
	modes := []fasttimeout.Mode{tc.mode}
	if tc.shared {
		modes = append(modes, 1-tc.mode)
	}
	var middlewares []fasthttp.RequestHandler
	for _, mode := range modes {
		cfg := a.config(mode, stats)
		cfg.MaxConcurrency = tc.maxConcurrency
		cfg.AdaptiveConcurrency = tc.adaptive
		cfg.MaxLateHandlers = tc.maxLateHandlers
		middlewares = append(middlewares, fasttimeout.New(a.handler, cfg))
	}
	route := func(ctx *fasthttp.RequestCtx) fasthttp.RequestHandler {
		if strings.HasPrefix(string(ctx.Path()), "/b/") {
			return middlewares[len(middlewares)-1]
		}
		return middlewares[0]
	}
	modeOf := func(path string) fasttimeout.Mode {
		if strings.HasPrefix(path, "/b/") {
			return modes[len(modes)-1]
		}
		return modes[0]
	}
	server := startStressLoopback(t, a.around(route))

	weights := 0
	for _, k := range accountingKinds {
		weights += k.weight
	}
	pick := func(rng *rand.Rand) *accountingKind {
		n := rng.IntN(weights)
		for i := range accountingKinds {
			if n -= accountingKinds[i].weight; n < 0 {
				return &accountingKinds[i]
			}
		}
		panic("unreachable")
	}

	var next, hungUp atomic.Int64
	var shuttingDown atomic.Bool
	shutdownDone := make(chan error, 1)
	// failed reports a client's error, unless the server is shutting down:
	// then it closes connections, and refuses new ones.
	failed := func(format string, args ...any) {
		if !shuttingDown.Load() {
			t.Errorf(format, args...)
		}
	}
	scraped, stopScraping := make(chan []string, 1), make(chan struct{})
	go func() { scraped <- scrapeWhileRunning(stats, stopScraping) }()
	var wg sync.WaitGroup
	for conn := range connections {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(seed, uint64(conn)))
			c := &accountingClient{addr: server.addr}
			defer c.close()
			for n := next.Add(1); n <= int64(requests); n = next.Add(1) {
				if tc.shutdown && n == int64(requests/2) {
					shuttingDown.Store(true)
					go func() { shutdownDone <- server.shutdown() }()
				}
				k := pick(rng)
				if (k.hangUp || k.leaves) && runtime.GOOS != "linux" {
					k = &accountingKinds[0] // hang-ups are watched on Linux only
				}
				path := "/" + k.name
				if len(modes) > 1 && rng.IntN(2) == 1 {
					path = "/b" + path
				}
				if c.conn == nil {
					if err := c.dial(); err != nil {
						failed("dial: %v", err)
						return
					}
				}
				id := strconv.FormatInt(n, 10)
				var started chan struct{}
				if k.hangUp {
					started = make(chan struct{})
					a.started.Store(id, started)
				}
				if err := c.send(path, k, id); err != nil {
					failed("%s: send: %v", path, err)
					return
				}
				if k.leaves {
					c.close()
					hungUp.Add(1)
					continue
				}
				var resp fasthttp.Response
				read := make(chan error, 1)
				go func() { read <- resp.Read(c.br) }()
				var err error
				select {
				case err = <-read:
				case <-started: // nil unless k.hangUp
					c.close() // hang up while the handler runs
					<-read
					hungUp.Add(1)
					continue
				}
				a.started.Delete(id)
				if err != nil {
					// Only a cooperative handler's runtime.Goexit leaves
					// a request unanswered: its connection is closed.
					c.close()
					if k.name != "goexit" || modeOf(path) != fasttimeout.Cooperative {
						failed("%s: %v", path, err)
						return
					}
					continue
				}
				if resp.ConnectionClose() {
					c.close()
				}
			}
		})
	}
	wg.Wait()
	close(stopScraping)
	assert.Empty(t, receive(t, scraped, "the scraper's findings"), "snapshots taken while requests ran")
	if tc.shutdown {
		require.NoError(t, receive(t, shutdownDone, "end of the shutdown"))
	}

	var s fasttimeout.Counters
	require.Eventually(t, func() bool {
		if a.entered.Load() != a.left.Load() {
			return false
		}
		s = stats.Snapshot()
		return s.InFlight == 0 && s.LateRunning == 0 && s.Waiting == 0
	}, stressBound, time.Millisecond, "the server never became quiet")
	s = stats.Snapshot() // InFlight is zero: everything before is counted in full
	lateness, lateRun, queueWait := stats.AnswerLateness(), stats.LateRun(), stats.QueueWait()

	t.Logf("%d requests, %d hung up; ran %d, skipped %d; %+v", requests, hungUp.Load(), a.ran.Load(), a.skipped.Load(), s)
	if !tc.shutdown {
		assert.EqualValues(t, requests, a.entered.Load(), "every request reached the server")
	}

	// Where every request ended.
	assert.Equal(t, a.entered.Load(), s.Requests, "Requests: every call of a middleware")
	assert.Equal(t, s.Requests, a.ran.Load()+a.skipped.Load()+a.unrun.Load()+s.Shed+s.Rejected+s.SpentBudgets+s.LeftWaiting,
		"Requests = handlers run + skipped + Skip or TimeoutFunc panicked + shed + rejected + spent budgets + left waiting")
	assert.Equal(t, s.RejectedFull+s.RejectedQueueTimeout, s.Rejected, "Rejected = RejectedFull + RejectedQueueTimeout")
	assert.Equal(t, a.shed.Load(), s.Shed, "Shed: RejectReason late_handlers")
	assert.Equal(t, a.full.Load(), s.RejectedFull, "RejectedFull: RejectReason queue_full")
	assert.Equal(t, a.queueTimeout.Load(), s.RejectedQueueTimeout, "RejectedQueueTimeout: RejectReason queue_timeout")
	assert.Equal(t, a.refusedAnswers.Load(), s.Shed+s.Rejected, "503 answers: shed and rejected")
	assert.Equal(t, a.spent.Load(), s.SpentBudgets, "SpentBudgets: SpentBudget")
	if tc.maxConcurrency > 0 || tc.adaptive {
		assert.Equal(t, a.ran.Load(), s.Admitted, "Admitted: every handler run under the limit")
		assert.Equal(t, s.Queued, queueWait.Count, "QueueWait: one observation per request queued")
		assert.GreaterOrEqual(t, s.Queued, s.RejectedQueueTimeout+s.LeftWaiting, "a queue timeout, and a request left waiting, waited in the queue")
	} else {
		assert.Zero(t, s.Admitted)
		assert.Zero(t, s.Queued)
		assert.Zero(t, s.Rejected)
		assert.Zero(t, s.LeftWaiting)
		assert.Zero(t, queueWait.Count)
	}
	if tc.maxLateHandlers == 0 {
		assert.Zero(t, s.Shed)
	}

	// Timeouts, hang-ups and late handlers.
	assert.Equal(t, a.timeoutAnswers.Load(), s.Timeouts, "Timeouts: answered with the timeout response")
	assert.Equal(t, a.onTimeout.Load(), s.Timeouts, "Timeouts: OnTimeout calls")
	assert.GreaterOrEqual(t, s.Timeouts, s.SpentBudgets, "Timeouts include SpentBudgets")
	assert.Equal(t, s.Timeouts-s.SpentBudgets, lateness.Count, "AnswerLateness: every timeout answer but spent budgets")
	assert.Equal(t, a.goneAnswers.Load(), s.ClientGone, "ClientGone: answered with 499")
	assert.Equal(t, a.onHangup.Load(), s.ClientGone, "ClientGone: OnHangup calls")
	assert.Equal(t, s.Timeouts-s.SpentBudgets+s.ClientGone-s.LeftWaiting, s.LateFinished,
		"LateFinished: every handler timed out while running, or whose client left while it ran")
	assert.Equal(t, s.LateFinished, lateRun.Count, "LateRun: one observation per late return")
	assert.Equal(t, s.LateFinished, a.onLateReturn.Load(), "LateFinished: OnLateReturn calls")
	assert.Equal(t, a.thrown.Load(), s.Panics, "Panics: every panic and runtime.Goexit of a handler, Skip or TimeoutFunc")
	assert.LessOrEqual(t, a.onPanic.Load(), s.Panics, "OnPanic gets the late ones")

	// Headers.
	assert.Equal(t, a.badDeadline.Load(), s.BadDeadlineHeaders, "BadDeadlineHeaders")
	assert.Equal(t, a.badQueue.Load(), s.BadQueueHeaders, "BadQueueHeaders")

	// The limit, summed over the middlewares.
	switch n := int64(len(modes)); {
	case tc.adaptive:
		assert.GreaterOrEqual(t, s.ConcurrencyLimit, n*4, "ConcurrencyLimit: at least the floors")
		assert.LessOrEqual(t, s.ConcurrencyLimit, n*fasttimeout.DefaultMaxConcurrency, "ConcurrencyLimit: at most the ceilings")
	default:
		assert.Equal(t, n*int64(tc.maxConcurrency), s.ConcurrencyLimit, "ConcurrencyLimit: the fixed limits")
	}

	for name, h := range map[string]fasttimeout.Histogram{"AnswerLateness": lateness, "LateRun": lateRun, "QueueWait": queueWait} {
		var sum int64
		for _, n := range h.Counts {
			sum += n
		}
		assert.Equal(t, h.Count, sum, "%s: Count is the sum of Counts", name)
	}
}

// scrapeWhileRunning takes snapshots of stats, as a scraper would, until
// stop is closed, and returns what it found wrong in them: in every snapshot
// the gauges are never negative and Rejected is RejectedFull plus
// RejectedQueueTimeout, and from one snapshot to the next no counter and no
// histogram's count goes down (Prometheus would take that for a reset).
func scrapeWhileRunning(stats *fasttimeout.Stats, stop <-chan struct{}) []string {
	var found []string
	report := func(format string, args ...any) {
		if len(found) < 10 {
			found = append(found, fmt.Sprintf(format, args...))
		}
	}
	counters := func(c fasttimeout.Counters) map[string]int64 {
		return map[string]int64{
			"Requests": c.Requests, "Timeouts": c.Timeouts, "LateFinished": c.LateFinished, "Panics": c.Panics,
			"Shed": c.Shed, "BadDeadlineHeaders": c.BadDeadlineHeaders, "SpentBudgets": c.SpentBudgets,
			"ClientGone": c.ClientGone, "LeftWaiting": c.LeftWaiting, "Admitted": c.Admitted, "Queued": c.Queued, "Rejected": c.Rejected,
			"RejectedFull": c.RejectedFull, "RejectedQueueTimeout": c.RejectedQueueTimeout,
			"BadQueueHeaders": c.BadQueueHeaders,
			"AnswerLateness":  stats.AnswerLateness().Count, "LateRun": stats.LateRun().Count,
			"QueueWait": stats.QueueWait().Count,
		}
	}
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	var last map[string]int64
	for {
		select {
		case <-stop:
			return found
		case <-tick.C:
		}
		c := stats.Snapshot()
		if c.InFlight < 0 || c.LateRunning < 0 || c.Waiting < 0 {
			report("a negative gauge: %+v", c)
		}
		if c.Rejected != c.RejectedFull+c.RejectedQueueTimeout {
			report("Rejected is not RejectedFull + RejectedQueueTimeout: %+v", c)
		}
		now := counters(c)
		for name, n := range now {
			if n < last[name] {
				report("%s went down from %d to %d", name, last[name], n)
			}
		}
		last = now
	}
}
