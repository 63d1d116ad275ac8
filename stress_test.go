// Reliability suite: a mixed stress over real keep-alive connections with
// cross-talk detection, over a fasthttp.Server on 127.0.0.1 (the harness is
// in helpers_test.go).
//
// The default run (with or without -short) is the bounded CI run. The long
// run, 100 000 requests over 1 000 concurrent keep-alive connections, is:
//
//	FASTTIMEOUT_STRESS=long go test -race -run '^TestStress$' -timeout 30m -v .
package fasttimeout_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"regexp"
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

// stressSize is how much load TestStress sends.
type stressSize struct {
	name        string
	connections int
	requests    int
}

func stressSizeFromEnv() stressSize {
	if os.Getenv("FASTTIMEOUT_STRESS") == "long" {
		return stressSize{name: "long", connections: 1000, requests: 100_000}
	}
	return stressSize{name: "bounded", connections: 300, requests: 40_000}
}

// secretPattern matches the secrets the clients send: "S" and 16 hex digits.
var secretPattern = regexp.MustCompile(`S[0-9a-f]{16}`)

// secretPanic is the value handlers panic with; the outer recover and
// OnPanic check that they get this very pointer back.
type secretPanic struct{ secret string }

func (p *secretPanic) String() string { return "panic:" + p.secret }

// stressExpectation is what a client must get back for a kind of request.
type stressExpectation int

const (
	expectOwn     stressExpectation = iota // the handler's own response
	expectTimeout                          // exactly the timeout response
	expectEither                           // the handler raced its deadline: own or timeout
	expectPanic                            // 500 from the outer recover, carrying the secret
	expectGoexit                           // 500 from the outer recover, without secret
)

// route is one path of the stress server: a handler kind behind one of
// several middlewares (per-request timeouts by routing).
type stressRoute struct {
	path    string
	kind    string
	weight  int
	expect  stressExpectation
	status  int    // of the own response
	timeout string // of the middleware, for the report
}

// gates hold raced handlers that ignore their context until their request
// has been answered with the timeout response: OnTimeout opens the gate of
// its request. A handler waiting on its gate is a late handler for sure.
type lateGates struct{ m sync.Map } // *fasthttp.RequestCtx -> chan struct{}

func (g *lateGates) of(ctx *fasthttp.RequestCtx) chan struct{} {
	if ch, ok := g.m.Load(ctx); ok {
		return ch.(chan struct{})
	}
	ch, _ := g.m.LoadOrStore(ctx, make(chan struct{}))
	return ch.(chan struct{})
}

func (g *lateGates) open(ctx *fasthttp.RequestCtx) { close(g.of(ctx)) }

// wait blocks until ctx's gate opens; false means it never did.
func (g *lateGates) wait(ctx *fasthttp.RequestCtx) bool {
	defer g.m.Delete(ctx)
	select {
	case <-g.of(ctx):
		return true
	case <-time.After(stressBound):
		return false
	}
}

// stressCounters are the figures of a stress run.
type stressCounters struct {
	requests        atomic.Int64
	own             atomic.Int64
	timeouts        atomic.Int64
	crossTalk       atomic.Int64
	wrongStatus     atomic.Int64
	transportErrors atomic.Int64
	mixups          atomic.Int64 // a handler saw a header secret different from its query secret
	panicsThrown    atomic.Int64 // before the deadline, re-raised
	panicsRecovered atomic.Int64 // by the outer recover, with the thrown pointer
	panicsForeign   atomic.Int64 // recovered value that no handler of this request threw
	lateThrown      atomic.Int64 // panics after the deadline
	lateReported    atomic.Int64 // OnPanic with the thrown pointer and a stack
	lateMisreported atomic.Int64
	causeWrong      atomic.Int64 // a honouring handler saw another cause than ErrTimeout
	stuckGates      atomic.Int64
	lateWrites      atomic.Int64 // writes of late handlers into their own ctx
	stateHeld       atomic.Int64 // late handler states allocated
	stateReleased   atomic.Int64 // ... and collected after they returned
}

