package fasttimeout_test

import (
	"fmt"
	"math"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fasttimeout/fasttimeout"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/valyala/fasthttp"
)

// blocker is a handler whose requests to /block wait for release (in
// racing mode whatever their context says; in cooperative mode until
// release or their context is done) and whose other requests answer 200 at
// once. It counts the requests it ran.
type blocker struct {
	ran     atomic.Int64
	entered chan struct{}
	release chan struct{}
	once    sync.Once
}

// free closes release; calls after the first do nothing, so that a test
// can also free its blocker in a cleanup, should it fail first.
func (b *blocker) free() { b.once.Do(func() { close(b.release) }) }

func newBlocker() *blocker {
	return &blocker{entered: make(chan struct{}, 1000), release: make(chan struct{})}
}

func (b *blocker) handle(ctx *fasthttp.RequestCtx) {
	b.ran.Add(1)
	if string(ctx.Path()) == "/block" {
		b.entered <- struct{}{}
		<-b.release
	}
	ctx.SetBodyString("ok")
}

// rejectRecorder wraps h to note the reason of each refusal, as a user's
// logging middleware would.
func rejectRecorder(h fasthttp.RequestHandler, reasons chan<- string) fasthttp.RequestHandler {
	return func(ctx *fasthttp.RequestCtx) {
		h(ctx)
		if reason := fasttimeout.RejectReason(ctx); reason != "" {
			reasons <- reason
		}
	}
}

// recording wraps a handler in rejectRecorder(…, reasons), for serveBlocker.
func recording(reasons chan<- string) func(fasthttp.RequestHandler) fasthttp.RequestHandler {
	return func(h fasthttp.RequestHandler) fasthttp.RequestHandler { return rejectRecorder(h, reasons) }
}

// serveBlocker serves a new blocker's handler behind New(cfg), cfg counting
// in a new Stats, wrapped in each of wrap in turn (a rejectRecorder, say).
// The blocker is freed when the test ends, before the server's shutdown,
// which waits for the handlers, should the test fail before it frees it.
func serveBlocker(t *testing.T, cfg fasttimeout.Config, wrap ...func(fasthttp.RequestHandler) fasthttp.RequestHandler) (*blocker, *fasttimeout.Stats, *testServer) {
	t.Helper()
	b := newBlocker()
	cfg.Stats = new(fasttimeout.Stats)
	h := fasttimeout.New(b.handle, cfg)
	for _, w := range wrap {
		h = w(h)
	}
	s := serve(t, h)
	t.Cleanup(b.free) // cleanups run last first: before serve's
	return b, cfg.Stats, s
}

// hold sends /block to s and waits for its handler to start: it holds its
// slot until b is freed. It returns the answer to come.
func (b *blocker) hold(t *testing.T, s *testServer) <-chan *fasthttp.Response {
	t.Helper()
	held := async(t, s, "/block")
	receive(t, b.entered, "the start of /block")
	return held
}

// innerBlocker is a new blocker's handler behind a cooperative New with an
// hour's timeout and one slot, counting in a new Stats: the inner New of
// tests whose outer New calls it.
func innerBlocker() (*blocker, *fasttimeout.Stats, fasthttp.RequestHandler) {
	b, stats := newBlocker(), new(fasttimeout.Stats)
	return b, stats, fasttimeout.New(b.handle, fasttimeout.Config{
		Mode: fasttimeout.Cooperative, Timeout: time.Hour, MaxConcurrency: 1, Stats: stats,
	})
}

// queueBehind sends GET path to s and waits until stats sees it waiting for
// a slot. It returns the answer to come.
func queueBehind(t *testing.T, s *testServer, stats *fasttimeout.Stats, path string) <-chan *fasthttp.Response {
	t.Helper()
	queued := async(t, s, path)
	require.Eventually(t, func() bool { return stats.Snapshot().Waiting == 1 }, waitTimeout, time.Millisecond)
	return queued
}

// freeHeld frees b and checks that each of the /block requests it held is
// answered 200.
func (b *blocker) freeHeld(t *testing.T, held ...<-chan *fasthttp.Response) {
	t.Helper()
	b.free()
	for _, h := range held {
		assert.Equal(t, fasthttp.StatusOK, receive(t, h, "the answer to /block").StatusCode())
	}
}

// seenDeadline is a handler's context's deadline and when it read it.
type seenDeadline struct{ deadline, at time.Time }

// queueAgeServer runs, behind New with HonorQueueHeaders, a handler that
// counts its runs and sends on seen what it read of its deadline.
type queueAgeServer struct {
	*testServer
	stats *fasttimeout.Stats
	ran   atomic.Int64
	seen  chan seenDeadline
}

// serveQueueAge serves a queueAgeServer whose New has timeout and
// maxQueueAge.
func serveQueueAge(t *testing.T, timeout, maxQueueAge time.Duration) *queueAgeServer {
	t.Helper()
	q := &queueAgeServer{stats: new(fasttimeout.Stats), seen: make(chan seenDeadline, 1)}
	q.testServer = serve(t, fasttimeout.New(func(ctx *fasthttp.RequestCtx) {
		q.ran.Add(1)
		deadline, _ := fasttimeout.Context(ctx).Deadline()
		q.seen <- seenDeadline{deadline, time.Now()}
	}, fasttimeout.Config{
		Timeout: timeout, HonorQueueHeaders: true, MaxQueueAge: maxQueueAge, Stats: q.stats,
	}))
	return q
}

// async sends GET path, with the headers given, each a name and then its
// value, and delivers the response later.
func async(t *testing.T, s *testServer, path string, header ...string) <-chan *fasthttp.Response {
	t.Helper()
	out := make(chan *fasthttp.Response, 1)
	go func() {
		req := fasthttp.AcquireRequest()
		defer fasthttp.ReleaseRequest(req)
		req.SetRequestURI("http://test" + path)
		for i := 0; i+1 < len(header); i += 2 {
			req.Header.Add(header[i], header[i+1])
		}
		resp := new(fasthttp.Response)
		if err := s.client.DoTimeout(req, resp, waitTimeout); err != nil {
			resp.SetStatusCode(599)
			resp.SetBodyString(err.Error())
		}
		out <- resp
	}()
	return out
}

