package fasttimeout_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fasttimeout/fasttimeout"
	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/fasthttputil"
)

// The benchmarks name their sub-benchmarks p=N/impl=NAME, so that benchstat
// can put the variants side by side:
//
//	go test -run '^$' -bench 'Handler|Overhead' -count 6 > bench.txt
//	benchstat bench.txt                       # one row per variant
//	benchstat -col /impl -row .name,/p bench.txt   # variants as columns
//
// p is the argument of b.SetParallelism: RunParallel runs p×GOMAXPROCS
// goroutines (and, end to end, that many keep-alive connections).

// benchTimeout bounds the requests of the fast-path benchmarks; they never
// reach it.
const benchTimeout = 5 * time.Second

var (
	okBody      = []byte("ok")
	timeoutBody = "timeout"
)

// benchVariant is one way of serving the trivial handler.
type benchVariant struct {
	name     string
	fasthttp fasthttp.RequestHandler // set for fasthttp-served variants
	nethttp  http.Handler            // set for net/http-served variants
	admits   bool                    // admission by a concurrency limit is on
}

func trivialFast(ctx *fasthttp.RequestCtx) { ctx.SetBody(okBody) }

// contextFast reads its deadline context, as a handler passing it to a
// database call would.
func contextFast(ctx *fasthttp.RequestCtx) {
	c := fasttimeout.Context(ctx)
	select {
	case <-c.Done():
		ctx.SetStatusCode(fasthttp.StatusServiceUnavailable)
	default:
		ctx.SetBody(okBody)
	}
}

var trivialNet = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
	_, _ = w.Write(okBody)
})

// contextWithTimeout is the chi/Echo style: only a context deadline.
func contextWithTimeout(next http.Handler, d time.Duration) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), d)
		defer cancel()
		next.ServeHTTP(w, r.WithContext(ctx))
	})
}

// overheadVariants returns the variants of BenchmarkOverhead and
// BenchmarkHandler, in table order.
func overheadVariants() []benchVariant {
	return []benchVariant{
		{name: "fasthttp-bare", fasthttp: trivialFast},
		{name: "fasthttp-TimeoutWithCodeHandler", fasthttp: fasthttp.TimeoutWithCodeHandler(trivialFast, benchTimeout, timeoutBody, fasthttp.StatusGatewayTimeout)},
		{name: "fasttimeout-race", fasthttp: fasttimeout.New(trivialFast, fasttimeout.Config{Timeout: benchTimeout})},
		{name: "fasttimeout-race-context", fasthttp: fasttimeout.New(contextFast, fasttimeout.Config{Timeout: benchTimeout})},
		{name: "fasttimeout-cooperative", fasthttp: fasttimeout.New(trivialFast, fasttimeout.Config{Timeout: benchTimeout, Mode: fasttimeout.Cooperative})},
		{name: "fasttimeout-race-adaptive", fasthttp: fasttimeout.New(trivialFast, fasttimeout.Config{Timeout: benchTimeout, AdaptiveConcurrency: true}), admits: true},
		{name: "fasttimeout-cooperative-adaptive", fasthttp: fasttimeout.New(trivialFast, fasttimeout.Config{Timeout: benchTimeout, Mode: fasttimeout.Cooperative, AdaptiveConcurrency: true}), admits: true},
		{name: "nethttp-bare", nethttp: trivialNet},
		{name: "nethttp-TimeoutHandler", nethttp: http.TimeoutHandler(trivialNet, benchTimeout, timeoutBody)},
		{name: "nethttp-context-WithTimeout", nethttp: contextWithTimeout(trivialNet, benchTimeout)},
		// The floor of any racing design: the handler on another goroutine,
		// with no deadline at all.
		{name: "goroutine-handoff", fasthttp: handoff(trivialFast)},
	}
}

// BenchmarkOverhead serves a trivial handler end to end: a real server on a
// fasthttputil in-memory listener (fasthttp.Server or http.Server, both on
// the same listener), one keep-alive connection per client goroutine,
// requests written and responses parsed with fasthttp's Request/Response.
// The transport dominates; BenchmarkHandler isolates the middleware.
func BenchmarkOverhead(b *testing.B) {
	for _, p := range []int{1, 64, 1024} {
		for _, v := range overheadVariants() {
			b.Run(fmt.Sprintf("p=%d/impl=%s", p, v.name), func(b *testing.B) {
				srv := startBenchServer(b, v.fasthttp, v.nethttp)
				defer srv.stop(b)
				benchRoundTrips(b, srv, p, fasthttp.StatusOK, nil)
			})
		}
	}
}