// stressServer is the handler side of the stress.
type stressServer struct {
	t        testing.TB
	stats    fasttimeout.Stats
	gates    lateGates
	count    *stressCounters
	thrown   sync.Map // secret -> *secretPanic
	disarmed sync.Map // secret -> true: Disarm succeeded
	routes   []stressRoute
	handler  fasthttp.RequestHandler
}

func newStressServer(t testing.TB, count *stressCounters) *stressServer {
	s := &stressServer{t: t, count: count}
	mux := map[string]fasthttp.RequestHandler{}
	add := func(path, kind string, weight int, expect stressExpectation, status int, timeout string, h fasthttp.RequestHandler) {
		mux[path] = h
		s.routes = append(s.routes, stressRoute{path: path, kind: kind, weight: weight, expect: expect, status: status, timeout: timeout})
	}
	onPanic := func(_ *fasthttp.RequestCtx, v any, stack []byte) {
		if p, ok := v.(*secretPanic); ok && len(stack) > 0 {
			if thrown, found := s.thrown.LoadAndDelete(p.secret); found && thrown == p {
				s.count.lateReported.Add(1)
				return
			}
		}
		s.count.lateMisreported.Add(1)
	}

	// A generous timeout: these handlers must never time out.
	long := fasttimeout.Config{Timeout: 10 * time.Second, Stats: &s.stats, OnPanic: onPanic}
	racingLong := func(h fasthttp.RequestHandler) fasthttp.RequestHandler { return fasttimeout.New(h, long) }
	add("/fast", "fast", 30, expectOwn, 200, "10s", racingLong(s.fast))
	add("/stream", "stream", 10, expectOwn, 200, "10s", racingLong(s.stream))
	add("/in-time", "in-time", 5, expectOwn, 200, "10s", racingLong(s.inTime))
	add("/panic-before", "panic-before", 5, expectPanic, 500, "10s", racingLong(s.panicBefore))
	add("/goexit", "goexit", 1, expectGoexit, 500, "10s", racingLong(s.goexit))
	coopLong := long
	coopLong.Mode = fasttimeout.Cooperative
	add("/coop/fast", "coop-fast", 5, expectOwn, 200, "10s", fasttimeout.New(s.fast, coopLong))
	add("/coop/panic-before", "coop-panic-before", 2, expectPanic, 500, "10s", fasttimeout.New(s.panicBefore, coopLong))

	// Short per-request timeouts (Config.TimeoutFunc, from the path's last
	// element, in milliseconds): these handlers outlive their deadline.
	timeoutFromPath := func(ctx *fasthttp.RequestCtx) time.Duration {
		path := ctx.Path()
		ms, err := strconv.Atoi(string(path[bytes.LastIndexByte(path, '/')+1:]))
		if err != nil {
			return 0
		}
		return time.Duration(ms) * time.Millisecond
	}
	gated := fasttimeout.New(s.byKind, fasttimeout.Config{TimeoutFunc: timeoutFromPath, Stats: &s.stats, OnPanic: onPanic,
		OnTimeout: func(ctx *fasthttp.RequestCtx, _ *fasthttp.Response) { s.gates.open(ctx) }})
	plain := fasttimeout.New(s.byKind, fasttimeout.Config{TimeoutFunc: timeoutFromPath, Stats: &s.stats, OnPanic: onPanic})
	coop := fasttimeout.New(s.byKind, fasttimeout.Config{TimeoutFunc: timeoutFromPath, Stats: &s.stats, Mode: fasttimeout.Cooperative})
	for _, ms := range []int{10, 30, 60} {
		d := fmt.Sprint(ms)
		add("/ignore/"+d, "ignore", 8, expectTimeout, 0, d+"ms", gated)
		add("/panic-after/"+d, "panic-after", 3, expectTimeout, 0, d+"ms", gated)
		// Not gated: a honouring handler returns the moment its context
		// ends, racing the timeout answer (see
		// TestTimeout_stale_signal_never_reaches_a_recycled_worker).
		add("/honour/"+d, "honour", 6, expectTimeout, 0, d+"ms", plain)
		add("/racy/"+d, "racy", 6, expectEither, 200, d+"ms", plain)
		add("/disarm-stream/"+d, "stream", 3, expectEither, 200, d+"ms", plain)
		add("/coop/honour/"+d, "coop-honour", 3, expectTimeout, 0, d+"ms", coop)
	}

	router := func(ctx *fasthttp.RequestCtx) {
		h, ok := mux[string(ctx.Path())]
		if !ok {
			ctx.Error("no route", fasthttp.StatusNotFound)
			return
		}
		// A request whose budget is spent before its handler starts (it
		// waited too long to be read) gets OnTimeout, which opens its gate,
		// but no handler waits on the gate to remove it; fasthttp reuses
		// the RequestCtx, and a later request on it would find the gate
		// open and answer in time. No OnTimeout of this request has run
		// yet here.
		s.gates.m.Delete(ctx)
		h(ctx)
	}
	s.handler = s.recoverer(router)
	return s
}