func TestAdmission_refusal_does_not_run_the_handler(t *testing.T) {
	t.Parallel()
	for _, mode := range allModes {
		t.Run(mode.String(), func(t *testing.T) {
			t.Parallel()
			reasons := make(chan string, 10)
			b, stats, s := serveBlocker(t, fasttimeout.Config{
				Mode:           mode,
				Timeout:        waitTimeout,
				MaxConcurrency: 1,
				RetryAfter:     3 * time.Second,
				// A short budget for /short: it may wait 20 ms for a slot
				// (a tenth). Much shorter, and a loaded machine stalling
				// the test for it would refuse /short for another reason.
				TimeoutFunc: func(ctx *fasthttp.RequestCtx) time.Duration {
					if string(ctx.Path()) == "/short" {
						return 200 * time.Millisecond
					}
					return 0
				},
			}, recording(reasons))
			held := b.hold(t, s)

			resp := do(t, s, "GET", "/short")
			assert.Equal(t, fasthttp.StatusServiceUnavailable, resp.StatusCode())
			assert.Equal(t, "3", string(resp.Header.Peek(fasthttp.HeaderRetryAfter)))
			assert.Equal(t, fasttimeout.ShedBody, string(resp.Body()))
			assert.Equal(t, fasttimeout.RejectedQueueTimeout, receive(t, reasons, "the refusal's reason"))
			assert.Equal(t, int64(1), b.ran.Load(), "the refused request did not run")

			b.freeHeld(t, held)
			assert.Equal(t, fasthttp.StatusOK, do(t, s, "GET", "/short").StatusCode(), "the slot is free again")
			got := stats.Snapshot()
			assert.Equal(t, int64(2), got.Admitted)
			assert.Equal(t, int64(1), got.Queued)
			assert.Equal(t, int64(1), got.Rejected)
			assert.Equal(t, int64(1), got.RejectedQueueTimeout)
			assert.Equal(t, int64(1), got.ConcurrencyLimit)
			assert.Zero(t, got.Waiting)
			assert.Equal(t, int64(1), stats.QueueWait().Count)
			assert.Empty(t, reasons)
		})
	}
}

func TestAdmission_a_waiting_request_takes_the_freed_slot(t *testing.T) {
	t.Parallel()
	for _, mode := range allModes {
		t.Run(mode.String(), func(t *testing.T) {
			t.Parallel()
			b, stats, s := serveBlocker(t, fasttimeout.Config{Mode: mode, Timeout: waitTimeout, MaxConcurrency: 1})
			held := b.hold(t, s)
			queued := queueBehind(t, s, stats, "/")
			assert.Equal(t, int64(1), b.ran.Load(), "it waits without running")
			b.freeHeld(t, held)
			assert.Equal(t, fasthttp.StatusOK, (<-queued).StatusCode())
			got := stats.Snapshot()
			assert.Equal(t, int64(2), got.Admitted)
			assert.Equal(t, int64(1), got.Queued)
			assert.Zero(t, got.Rejected)
		})
	}
}

// TestAdmission_a_waiting_request_is_refused_at_shutdown: a request that
// waits for a slot when its server shuts down is refused then, not after
// its wait (a tenth of its budget: a minute here, which the client's 10 s
// would not see the end of): its handler would only start to be
// cancelled, and the shutdown waits for its answer.
func TestAdmission_a_waiting_request_is_refused_at_shutdown(t *testing.T) {
	t.Parallel()
	for _, mode := range allModes {
		t.Run(mode.String(), func(t *testing.T) {
			t.Parallel()
			reasons := make(chan string, 1)
			b, stats, s := serveBlocker(t, fasttimeout.Config{Mode: mode, Timeout: 10 * time.Minute, MaxConcurrency: 1}, recording(reasons))
			held := b.hold(t, s)
			queued := queueBehind(t, s, stats, "/")
			stopped := make(chan struct{})
			go func() {
				defer close(stopped)
				s.shutdown(t) // waits for /block
			}()
			resp := <-queued
			assert.Equal(t, fasthttp.StatusServiceUnavailable, resp.StatusCode(), "%s", resp.Body())
			assert.Equal(t, fasttimeout.RejectedQueueFull, receive(t, reasons, "the refusal"))
			assert.Equal(t, int64(1), b.ran.Load(), "the handler of the waiting request never ran")
			b.freeHeld(t, held)
			receive(t, stopped, "the end of the shutdown")
			got := stats.Snapshot()
			assert.Equal(t, int64(1), got.RejectedFull)
			assert.Zero(t, got.Waiting)
		})
	}
}

// TestAdmission_late_handlers_hold_their_slots: a racing handler that
// ignores its context still burns what it burns after its timeout answer,
// so it keeps its slot until it returns.
func TestAdmission_late_handlers_hold_their_slots(t *testing.T) {
	t.Parallel()
	b, stats, s := serveBlocker(t, fasttimeout.Config{
		// /block must run to hold the slot, its budget not spent on arrival.
		Timeout: actInTime, MaxConcurrency: 1,
		// The other requests must not time out on a stalled machine: they
		// wait 100 ms for the slot (a tenth), then are refused.
		TimeoutFunc: func(ctx *fasthttp.RequestCtx) time.Duration {
			if string(ctx.Path()) == "/block" {
				return 0
			}
			return time.Second
		},
	})
	assert.Equal(t, fasthttp.StatusGatewayTimeout, do(t, s, "GET", "/block").StatusCode())
	receive(t, b.entered, "the start of /block")
	assert.Equal(t, fasthttp.StatusServiceUnavailable, do(t, s, "GET", "/").StatusCode(), "the late handler holds the only slot")
	b.free()
	require.Eventually(t, func() bool { return stats.Snapshot().LateRunning == 0 }, waitTimeout, time.Millisecond)
	assert.Equal(t, fasthttp.StatusOK, do(t, s, "GET", "/").StatusCode())
	assert.Equal(t, int64(2), b.ran.Load())
}