// BenchmarkHandler calls the wrapped handler directly, without a server:
// each goroutine owns a fasthttp.RequestCtx set up with Init (or, for
// net/http, a request and a discarding ResponseWriter). This is the cost the
// middleware adds per request; subtract fasthttp-bare (or nethttp-bare) of
// the same run to get the overhead.
//
// The variants with admission run at p=1 only. At p=32 the 64 goroutines
// of the cooperative one never block (its handler runs inline), so each
// waits some 300 ms in the scheduler's run queue: a saturated process,
// whose newcomers admission rightly refuses with 503 (the backlog in front
// of the middleware, backlog.go). Their cost below the limit is what p=1
// measures; BenchmarkAdmission measures it alone.
func BenchmarkHandler(b *testing.B) {
	for _, p := range []int{1, 32} {
		for _, v := range overheadVariants() {
			if v.admits && p > 1 {
				continue
			}
			b.Run(fmt.Sprintf("p=%d/impl=%s", p, v.name), func(b *testing.B) {
				b.ReportAllocs()
				b.SetParallelism(p)
				if v.fasthttp != nil {
					benchFastHandler(b, v.fasthttp)
				} else {
					benchNetHandler(b, v.nethttp)
				}
			})
		}
	}
}

func benchFastHandler(b *testing.B, h fasthttp.RequestHandler) {
	var failed atomic.Bool
	b.RunParallel(func(pb *testing.PB) {
		ctx := newBenchRequestCtx()
		for pb.Next() {
			h(ctx)
		}
		if ctx.Response.StatusCode() != fasthttp.StatusOK && failed.CompareAndSwap(false, true) {
			b.Errorf("status %d, want 200", ctx.Response.StatusCode())
		}
	})
}

func newBenchRequestCtx() *fasthttp.RequestCtx {
	var req fasthttp.Request
	req.SetRequestURI("http://bench/")
	ctx := new(fasthttp.RequestCtx)
	ctx.Init(&req, nil, benchLogger{})
	return ctx
}

func benchNetHandler(b *testing.B, h http.Handler) {
	b.RunParallel(func(pb *testing.PB) {
		r := httptest.NewRequest(http.MethodGet, "http://bench/", nil)
		w := &discardResponseWriter{header: make(http.Header)}
		for pb.Next() {
			h.ServeHTTP(w, r)
		}
	})
}

// discardResponseWriter is the cheapest http.ResponseWriter: the
// benchmarks measure the handler, not a recorder.
type discardResponseWriter struct {
	header http.Header
	status int
}

func (w *discardResponseWriter) Header() http.Header         { return w.header }
func (w *discardResponseWriter) Write(p []byte) (int, error) { return len(p), nil }
func (w *discardResponseWriter) WriteHeader(status int)      { w.status = status }

// BenchmarkStats measures what Config.Stats adds to a request that
// finishes in time: the counters every request updates (Requests, InFlight).
// Run it with -cpu 1,2: what the counters cost grows with the cores adding
// to them.
func BenchmarkStats(b *testing.B) {
	ok := func(ctx *fasthttp.RequestCtx) { ctx.SetStatusCode(fasthttp.StatusOK) }
	for _, mode := range allModes {
		for _, stats := range []bool{false, true} {
			cfg := fasttimeout.Config{Timeout: benchTimeout, Mode: mode}
			if stats {
				cfg.Stats = new(fasttimeout.Stats)
			}
			b.Run(fmt.Sprintf("mode=%v/stats=%v", mode, stats), func(b *testing.B) {
				b.ReportAllocs()
				benchFastHandler(b, fasttimeout.New(ok, cfg))
			})
		}
	}
}