// recoverer is the outer recover middleware users put around their
// handlers: it turns a panic into a 500 that names what it caught.
func (s *stressServer) recoverer(next fasthttp.RequestHandler) fasthttp.RequestHandler {
	return func(ctx *fasthttp.RequestCtx) {
		defer func() {
			v := recover()
			if v == nil {
				return
			}
			ctx.Response.Reset()
			ctx.SetStatusCode(fasthttp.StatusInternalServerError)
			p, ok := v.(*secretPanic)
			if !ok {
				ctx.SetBodyString(fmt.Sprint("panic-other:", v))
				return
			}
			if thrown, found := s.thrown.LoadAndDelete(p.secret); found && thrown == p {
				s.count.panicsRecovered.Add(1)
			} else {
				s.count.panicsForeign.Add(1)
			}
			ctx.Response.Header.Set("X-Secret", p.secret)
			ctx.SetBodyString(p.String())
		}()
		next(ctx)
	}
}

// secret returns the request's secret, and counts a mix-up if its header and
// query disagree.
func (s *stressServer) secret(ctx *fasthttp.RequestCtx) string {
	secret := string(ctx.Request.Header.Peek("X-Secret"))
	if q := string(ctx.QueryArgs().Peek("secret")); q != secret {
		s.count.mixups.Add(1)
	}
	return secret
}

func (s *stressServer) fast(ctx *fasthttp.RequestCtx) {
	secret := s.secret(ctx)
	if string(ctx.Path()) == "/coop/fast" {
		replyWithSecret(ctx, "coop-fast", secret)
		return
	}
	replyWithSecret(ctx, "fast", secret)
}

func (s *stressServer) stream(ctx *fasthttp.RequestCtx) {
	secret := s.secret(ctx)
	ctx.Response.Header.Set("X-Secret", secret)
	ctx.SetContentType("text/plain")
	ctx.SetBodyStreamWriter(func(w *bufio.Writer) {
		for i, part := range []string{"stream:", "|", "|"} {
			_, _ = w.WriteString(part + secret)
			if i < 2 {
				_ = w.Flush()
			}
		}
	})
}

func (s *stressServer) inTime(ctx *fasthttp.RequestCtx) {
	secret := s.secret(ctx)
	select {
	case <-fasttimeout.Context(ctx).Done():
	case <-time.After(time.Millisecond):
	}
	replyWithSecret(ctx, "in-time", secret)
}

func (s *stressServer) panicBefore(ctx *fasthttp.RequestCtx) {
	p := &secretPanic{secret: s.secret(ctx)}
	s.thrown.Store(p.secret, p)
	s.count.panicsThrown.Add(1)
	panic(p)
}

func (s *stressServer) goexit(ctx *fasthttp.RequestCtx) {
	_ = s.secret(ctx)
	runtime.Goexit()
}

// ignore never looks at its context: it works until its request has been
// answered with the timeout response, then writes into its own ctx.
func (s *stressServer) ignore(ctx *fasthttp.RequestCtx) {
	secret := s.secret(ctx)
	state := &[4096]byte{1}
	s.count.stateHeld.Add(1)
	runtime.AddCleanup(state, func(released *atomic.Int64) { released.Add(1) }, &s.count.stateReleased)
	if !s.gates.wait(ctx) {
		s.count.stuckGates.Add(1)
	}
	replyWithSecret(ctx, "ignore", secret)
	s.count.lateWrites.Add(1)
	runtime.KeepAlive(state)
}