// TestAdmission_sleeping_late_handlers_do_not_refuse_traffic: a hundred
// late handlers that only sleep hold their slots but no CPU. Beside steady
// fast traffic, whose latency stays at its unloaded level, the adaptive
// limit grows past them, and nothing is refused.
func TestAdmission_sleeping_late_handlers_do_not_refuse_traffic(t *testing.T) {
	t.Parallel()
	const sleepers = 100
	for _, mode := range allModes {
		t.Run(mode.String(), func(t *testing.T) {
			t.Parallel()
			b, stats, s := serveBlocker(t, fasttimeout.Config{
				// A long timeout: on a loaded machine a short one would
				// let the run queue's wait refuse requests (backlog.go).
				Mode: mode, Timeout: 5 * time.Second, AdaptiveConcurrency: true,
			})

			var fast sync.WaitGroup
			var statuses sync.Map
			stop := make(chan struct{})
			for range 4 { // steady fast traffic, one request at a time per client
				fast.Add(1)
				go func() {
					defer fast.Done()
					for {
						select {
						case <-stop:
							return
						default:
						}
						code := (<-async(t, s, "/")).StatusCode()
						n, _ := statuses.LoadOrStore(code, new(atomic.Int64))
						n.(*atomic.Int64).Add(1)
					}
				}()
			}
			// The sleepers come one by one, each once the limit has room
			// for it: the limit must grow past them.
			held := make([]<-chan *fasthttp.Response, 0, sleepers)
			for range sleepers {
				require.Eventually(t, func() bool {
					c := stats.Snapshot()
					return c.ConcurrencyLimit > c.InFlight+1
				}, waitTimeout, time.Millisecond, "the limit does not grow past the late handlers")
				sleeper := async(t, s, "/block")
				select {
				case <-b.entered:
				case r := <-sleeper:
					require.FailNow(t, "a sleeper was answered without running", "status %d", r.StatusCode())
				}
				held = append(held, sleeper)
			}
			// All hundred late and running; the fast traffic goes on.
			require.Eventually(t, func() bool { return stats.Snapshot().LateRunning >= sleepers || mode == fasttimeout.Cooperative }, waitTimeout, time.Millisecond)
			before := stats.Snapshot().Requests
			require.Eventually(t, func() bool { return stats.Snapshot().Requests > before+500 }, waitTimeout, time.Millisecond)
			close(stop)
			fast.Wait()
			b.free()
			for _, r := range held {
				<-r
			}
			got := stats.Snapshot()
			assert.Zero(t, got.Rejected, "refused: %+v", got)
			statuses.Range(func(code, n any) bool {
				assert.Equal(t, fasthttp.StatusOK, code, "%d fast requests answered %d", n.(*atomic.Int64).Load(), code)
				return true
			})
			t.Logf("limit %d with %d sleepers; %d requests, %d queued", got.ConcurrencyLimit, sleepers, got.Requests, got.Queued)
		})
	}
}

// TestAdmission_queue_headers: with HonorQueueHeaders the age a proxy
// reports counts against the budget, and MaxQueueAge refuses to run a
// request its caller has given up on, but does not bound one that started.
func TestAdmission_queue_headers(t *testing.T) {
	t.Parallel()
	// The values are made when each request is sent: parallel subtests
	// may start seconds after the test.
	ago := func(d time.Duration) func() time.Time { return func() time.Time { return time.Now().Add(-d) } }
	nginx := func(at func() time.Time) func() string {
		return func() string { t := at(); return fmt.Sprintf("t=%d.%03d", t.Unix(), t.Nanosecond()/1e6) }
	}
	heroku := func(at func() time.Time) func() string { return func() string { return fmt.Sprint(at().UnixMilli()) } }
	apache := func(at func() time.Time) func() string {
		return func() string { return fmt.Sprintf("t=%d", at().UnixMicro()) }
	}
	alb := func(at func() time.Time) func() string {
		return func() string { return fmt.Sprintf("Root=1-%08x-abcdef012345678912345678", at().Unix()) }
	}
	literal := func(s string) func() string { return func() string { return s } }
	cases := []struct {
		name    string
		header  string
		value   func() string
		runs    bool
		maxLeft time.Duration // of the handler's budget, if it runs
		minLeft time.Duration
		bad     int64
		spent   int64
	}{
		// A budget of 10 s and a MaxQueueAge of 8 s: a stall of a loaded
		// machine between sending a request and its handler's look at its
		// deadline has seconds before it changes an outcome.
		{"nginx: waited past MaxQueueAge, not run", "X-Request-Start", nginx(ago(10 * time.Second)), false, 0, 0, 0, 1},
		{"Heroku milliseconds: waited past MaxQueueAge, not run", "X-Request-Start", heroku(ago(10 * time.Second)), false, 0, 0, 0, 1},
		{"Apache microseconds in X-Queue-Start: not run", "X-Queue-Start", apache(ago(10 * time.Second)), false, 0, 0, 0, 1},
		{"ALB trace id: not run", "X-Amzn-Trace-Id", alb(ago(10 * time.Second)), false, 0, 0, 0, 1},
		{"nginx: the wait shortens the budget", "X-Request-Start", nginx(ago(5 * time.Second)), true, 5100 * time.Millisecond, 0, 0, 0},
		// MaxQueueAge would leave it under 3 s: it bounds only the start.
		{"started in time, a handler runs to its deadline, past MaxQueueAge", "X-Request-Start", heroku(ago(5 * time.Second)), true, 5100 * time.Millisecond, 3 * time.Second, 0, 0},
		{"a start in the future counts as now", "X-Request-Start", heroku(ago(-time.Minute)), true, 10 * time.Second, 5 * time.Second, 0, 0},
		{"malformed: ignored and counted", "X-Request-Start", literal("t=soon"), true, 10 * time.Second, 5 * time.Second, 1, 0},
		{"absurd: ignored and counted", "X-Request-Start", heroku(ago(48 * time.Hour)), true, 10 * time.Second, 5 * time.Second, 1, 0},
		{"ALB Root without a value before an old one: ignored and counted", "X-Amzn-Trace-Id", func() string { return "Root;" + alb(ago(10*time.Second))() }, true, 10 * time.Second, 5 * time.Second, 1, 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			q := serveQueueAge(t, 10*time.Second, 8*time.Second)
			resp := send(t, q.testServer, c.header, c.value())
			got := q.stats.Snapshot()
			assert.Equal(t, c.bad, got.BadQueueHeaders)
			assert.Equal(t, c.spent, got.SpentBudgets)
			if !c.runs {
				assert.Equal(t, fasthttp.StatusGatewayTimeout, resp.StatusCode())
				assert.Zero(t, q.ran.Load(), "a request its caller gave up on does not run")
				return
			}
			require.Equal(t, fasthttp.StatusOK, resp.StatusCode())
			seen := receive(t, q.seen, "the handler's Remaining") // sent before the handler returned
			d := seen.deadline.Sub(seen.at)
			assert.LessOrEqual(t, d, c.maxLeft)
			assert.GreaterOrEqual(t, d, c.minLeft)
		})
	}
	t.Run("ignored unless enabled", func(t *testing.T) {
		t.Parallel()
		s := serve(t, fasttimeout.New(func(ctx *fasthttp.RequestCtx) {}, fasttimeout.Config{MaxQueueAge: time.Second}))
		resp := send(t, s, "X-Request-Start", nginx(ago(time.Hour/2))())
		assert.Equal(t, fasthttp.StatusOK, resp.StatusCode())
	})
}