// BenchmarkTimeoutPath measures requests that do time out: a 1 ms timeout
// (fasttimeout at its finest Precision, 100 µs) in front of a handler that
// blocks until the benchmark ends (racing variants) or until its context is
// done (cooperative variants, which cannot bound anything else). late-µs is
// the mean time from the deadline to the client receiving the timeout
// response; ns/op, B/op and allocs/op include the blocked handlers.
func BenchmarkTimeoutPath(b *testing.B) {
	const timeout = time.Millisecond
	type variant struct {
		name   string
		status int
		make   func(release <-chan struct{}, blocked *sync.WaitGroup) (fasthttp.RequestHandler, http.Handler)
	}
	variants := []variant{
		{"fasthttp-TimeoutWithCodeHandler", fasthttp.StatusGatewayTimeout, func(release <-chan struct{}, blocked *sync.WaitGroup) (fasthttp.RequestHandler, http.Handler) {
			return fasthttp.TimeoutWithCodeHandler(blockFast(release, blocked), timeout, timeoutBody, fasthttp.StatusGatewayTimeout), nil
		}},
		{"fasttimeout-race", fasthttp.StatusGatewayTimeout, func(release <-chan struct{}, blocked *sync.WaitGroup) (fasthttp.RequestHandler, http.Handler) {
			return fasttimeout.New(blockFast(release, blocked), fasttimeout.Config{Timeout: timeout, Precision: 100 * time.Microsecond}), nil
		}},
		{"fasttimeout-cooperative", fasthttp.StatusGatewayTimeout, func(<-chan struct{}, *sync.WaitGroup) (fasthttp.RequestHandler, http.Handler) {
			waitDone := func(ctx *fasthttp.RequestCtx) { <-fasttimeout.Context(ctx).Done() }
			return fasttimeout.New(waitDone, fasttimeout.Config{Timeout: timeout, Precision: 100 * time.Microsecond, Mode: fasttimeout.Cooperative}), nil
		}},
		{"nethttp-TimeoutHandler", http.StatusServiceUnavailable, func(release <-chan struct{}, blocked *sync.WaitGroup) (fasthttp.RequestHandler, http.Handler) {
			block := http.HandlerFunc(func(http.ResponseWriter, *http.Request) {
				blocked.Add(1)
				defer blocked.Done()
				<-release
			})
			return nil, http.TimeoutHandler(block, timeout, timeoutBody)
		}},
		{"nethttp-context-WithTimeout", http.StatusGatewayTimeout, func(<-chan struct{}, *sync.WaitGroup) (fasthttp.RequestHandler, http.Handler) {
			waitDone := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				<-r.Context().Done()
				w.WriteHeader(http.StatusGatewayTimeout) // what chi does once the handler returns
			})
			return nil, contextWithTimeout(waitDone, timeout)
		}},
	}
	for _, p := range []int{1, 32} {
		for _, v := range variants {
			b.Run(fmt.Sprintf("p=%d/impl=%s", p, v.name), func(b *testing.B) {
				release := make(chan struct{})
				var blocked sync.WaitGroup
				fh, nh := v.make(release, &blocked)
				srv := startBenchServer(b, fh, nh)
				var late atomic.Int64
				benchRoundTrips(b, srv, p, v.status, func(elapsed time.Duration) {
					late.Add(int64(elapsed - timeout))
				})
				b.StopTimer()
				b.ReportMetric(float64(late.Load())/float64(b.N)/1e3, "late-µs/op")
				close(release)
				srv.stop(b)
				blocked.Wait()
			})
		}
	}
}

// blockFast returns a handler that ignores its context and returns only
// when release is closed; blocked counts the handlers not yet returned.
func blockFast(release <-chan struct{}, blocked *sync.WaitGroup) fasthttp.RequestHandler {
	return func(*fasthttp.RequestCtx) {
		blocked.Add(1)
		defer blocked.Done()
		<-release
	}
}

// benchServer is a fasthttp.Server or an http.Server on an in-memory
// listener.
type benchServer struct {
	ln     *fasthttputil.InmemoryListener
	fast   *fasthttp.Server
	net    *http.Server
	served chan error
}

func startBenchServer(b *testing.B, fh fasthttp.RequestHandler, nh http.Handler) *benchServer {
	b.Helper()
	s := &benchServer{ln: fasthttputil.NewInmemoryListener(), served: make(chan error, 1)}
	if fh != nil {
		s.fast = &fasthttp.Server{Handler: fh, Logger: benchLogger{}}
		go func() { s.served <- s.fast.Serve(s.ln) }()
	} else {
		s.net = &http.Server{Handler: nh, ErrorLog: log.New(io.Discard, "", 0)}
		go func() { s.served <- s.net.Serve(netErrorListener{s.ln}) }()
	}
	return s
}

// stop shuts the server down and waits until Serve has returned.
func (s *benchServer) stop(b *testing.B) {
	b.Helper()
	var err error
	if s.fast != nil {
		err = s.fast.Shutdown()
	} else {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err = s.net.Shutdown(ctx)
		cancel()
	}
	if err != nil {
		b.Errorf("shutdown: %v", err)
	}
	select {
	case err := <-s.served:
		if err != nil && !errors.Is(err, http.ErrServerClosed) {
			b.Errorf("serve: %v", err)
		}
	case <-time.After(10 * time.Second):
		b.Error("server did not stop within 10s of Shutdown")
	}
}

// netErrorListener makes the in-memory listener usable by net/http.
// fasthttputil's timeout error has Timeout but not Temporary, so it is not a
// net.Error; net/http's background read, aborted with a past deadline after
// each request, then takes it for a broken connection and cancels the
// request context of every later request on the connection (which makes
// http.TimeoutHandler answer 503 at once). The wrapper gives the error the
// net.Error method set.
type netErrorListener struct{ net.Listener }

func (l netErrorListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return netErrorConn{c}, nil
}

type netErrorConn struct{ net.Conn }

func (c netErrorConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if err == fasthttputil.ErrTimeout {
		err = os.ErrDeadlineExceeded
	}
	return n, err
}