func (s *stressServer) panicAfter(ctx *fasthttp.RequestCtx) {
	p := &secretPanic{secret: s.secret(ctx)}
	if !s.gates.wait(ctx) {
		s.count.stuckGates.Add(1)
	}
	s.thrown.Store(p.secret, p)
	s.count.lateThrown.Add(1)
	panic(p)
}

// honour waits for its context, checks why it ended, and writes late, racing
// the timeout answer of its request.
func (s *stressServer) honour(ctx *fasthttp.RequestCtx) {
	secret := s.secret(ctx)
	c := fasttimeout.Context(ctx)
	select {
	case <-c.Done():
	case <-time.After(stressBound):
	}
	if !errors.Is(c.Err(), context.DeadlineExceeded) || !errors.Is(context.Cause(c), fasttimeout.ErrTimeout) {
		s.count.causeWrong.Add(1)
	}
	replyWithSecret(ctx, "honour", secret)
	s.count.lateWrites.Add(1)
}

// byKind runs the handler named by the path's first element, under a
// per-request timeout given by its last.
func (s *stressServer) byKind(ctx *fasthttp.RequestCtx) {
	path := string(ctx.Path())
	kind, ms, _ := strings.Cut(path[1:], "/")
	if kind == "coop" {
		kind, ms, _ = strings.Cut(ms, "/")
	}
	n, _ := strconv.Atoi(ms)
	switch kind {
	case "ignore":
		s.ignore(ctx)
	case "panic-after":
		s.panicAfter(ctx)
	case "honour":
		s.honour(ctx)
	case "racy":
		s.racy(ctx, time.Duration(n)*time.Millisecond)
	case "disarm-stream":
		s.disarmStream(ctx, time.Duration(n)*time.Millisecond)
	default:
		ctx.Error("no kind "+kind, fasthttp.StatusNotFound)
	}
}

// racy ignores its context and sleeps up to twice its timeout: it answers
// or times out, by chance.
func (s *stressServer) racy(ctx *fasthttp.RequestCtx, d time.Duration) {
	secret := s.secret(ctx)
	time.Sleep(rand.N(2 * d))
	replyWithSecret(ctx, "racy", secret)
}

// disarmStream switches its deadline off, outlives it, then streams. Once
// Disarm has said yes, the request must not time out.
func (s *stressServer) disarmStream(ctx *fasthttp.RequestCtx, d time.Duration) {
	secret := s.secret(ctx)
	if fasttimeout.Disarm(ctx) {
		s.disarmed.Store(secret, true)
	}
	time.Sleep(2 * d)
	s.stream(ctx)
}

// check classifies resp, the answer to a request of route r with secret.
// disarmed tells that the handler's Disarm succeeded: it must not time out.
func (c *stressCounters) check(t testing.TB, r *stressRoute, secret string, disarmed bool, resp *fasthttp.Response) {
	c.requests.Add(1)
	body, hdr := resp.Body(), string(resp.Header.Peek("X-Secret"))
	foreign := false
	for _, m := range secretPattern.FindAll(body, -1) {
		foreign = foreign || string(m) != secret
	}
	if foreign || (hdr != "" && hdr != secret) {
		if c.crossTalk.Add(1) <= 5 {
			t.Errorf("cross-talk: request %s %s got status %d, X-Secret %q, body %q", r.path, secret, resp.StatusCode(), hdr, body)
		}
		return
	}
	status := resp.StatusCode()
	isTimeout := status == fasttimeout.DefaultStatusCode && string(body) == fasttimeout.DefaultBody &&
		string(resp.Header.ContentType()) == fasttimeout.DefaultContentType && hdr == ""
	isOwn := status == r.status && hdr == secret && string(body) == ownBody(r.kind, secret)
	var ok bool
	switch r.expect {
	case expectOwn:
		ok = isOwn
	case expectTimeout:
		ok = isTimeout
	case expectEither:
		ok = isOwn || (isTimeout && !disarmed)
	case expectPanic:
		ok = status == 500 && hdr == secret && string(body) == "panic:"+secret
	case expectGoexit:
		ok = status == 500 && hdr == "" && bytes.HasPrefix(body, []byte("panic-other:"))
	}
	switch {
	case !ok:
		if c.wrongStatus.Add(1) <= 5 {
			t.Errorf("unexpected response to %s %s: status %d, X-Secret %q, body %q", r.path, secret, status, hdr, body)
		}
	case isTimeout:
		c.timeouts.Add(1)
	default:
		c.own.Add(1)
	}
}