// TestAdmission_queue_headers_a_time_stamp_wins_over_a_trace_id: with
// HonorQueueHeaders a proxy's X-Request-Start or X-Queue-Start gives the
// request's age even beside an older X-Amzn-Trace-Id, which may be the
// caller's (its Root the start of a trace half an hour ago); a trace id
// gives it only when no time stamp is valid. A budget of an hour and a
// MaxQueueAge of ten minutes: a request half an hour old is not run, and
// one that runs has its deadline an hour after the time stamp, checked
// against the clock readings around the request, not a tolerance.
func TestAdmission_queue_headers_a_time_stamp_wins_over_a_trace_id(t *testing.T) {
	t.Parallel()
	const (
		timeout     = time.Hour
		maxQueueAge = 10 * time.Minute
		stampAge    = 200 * time.Millisecond
		traceAge    = 30 * time.Minute
	)
	type header struct {
		name  string
		value func(now time.Time) string
	}
	nginx := func(age time.Duration) header {
		return header{"X-Request-Start", func(now time.Time) string {
			at := now.Add(-age)
			return fmt.Sprintf("t=%d.%03d", at.Unix(), at.Nanosecond()/1e6)
		}}
	}
	heroku := func(age time.Duration) header {
		return header{"X-Queue-Start", func(now time.Time) string { return fmt.Sprint(now.Add(-age).UnixMilli()) }}
	}
	trace := func(format string, ages ...time.Duration) header {
		return header{"X-Amzn-Trace-Id", func(now time.Time) string {
			secs := make([]any, len(ages))
			for i, age := range ages {
				secs[i] = now.Add(-age).Unix()
			}
			return fmt.Sprintf(format, secs...)
		}}
	}
	root := func(age time.Duration) header { return trace("Root=1-%08x-abcdef012345678912345678", age) }
	literal := func(name, value string) header { return header{name, func(time.Time) string { return value }} }
	cases := []struct {
		name    string
		headers []header
		runs    bool // with the time stamp's age; else not run, its budget spent
		bad     int64
	}{
		{"a time stamp wins over an older trace Root", []header{nginx(stampAge), root(traceAge)}, true, 0},
		{"a time stamp wins over an older trace Self", []header{heroku(stampAge), trace("Self=1-%08x-12456789abcdef0123456789;Root=1-%08x-abcdef012345678912345678", traceAge, traceAge+10*time.Minute)}, true, 0},
		{"a trace id before the time stamp", []header{root(traceAge), nginx(stampAge)}, true, 0},
		{"a malformed trace id beside a time stamp is counted", []header{nginx(stampAge), literal("X-Amzn-Trace-Id", "Sampled=1")}, true, 1},
		{"a trace Root alone counts", []header{root(traceAge)}, false, 0},
		{"a trace Self alone counts", []header{trace("Self=1-%08x-12456789abcdef0123456789;Root=1-%08x-abcdef012345678912345678", traceAge, traceAge+10*time.Minute)}, false, 0},
		{"a malformed time stamp gives way to a trace id", []header{literal("X-Request-Start", "t=soon"), root(traceAge)}, false, 1},
		{"an absurd time stamp gives way to a trace id", []header{nginx(2 * time.Hour), root(traceAge)}, false, 1},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			q := serveQueueAge(t, timeout, maxQueueAge)
			sent := time.Now()
			var headers []string
			for _, h := range c.headers {
				headers = append(headers, h.name, h.value(sent))
			}
			resp := send(t, q.testServer, headers...)
			done := time.Now()
			got := q.stats.Snapshot()
			assert.Equal(t, c.bad, got.BadQueueHeaders, "BadQueueHeaders")
			if !c.runs {
				assert.Equal(t, fasthttp.StatusGatewayTimeout, resp.StatusCode())
				assert.Equal(t, int64(1), got.SpentBudgets, "SpentBudgets")
				assert.Zero(t, q.ran.Load(), "a request the trace id makes half an hour old does not run")
				return
			}
			require.Equal(t, fasthttp.StatusOK, resp.StatusCode(), "a request the time stamp makes %v old runs", stampAge)
			assert.Zero(t, got.SpentBudgets, "SpentBudgets")
			deadline := receive(t, q.seen, "the handler's deadline").deadline
			// The time stamp, in milliseconds, is at most 1 ms before
			// sent-stampAge; the middleware reads the wall clock (for the
			// header) after its own, at most done-sent later.
			want := sent.Add(-stampAge + timeout)
			assert.False(t, deadline.After(want), "deadline %v after the time stamp's", deadline.Sub(want))
			assert.False(t, deadline.Before(want.Add(-done.Sub(sent)-time.Millisecond)), "deadline %v before the time stamp's", deadline.Sub(want))
		})
	}
}

// TestAdmission_a_burst_on_a_cold_limit_is_served: three hundred requests
// at once on a new adaptive limit (it starts at 20) wait while the limit
// doubles, since their latency stays at its unloaded level, and all of
// them are served. Not parallel, nor are its modes: other requests' work
// on the same Ps would raise the latency, and the limit would rightly
// shrink. Whether it grows depends on that latency, which other processes
// on a loaded machine raise too (once in 20 runs beside other test runs:
// limit 20, all served): the doubling itself is tested on a fake clock
// (TestLimiter_slow_start_stops_where_latency_was_too_high).
func TestAdmission_a_burst_on_a_cold_limit_is_served(t *testing.T) {
	const burst = 300
	for _, mode := range allModes {
		t.Run(mode.String(), func(t *testing.T) {
			stats := new(fasttimeout.Stats)
			s := serve(t, fasttimeout.New(func(ctx *fasthttp.RequestCtx) {
				time.Sleep(5 * time.Millisecond) // a downstream call
			}, fasttimeout.Config{Mode: mode, Timeout: 20 * time.Second, AdaptiveConcurrency: true, Stats: stats}))
			answers := make([]<-chan *fasthttp.Response, burst)
			for i := range answers {
				answers[i] = async(t, s, "/")
			}
			codes := map[int]int{}
			for _, a := range answers {
				codes[(<-a).StatusCode()]++
			}
			got := stats.Snapshot()
			assert.Equal(t, map[int]int{fasthttp.StatusOK: burst}, codes, "%+v", got)
			assert.Zero(t, got.Rejected, "%+v", got)
			t.Logf("limit %d; %d of %d queued", got.ConcurrencyLimit, got.Queued, burst)
		})
	}
}