// benchConn is one keep-alive client connection.
type benchConn struct {
	conn net.Conn
	r    *bufio.Reader
	w    *bufio.Writer
	req  fasthttp.Request
	resp fasthttp.Response
}

func (c *benchConn) roundTrip() error {
	if err := c.req.Write(c.w); err != nil {
		return err
	}
	if err := c.w.Flush(); err != nil {
		return err
	}
	c.resp.Reset()
	return c.resp.Read(c.r)
}

// benchRoundTrips runs b.N requests over p×GOMAXPROCS keep-alive
// connections, dialled (and warmed by one request each) before the timer
// starts. Each response must have status want; observe, if set, gets each
// request's round-trip time.
func benchRoundTrips(b *testing.B, s *benchServer, p int, want int, observe func(time.Duration)) {
	b.Helper()
	b.ReportAllocs()
	b.SetParallelism(p)
	n := p * runtime.GOMAXPROCS(0)
	conns := make(chan *benchConn, n)
	all := make([]*benchConn, 0, n)
	defer func() {
		for _, c := range all {
			_ = c.conn.Close()
		}
	}()
	for range n {
		nc, err := s.ln.Dial()
		if err != nil {
			b.Fatal(err)
		}
		c := &benchConn{conn: nc, r: bufio.NewReader(nc), w: bufio.NewWriter(nc)}
		c.req.SetRequestURI("http://bench/")
		all = append(all, c)
		conns <- c
	}
	if observe == nil { // a request that times out would block a handler
		for _, c := range all {
			if err := c.roundTrip(); err != nil {
				b.Fatal(err)
			}
		}
	}
	var failed atomic.Bool
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		c := <-conns
		for pb.Next() {
			start := time.Now()
			err := c.roundTrip()
			if err == nil && c.resp.StatusCode() != want {
				err = fmt.Errorf("status %d, want %d", c.resp.StatusCode(), want)
			}
			if err != nil {
				if failed.CompareAndSwap(false, true) {
					b.Error(err)
				}
				return
			}
			if observe != nil {
				observe(time.Since(start))
			}
		}
	})
	b.StopTimer() // closing connections and stopping the server are not the request's cost
}

// BenchmarkContext measures the context bridge: creating a request's
// context, Done and Err, inside a handler wrapped by New (racing and
// cooperative: the whole request, compare with BenchmarkHandler) and outside
// New, plus deriving a cancellable context from it.
func BenchmarkContext(b *testing.B) {
	useContext := func(ctx *fasthttp.RequestCtx) {
		c := fasttimeout.Context(ctx)
		select {
		case <-c.Done():
		default:
		}
		if c.Err() != nil {
			ctx.SetStatusCode(fasthttp.StatusServiceUnavailable)
		}
	}
	deriveContext := func(ctx *fasthttp.RequestCtx) {
		c, cancel := context.WithCancel(fasttimeout.Context(ctx))
		if c.Err() != nil {
			ctx.SetStatusCode(fasthttp.StatusServiceUnavailable)
		}
		cancel()
	}
	cases := []struct {
		name string
		h    fasthttp.RequestHandler
	}{
		{"outside-New", useContext},
		{"race", fasttimeout.New(useContext, fasttimeout.Config{Timeout: benchTimeout})},
		{"cooperative", fasttimeout.New(useContext, fasttimeout.Config{Timeout: benchTimeout, Mode: fasttimeout.Cooperative})},
		{"race-WithCancel", fasttimeout.New(deriveContext, fasttimeout.Config{Timeout: benchTimeout})},
	}
	for _, c := range cases {
		b.Run("impl="+c.name, func(b *testing.B) {
			b.ReportAllocs()
			benchFastHandler(b, c.h)
		})
	}
}

// BenchmarkTimeoutFromEnv measures parsing a timeout from the environment.
func BenchmarkTimeoutFromEnv(b *testing.B) {
	const name = "FASTTIMEOUT_BENCH_TIMEOUT"
	for _, c := range []struct{ name, value string }{
		{"unset", ""},
		{"seconds", "2.5"},
		{"duration", "1m30s"},
	} {
		b.Run("value="+c.name, func(b *testing.B) {
			b.Setenv(name, c.value)
			b.ReportAllocs()
			for b.Loop() {
				if _, err := fasttimeout.TimeoutFromEnv(name, time.Second); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// benchLogger drops the servers' log lines (closed connections at the end
// of a benchmark are not news).
type benchLogger struct{}

func (benchLogger) Printf(string, ...any) {}

// handoff is the floor of any racing middleware: run the handler on a new
// goroutine and wait for it, with no deadline, no context and no pooling.
func handoff(h fasthttp.RequestHandler) fasthttp.RequestHandler {
	return func(ctx *fasthttp.RequestCtx) {
		done := make(chan struct{})
		go func() {
			h(ctx)
			close(done)
		}()
		<-done
	}
}