// heapAlloc returns the live heap after a full collection.
func liveHeap() uint64 {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// goroutineStacks returns the stacks of all goroutines by ID.
func goroutineStacks() map[string]string {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	stacks := map[string]string{}
	for _, g := range strings.Split(string(buf), "\n\n") {
		id, _, _ := strings.Cut(strings.TrimPrefix(g, "goroutine "), " ")
		stacks[id] = g
	}
	return stacks
}

// goroutinesSince returns the stacks of the goroutines started since base was
// taken (with goroutineStacks) that run code of this library or of fasthttp
// (except its date updater, which runs for the life of the process), once
// none are left or stressBound passes. The idle workers of a middleware retire
// about 1.1 s after their last request and its housekeeper goroutine after
// that, hence the wait.
func goroutinesSince(base map[string]string) []string {
	var found []string
	waitUntil(func() bool {
		found = found[:0]
		for id, g := range goroutineStacks() {
			if _, old := base[id]; old || strings.Contains(g, "fasthttp.updateServerDate") {
				continue
			}
			if strings.Contains(g, "github.com/fasttimeout/fasttimeout.") ||
				strings.Contains(g, "github.com/fasttimeout/fasttimeout_test.(*stressServer)") ||
				strings.Contains(g, "github.com/valyala/fasthttp.") {
				found = append(found, g)
			}
		}
		return len(found) == 0
	})
	return found
}

func TestStress(t *testing.T) {
	size := stressSizeFromEnv()
	seed := uint64(time.Now().UnixNano())
	t.Logf("stress %s: %d requests over %d keep-alive connections, seed %d", size.name, size.requests, size.connections, seed)

	heapBase := liveHeap()
	goroutineBase := runtime.NumGoroutine()
	goroutinesBefore := goroutineStacks()
	count := new(stressCounters)
	srv := newStressServer(t, count)
	server := startStressLoopback(t, srv.handler)

	weights := 0
	for _, r := range srv.routes {
		weights += r.weight
	}
	pick := func(rng *rand.Rand) *stressRoute {
		n := rng.IntN(weights)
		for i := range srv.routes {
			if n -= srv.routes[i].weight; n < 0 {
				return &srv.routes[i]
			}
		}
		panic("unreachable")
	}

	start := time.Now()
	var next atomic.Int64
	var wg sync.WaitGroup
	for conn := range size.connections {
		wg.Go(func() {
			c, err := dialStress(server.addr)
			if err != nil {
				count.transportErrors.Add(1)
				t.Errorf("connection %d: dial: %v", conn, err)
				return
			}
			defer c.close()
			rng := rand.New(rand.NewPCG(seed, uint64(conn)))
			for {
				n := next.Add(1)
				if n > int64(size.requests) {
					return
				}
				r := pick(rng)
				secret := fmt.Sprintf("S%016x", uint64(conn)<<40|uint64(n))
				if err := c.do(r.path, secret); err != nil {
					count.transportErrors.Add(1)
					t.Errorf("connection %d died on %s %s: %v", conn, r.path, secret, err)
					return
				}
				_, disarmed := srv.disarmed.LoadAndDelete(secret)
				count.check(t, r, secret, disarmed, &c.resp)
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	lateDrained := waitUntil(func() bool { return srv.stats.Snapshot().LateRunning == 0 })
	peakGoroutines := runtime.NumGoroutine()
	require.NoError(t, server.shutdown())
	leaked := goroutinesSince(goroutinesBefore)
	logged, logLines := server.logs.report()
	stats := srv.stats.Snapshot()

	released := waitUntil(func() bool {
		runtime.GC()
		return count.stateReleased.Load() == count.stateHeld.Load()
	})
	heapAfter := liveHeap()

	t.Logf("%d requests in %v (%.0f req/s) over %d connections (%d accepted)",
		count.requests.Load(), elapsed.Round(time.Millisecond), float64(count.requests.Load())/elapsed.Seconds(),
		size.connections, server.ln.accepted.Load())
	t.Logf("own responses %d, timeout responses %d, cross-talk %d, wrong status %d, transport errors %d, request mix-ups %d",
		count.own.Load(), count.timeouts.Load(), count.crossTalk.Load(), count.wrongStatus.Load(), count.transportErrors.Load(), count.mixups.Load())
	t.Logf("panics before the deadline %d thrown, %d recovered by the outer recover, %d foreign; after the deadline %d thrown, %d reported to OnPanic, %d misreported",
		count.panicsThrown.Load(), count.panicsRecovered.Load(), count.panicsForeign.Load(), count.lateThrown.Load(), count.lateReported.Load(), count.lateMisreported.Load())
	t.Logf("late writes %d, late handler states %d held / %d released, stuck gates %d, wrong causes %d",
		count.lateWrites.Load(), count.stateHeld.Load(), count.stateReleased.Load(), count.stuckGates.Load(), count.causeWrong.Load())
	t.Logf("stats %+v; goroutines %d before, %d after the load; leaked goroutines %d; heap %d KiB before, %d KiB after; server log lines %d",
		stats, goroutineBase, peakGoroutines, len(leaked), heapBase>>10, heapAfter>>10, logged)

	t.Run("every_request_answered", func(t *testing.T) {
		assert.EqualValues(t, size.requests, count.requests.Load())
	})
	t.Run("no_cross_talk", func(t *testing.T) {
		assert.Zero(t, count.crossTalk.Load(), "responses carrying another request's secret")
		assert.Zero(t, count.mixups.Load(), "handlers that saw another request's secret")
	})
	t.Run("every_status_as_expected", func(t *testing.T) {
		assert.Zero(t, count.wrongStatus.Load())
		assert.NotZero(t, count.timeouts.Load())
		assert.NotZero(t, count.own.Load())
	})
	t.Run("keep_alive_connections_survive", func(t *testing.T) {
		assert.Zero(t, count.transportErrors.Load())
		assert.EqualValues(t, size.connections, server.ln.accepted.Load(), "each client connection is accepted once and kept")
		assert.Zero(t, logged, "server log: %q", logLines)
	})
	t.Run("panics_before_the_deadline_reach_the_outer_recover", func(t *testing.T) {
		assert.NotZero(t, count.panicsThrown.Load())
		assert.Equal(t, count.panicsThrown.Load(), count.panicsRecovered.Load())
		assert.Zero(t, count.panicsForeign.Load())
	})
	t.Run("panics_after_the_deadline_reach_OnPanic", func(t *testing.T) {
		assert.NotZero(t, count.lateThrown.Load())
		assert.Equal(t, count.lateThrown.Load(), count.lateReported.Load())
		assert.Zero(t, count.lateMisreported.Load())
	})
	t.Run("late_handlers_finish_and_release_their_state", func(t *testing.T) {
		assert.True(t, lateDrained, "late handlers still running: %d", stats.LateRunning)
		assert.Zero(t, stats.LateRunning)
		assert.Zero(t, count.stuckGates.Load())
		assert.Zero(t, count.causeWrong.Load())
		assert.True(t, released, "late handler states released: %d of %d", count.stateReleased.Load(), count.stateHeld.Load())
	})
	t.Run("no_goroutine_left_after_shutdown", func(t *testing.T) {
		assert.Empty(t, leaked)
	})
	t.Run("heap_returns_near_its_base", func(t *testing.T) {
		// Generous: pools and the runtime keep some; a leak of the
		// requests' state would be far beyond this.
		assert.Less(t, heapAfter, heapBase+64<<20, "heap after the stress, bytes")
	})
}