// TestAdmission_a_new_limit_refuses_nothing_at_light_load: a server started
// under light but steady load, a dozen requests of 300 ms at a time with a
// 1 s timeout. A new adaptive limit starts with a probe at 4 slots to
// measure the unloaded latency, which takes two rounds of handlers here,
// longer than the tenth of its budget a request waits for a slot: the
// probe used to refuse the requests that waited longest. It now gives way
// to the first request it would refuse. Not parallel, nor are its modes, as
// above.
func TestAdmission_a_new_limit_refuses_nothing_at_light_load(t *testing.T) {
	const clients, rounds = 12, 3
	for _, mode := range allModes {
		t.Run(mode.String(), func(t *testing.T) {
			stats := new(fasttimeout.Stats)
			s := serve(t, fasttimeout.New(func(ctx *fasthttp.RequestCtx) {
				time.Sleep(300 * time.Millisecond) // a downstream call
			}, fasttimeout.Config{Mode: mode, Timeout: time.Second, AdaptiveConcurrency: true, Stats: stats}))
			codes := make(chan int, clients*rounds)
			var wg sync.WaitGroup
			for range clients {
				wg.Go(func() {
					for range rounds {
						codes <- s.status(t, "/")
					}
				})
			}
			wg.Wait()
			close(codes)
			got := map[int]int{}
			for c := range codes {
				got[c]++
			}
			snap := stats.Snapshot()
			assert.Equal(t, map[int]int{fasthttp.StatusOK: clients * rounds}, got, "%+v", snap)
			assert.Positive(t, snap.Queued, "the probe held requests back")
		})
	}
}

// TestAdmission_inner_wait_is_bounded_by_the_outer_deadline: a New with a
// concurrency limit inside another New's handler. The request's budget is
// the earlier of the two deadlines, so it waits for the inner slot at most
// a tenth of what is left of that, and is refused with 503 in time. It used
// to wait a tenth of the inner timeout alone (here six minutes): in racing
// mode the outer answered 504 while the waiter, still queued, would run the
// handler later for nobody; in cooperative mode the server goroutine stayed
// in the queue long after the request's deadline, and the client got
// nothing.
func TestAdmission_inner_wait_is_bounded_by_the_outer_deadline(t *testing.T) {
	t.Parallel()
	for _, outerMode := range allModes {
		t.Run(outerMode.String(), func(t *testing.T) {
			t.Parallel()
			b, stats, inner := innerBlocker()
			reasons := make(chan string, 10)
			outer := fasttimeout.New(rejectRecorder(inner, reasons), fasttimeout.Config{
				Mode: outerMode,
				// /block holds the inner slot without timing out; / has
				// a second, of which it may wait a tenth for the slot.
				Timeout: time.Second,
				TimeoutFunc: func(ctx *fasthttp.RequestCtx) time.Duration {
					if string(ctx.Path()) == "/block" {
						return time.Hour
					}
					return 0
				},
			})
			s := serve(t, outer)
			t.Cleanup(b.free) // before the server's shutdown, should the test fail
			held := b.hold(t, s)

			resp := receive(t, async(t, s, "/"), "the answer to /")
			require.Equal(t, fasthttp.StatusServiceUnavailable, resp.StatusCode(), "refused within the outer budget: %s", resp.Body())
			assert.Equal(t, fasttimeout.RejectedQueueTimeout, receive(t, reasons, "the refusal"))
			assert.Equal(t, int64(1), b.ran.Load(), "the refused request did not run")

			b.freeHeld(t, held)
			assert.Zero(t, stats.Snapshot().Waiting)
		})
	}
}

// TestAdmission_inner_New_after_the_outer_deadline_does_not_run: an outer
// handler that calls an inner New once the outer deadline has passed. The
// budget is spent before the inner handler could start: it is answered
// without running, as a spent budget, rather than taking a slot and
// running for nobody.
func TestAdmission_inner_New_after_the_outer_deadline_does_not_run(t *testing.T) {
	t.Parallel()
	for _, outerMode := range allModes {
		t.Run(outerMode.String(), func(t *testing.T) {
			t.Parallel()
			b, stats, inner := innerBlocker()
			returned := make(chan struct{})
			outer := fasttimeout.New(func(ctx *fasthttp.RequestCtx) {
				defer close(returned)
				<-fasttimeout.Context(ctx).Done() // the outer deadline
				inner(ctx)
			}, fasttimeout.Config{Mode: outerMode, Timeout: shortTimeout})
			s := serve(t, outer)
			resp := do(t, s, "GET", "/")
			assert.Equal(t, fasthttp.StatusGatewayTimeout, resp.StatusCode())
			receive(t, returned, "the outer handler's return")
			assert.Zero(t, b.ran.Load(), "the inner handler did not run")
			got := stats.Snapshot()
			assert.Zero(t, got.Admitted, "no slot taken")
			assert.Equal(t, int64(1), got.SpentBudgets)
		})
	}
}

// TestAdmission_long_polls_never_hold_every_slot: long polls that Disarm
// their deadline, or Extend it far, hold their slots for as long as they
// run, without timing out. They held the whole adaptive limit (20, after
// the first probe): nothing else was admitted, so nothing returned or timed
// out, and the limit never moved; every other request was refused until a
// poll ended. As beside late handlers, the limit keeps room beyond them.
func TestAdmission_long_polls_never_hold_every_slot(t *testing.T) {
	t.Parallel()
	moves := map[string]func(*fasthttp.RequestCtx) bool{
		"Disarm": fasttimeout.Disarm,
		"Extend": func(ctx *fasthttp.RequestCtx) bool { return fasttimeout.Extend(ctx, time.Hour) },
	}
	for _, mode := range allModes {
		for name, move := range moves {
			t.Run(mode.String()+"/"+name, func(t *testing.T) {
				t.Parallel()
				b := newBlocker()
				stats := new(fasttimeout.Stats)
				moved := make(chan bool, 64)
				s := serve(t, fasttimeout.New(func(ctx *fasthttp.RequestCtx) {
					if string(ctx.Path()) == "/block" {
						moved <- move(ctx)
					}
					b.handle(ctx)
				}, fasttimeout.Config{Mode: mode, Timeout: actInTime, AdaptiveConcurrency: true, Stats: stats}))
				t.Cleanup(b.free) // after serve's, which waits for the handlers: cleanups run last first
				const polls = 30
				held := make([]<-chan *fasthttp.Response, 0, polls)
				for range polls {
					// A poll may be refused while the limit has not yet
					// made room (it moves once per window); one is let in
					// soon after.
					require.Eventually(t, func() bool {
						poll := async(t, s, "/block")
						select {
						case <-b.entered:
							held = append(held, poll)
							return true
						case r := <-poll:
							return r.StatusCode() != fasthttp.StatusServiceUnavailable // any other answer fails below
						}
					}, waitTimeout, time.Millisecond, "limit %d, %d running", stats.Snapshot().ConcurrencyLimit, len(held))
					require.True(t, receive(t, moved, name), "the poll moved its deadline in time")
				}
				require.Len(t, held, polls)
				require.Eventually(t, func() bool {
					return do(t, s, "GET", "/").StatusCode() == fasthttp.StatusOK
				}, waitTimeout, time.Millisecond, "a request beside the polls")
				b.freeHeld(t, held...)
			})
		}
	}
}

// TestAdmission_hung_handlers_with_a_context_never_hold_every_slot: handlers
// that took their context and hang, ignoring it, are late from their
// deadline, in every mode and inside another New, so the adaptive limit
// keeps room beyond them for the traffic beside. An inner New's context
// ends with the outer call's timeout (its deadline is no later), and the
// housekeeper left such a context's call running: it held its slot until
// it returned, and every other request was refused.
func TestAdmission_hung_handlers_with_a_context_never_hold_every_slot(t *testing.T) {
	t.Parallel()
	for _, mode := range allModes {
		for _, outer := range []bool{false, true} {
			t.Run(fmt.Sprintf("%v/outer New=%v", mode, outer), func(t *testing.T) {
				t.Parallel()
				b := newBlocker()
				stats := new(fasttimeout.Stats)
				cfg := fasttimeout.Config{Mode: mode, Timeout: actInTime, TimeoutFunc: onlyTimingOut("/block")}
				h := fasttimeout.New(func(ctx *fasthttp.RequestCtx) {
					fasttimeout.Context(ctx) // and ignores it
					b.handle(ctx)
				}, fasttimeout.Config{Mode: mode, Timeout: cfg.Timeout, TimeoutFunc: cfg.TimeoutFunc, AdaptiveConcurrency: true, Stats: stats})
				if outer {
					h = fasttimeout.New(h, cfg)
				}
				s := serve(t, h)
				t.Cleanup(b.free) // after serve's, which waits for the handlers: cleanups run last first
				const hung = 20
				held := make([]<-chan *fasthttp.Response, 0, hung)
				for len(held) < hung {
					hang := async(t, s, "/block")
					select {
					case <-b.entered:
						held = append(held, hang)
					case r := <-hang:
						require.Equal(t, fasthttp.StatusServiceUnavailable, r.StatusCode(), "a hung request's answer before it ran")
					}
				}
				require.Eventually(t, func() bool { return stats.Snapshot().LateRunning == hung }, waitTimeout, time.Millisecond,
					"the hung handlers are late from their deadline: %+v", stats.Snapshot())
				require.Eventually(t, func() bool {
					return do(t, s, "GET", "/").StatusCode() == fasthttp.StatusOK
				}, waitTimeout, time.Millisecond, "a request beside the hung handlers: %+v", stats.Snapshot())
				b.free()
				for _, r := range held {
					assert.NotEqual(t, fasthttp.StatusServiceUnavailable, (<-r).StatusCode())
				}
			})
		}
	}
}

// TestAdmission_huge_limits_sum_in_stats: Stats sums the limits of the
// middlewares sharing it. Two fixed limits of math.MaxInt ("no limit", in
// effect) overflowed the sum to -2.
func TestAdmission_huge_limits_sum_in_stats(t *testing.T) {
	t.Parallel()
	stats := new(fasttimeout.Stats)
	cfg := fasttimeout.Config{MaxConcurrency: math.MaxInt, Stats: stats}
	ok := func(ctx *fasthttp.RequestCtx) { ctx.SetBodyString("ok") }
	for _, h := range []fasthttp.RequestHandler{fasttimeout.New(ok, cfg), fasttimeout.New(ok, cfg)} {
		assert.Equal(t, fasthttp.StatusOK, do(t, serve(t, h), "GET", "/").StatusCode())
	}
	got := stats.Snapshot()
	assert.Positive(t, got.ConcurrencyLimit)
	assert.Equal(t, int64(2), got.Admitted)
}

// TestAdmission_a_request_its_caller_gave_up_on_while_it_waited_does_not_run:
// a request young enough for MaxQueueAge when it reaches the middleware,
// but past it by the time a slot under the concurrency limit frees up, is
// one its caller has given up on (docs/overload.md): it gets the timeout
// response without running, as a spent budget, as one that came that old
// does. It used to be admitted and run, for nobody.
func TestAdmission_a_request_its_caller_gave_up_on_while_it_waited_does_not_run(t *testing.T) {
	t.Parallel()
	const maxAge = 5 * time.Minute
	for _, mode := range allModes {
		t.Run(mode.String(), func(t *testing.T) {
			t.Parallel()
			var onTimeout atomic.Int64
			b, stats, s := serveBlocker(t, fasttimeout.Config{
				// Minutes of budget: the wait for the slot (a tenth of
				// what is left) does not run out before the test frees it.
				Mode: mode, Timeout: 10 * time.Minute, MaxConcurrency: 1,
				HonorQueueHeaders: true, MaxQueueAge: maxAge,
				OnTimeout: func(*fasthttp.RequestCtx, *fasthttp.Response) { onTimeout.Add(1) },
			})
			held := b.hold(t, s)

			// Half a second short of MaxQueueAge when sent; past it when
			// the slot frees. (Should a stalled machine bring it to the
			// middleware only after that, it is answered the same way.)
			sentAt := time.Now().Add(-maxAge + 500*time.Millisecond)
			answer := async(t, s, "/", "X-Request-Start", fmt.Sprint(sentAt.UnixMilli()))
			for gaveUp := sentAt.Add(maxAge); time.Now().Before(gaveUp.Add(time.Millisecond)); {
				time.Sleep(time.Until(gaveUp.Add(time.Millisecond))) // until the caller has given up, not a guess
			}
			b.free()

			resp := receive(t, answer, "the answer to the request")
			assert.Equal(t, fasthttp.StatusGatewayTimeout, resp.StatusCode(), "%s", resp.Body())
			assert.Equal(t, fasttimeout.DefaultBody, string(resp.Body()))
			assert.Equal(t, int64(1), b.ran.Load(), "only /block ran")
			assert.Equal(t, fasthttp.StatusOK, receive(t, held, "the answer to /block").StatusCode())
			got := stats.Snapshot()
			assert.Equal(t, int64(1), got.SpentBudgets)
			assert.Equal(t, int64(1), got.Timeouts)
			assert.Equal(t, int64(1), got.Admitted, "/block only")
			assert.Zero(t, got.Rejected)
			assert.Equal(t, int64(1), onTimeout.Load())
			assert.Zero(t, got.Waiting)
			assert.Zero(t, got.InFlight)
		})
	}
}

// TestAdmission_a_waiter_whose_caller_gave_up_leaves_the_queue: a request
// queued for a slot under the concurrency limit stops waiting when it grows
// older than MaxQueueAge, its caller's patience, and gets the timeout
// response without running, counted as a spent budget (docs/overload.md),
// even though its share of a long budget would let it wait on. It used to
// wait out that share, a minute here, holding its place in the queue for
// nobody, and then be refused with 503 queue_timeout.
func TestAdmission_a_waiter_whose_caller_gave_up_leaves_the_queue(t *testing.T) {
	t.Parallel()
	const maxAge = 5 * time.Minute
	for _, mode := range allModes {
		t.Run(mode.String(), func(t *testing.T) {
			t.Parallel()
			var onTimeout atomic.Int64
			reasons := make(chan string, 2)
			b, stats, s := serveBlocker(t, fasttimeout.Config{
				// Its share of ten minutes, less what it is old, is a
				// minute: far beyond the test's wait for its answer.
				Mode: mode, Timeout: 15 * time.Minute, MaxConcurrency: 1,
				HonorQueueHeaders: true, MaxQueueAge: maxAge,
				OnTimeout: func(*fasthttp.RequestCtx, *fasthttp.Response) { onTimeout.Add(1) },
			}, recording(reasons))
			held := b.hold(t, s)

			// Young enough to queue when sent, its caller gives up while
			// it waits, the slot still held.
			// Whole milliseconds, as the header says it.
			sentAt := time.UnixMilli(time.Now().Add(-maxAge + 200*time.Millisecond).UnixMilli())
			resp := send(t, s, "X-Request-Start", fmt.Sprint(sentAt.UnixMilli()))
			answeredAt := time.Now()

			assert.Equal(t, fasthttp.StatusGatewayTimeout, resp.StatusCode(), "%s", resp.Body())
			assert.Equal(t, fasttimeout.DefaultBody, string(resp.Body()))
			assert.False(t, answeredAt.Before(sentAt.Add(maxAge)), "answered before its caller gave up")
			got := stats.Snapshot()
			assert.Equal(t, int64(1), got.SpentBudgets)
			assert.Equal(t, int64(1), got.Timeouts)
			assert.Zero(t, got.Rejected)
			assert.Zero(t, got.Waiting)
			assert.Equal(t, int64(1), onTimeout.Load())
			assert.Empty(t, reasons, "no refusal")

			b.freeHeld(t, held)
			assert.Equal(t, int64(1), b.ran.Load(), "only /block ran")
		})
	}
}

// TestAdmission_a_probe_without_load_gives_way_to_a_request_past_MaxQueueAge:
// the probe a new adaptive limit starts with (4 slots) gives way to the first
// request it holds back too long, so that a server started under light load
// does not keep holding its requests. With MaxQueueAge shorter than a
// waiter's share of its budget, the wait of such a request ends at
// MaxQueueAge: it gets the timeout response (its caller has given up), and
// the probe must give way all the same. It did not: every request that came
// while the probe's handlers ran waited out its MaxQueueAge and got 504,
// for as long as those handlers ran.
func TestAdmission_a_probe_without_load_gives_way_to_a_request_past_MaxQueueAge(t *testing.T) {
	t.Parallel()
	for _, mode := range allModes {
		t.Run(mode.String(), func(t *testing.T) {
			t.Parallel()
			b, stats, s := serveBlocker(t, fasttimeout.Config{
				Mode: mode,
				// A waiter's share is a second; its caller gives up sooner.
				Timeout:             10 * time.Second,
				MaxQueueAge:         200 * time.Millisecond,
				AdaptiveConcurrency: true,
			})
			var held []<-chan *fasthttp.Response
			for range 4 { // the probe's slots
				held = append(held, b.hold(t, s))
			}
			require.Equal(t, int64(4), stats.Snapshot().ConcurrencyLimit, "the starting probe")

			resp := do(t, s, "GET", "/")
			require.Equal(t, fasthttp.StatusGatewayTimeout, resp.StatusCode(), "held past MaxQueueAge: %s", resp.Body())
			got := stats.Snapshot()
			require.Equal(t, int64(1), got.Queued, "it waited for a slot")
			require.Equal(t, int64(1), got.SpentBudgets)

			resp = do(t, s, "GET", "/")
			assert.Equal(t, fasthttp.StatusOK, resp.StatusCode(), "the probe gave way: %s; %+v", resp.Body(), stats.Snapshot())

			b.freeHeld(t, held...)
		})
	}
}

// TestAdmission_on_one_P_refuses_rather_than_runs_late: on one P, handlers
// that spin past their deadline (ignoring their context) hold the slots of
// a small limit beside handlers that honour theirs, on many connections at
// once, so that the goroutines waiting for a slot, their timers and the
// returns that free slots all run late and in no set order. A request gets
// exactly one answer, its own on its connection; one refused (503) or
// answered at once with the timeout response never ran its handler, and a
// handler that ran was admitted; Stats add up; and once it is over the
// limit's slots are all free: as many requests as the limit run at once.
// Not parallel: GOMAXPROCS is the process's.
func TestAdmission_on_one_P_refuses_rather_than_runs_late(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	const (
		limit    = 2
		timeout  = 20 * time.Millisecond
		conns    = 16
		requests = 12
	)
	for _, mode := range []fasttimeout.Mode{fasttimeout.Racing, fasttimeout.Cooperative} {
		for _, adaptive := range []bool{false, true} {
			t.Run(fmt.Sprintf("%v/adaptive=%v", mode, adaptive), func(t *testing.T) {
				var stats fasttimeout.Stats
				var ran sync.Map // secret -> struct{}
				var holding atomic.Int32
				allHolding := make(chan struct{})
				server := startStressLoopback(t, fasttimeout.New(func(ctx *fasthttp.RequestCtx) {
					secret := string(ctx.Request.Header.Peek("X-Secret"))
					if _, again := ran.LoadOrStore(secret, struct{}{}); again {
						t.Errorf("%s ran twice", secret)
					}
					switch string(ctx.Path()) {
					case "/spin":
						spinPast(ctx, 5*time.Millisecond)
					case "/honour":
						select {
						case <-fasttimeout.Context(ctx).Done():
						case <-time.After(time.Millisecond):
						}
					case "/hold":
						if holding.Add(1) == limit {
							close(allHolding)
						}
						<-allHolding
					}
					replyWithSecret(ctx, "own", secret)
				}, fasttimeout.Config{
					Timeout: timeout, Mode: mode, MaxConcurrency: limit, AdaptiveConcurrency: adaptive, Stats: &stats,
					TimeoutFunc: func(ctx *fasthttp.RequestCtx) time.Duration {
						if string(ctx.Path()) == "/hold" {
							return time.Minute
						}
						return timeout
					},
				}))

				var own, refused, timedOut, unrun atomic.Int64
				var wg sync.WaitGroup
				start := make(chan struct{})
				for i := range conns {
					wg.Go(func() {
						c, err := dialStress(server.addr)
						if !assert.NoError(t, err) {
							return
						}
						defer c.close()
						<-start
						for j := range requests {
							secret := fmt.Sprintf("S%08x%08x", i, j)
							path := "/honour"
							if (i+j)%4 == 0 {
								path = "/spin"
							}
							if !assert.NoError(t, c.do(path, secret)) {
								return
							}
							_, didRun := ran.Load(secret)
							status, body := c.resp.StatusCode(), string(c.resp.Body())
							switch {
							case status == fasthttp.StatusOK && body == ownBody("own", secret):
								own.Add(1)
								assert.True(t, didRun, "%s: its own answer, and its handler never ran", secret)
							case status == fasthttp.StatusServiceUnavailable:
								refused.Add(1)
								assert.False(t, didRun, "%s: refused, and its handler ran", secret)
							case status == fasttimeout.DefaultStatusCode && body == fasttimeout.DefaultBody:
								timedOut.Add(1)
								if !didRun {
									unrun.Add(1)
								}
							default:
								t.Errorf("%s %s: %d %q", path, secret, status, body)
							}
						}
					})
				}
				close(start)
				wg.Wait()
				require.True(t, waitUntil(func() bool { return stats.Snapshot().InFlight == 0 }), "the handlers returned")
				got := stats.Snapshot()
				t.Logf("%d own, %d refused, %d timeouts (%d without running)", own.Load(), refused.Load(), timedOut.Load(), unrun.Load())
				ranCount := int64(0)
				ran.Range(func(any, any) bool { ranCount++; return true })
				assert.Equal(t, int64(conns*requests), own.Load()+refused.Load()+timedOut.Load(), "one answer each")
				assert.Equal(t, int64(conns*requests), got.Requests)
				assert.Equal(t, ranCount, got.Admitted, "every handler that ran was admitted")
				assert.Equal(t, refused.Load(), got.Rejected)
				assert.Equal(t, unrun.Load(), got.SpentBudgets, "answered without running")
				assert.Equal(t, timedOut.Load(), got.Timeouts)
				assert.Equal(t, timedOut.Load()-unrun.Load(), got.LateFinished, "every handler that timed out returned late")
				assert.Zero(t, got.LateRunning)
				assert.Zero(t, got.Waiting)

				// Every slot is free again. With AdaptiveConcurrency the
				// backlog in front of the middleware may still refuse some
				// requests at once (503), for the run queue the spinners
				// left: such a request is sent again.
				holds := make(chan int, limit)
				for i := range limit {
					go func() {
						c, err := dialStress(server.addr)
						if !assert.NoError(t, err) {
							holds <- 0
							return
						}
						defer c.close()
						for try := 0; ; try++ {
							if !assert.NoError(t, c.do("/hold", fmt.Sprintf("H%07x%08x", i, try))) {
								holds <- 0
								return
							}
							if status := c.resp.StatusCode(); status != fasthttp.StatusServiceUnavailable || !adaptive {
								holds <- status
								return
							}
						}
					}()
				}
				for range limit {
					assert.Equal(t, fasthttp.StatusOK, receive(t, holds, "the answer to a request beside others at the limit"))
				}
			})
		}
	}
}

// TestAdmission_the_wait_for_a_slot_counts_against_the_timeout: a request
// that waited for a slot under the concurrency limit has the deadline its
// arrival gave it, Timeout after ctx.Time(), not Timeout after it got the
// slot (see Config.Timeout).
func TestAdmission_the_wait_for_a_slot_counts_against_the_timeout(t *testing.T) {
	t.Parallel()
	for _, mode := range allModes {
		t.Run(mode.String(), func(t *testing.T) {
			t.Parallel()
			b := newBlocker()
			timeout := make(chan time.Duration, 1)
			stats := new(fasttimeout.Stats)
			report := reportTimeout(timeout)
			s := serve(t, fasttimeout.New(func(ctx *fasthttp.RequestCtx) {
				if string(ctx.Path()) == "/queued" {
					report(ctx)
				}
				b.handle(ctx)
			}, fasttimeout.Config{Mode: mode, Timeout: time.Minute, MaxConcurrency: 1, Stats: stats}))
			t.Cleanup(b.free) // before the server's shutdown, should the test fail first

			held := b.hold(t, s)
			queued := async(t, s, "/queued")
			require.Eventually(t, func() bool { return stats.Snapshot().Waiting == 1 }, stressBound, time.Millisecond)
			b.freeHeld(t, held)
			assert.Equal(t, fasthttp.StatusOK, receive(t, queued, "the queued request's answer").StatusCode())
			assert.Equal(t, time.Minute, receive(t, timeout, "the queued handler's deadline"), "counted from arrival")
			assert.Equal(t, int64(1), stats.Snapshot().Queued)
		})
	}
}
