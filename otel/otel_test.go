package fasttimeoutotel_test

import (
	"context"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/fasthttputil"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/fasttimeout/fasttimeout"
	fasttimeoutotel "github.com/fasttimeout/fasttimeout/otel"
)

// endSignal is a span processor that sends each span when it ends, so that
// tests wait on a channel instead of polling the recorder.
type endSignal struct{ ended chan sdktrace.ReadOnlySpan }

func (s endSignal) OnStart(context.Context, sdktrace.ReadWriteSpan) {}
func (s endSignal) OnEnd(span sdktrace.ReadOnlySpan)                { s.ended <- span }
func (s endSignal) Shutdown(context.Context) error                  { return nil }
func (s endSignal) ForceFlush(context.Context) error                { return nil }

// traced is a middleware with the adaptor, behind a real server, recording
// its spans.
type traced struct {
	server   *fasthttp.Server
	served   chan error
	client   *fasthttp.Client
	recorder *tracetest.SpanRecorder
	ended    chan sdktrace.ReadOnlySpan
	release  chan struct{} // closing it lets /block return
	entered  chan struct{} // /hold and /wait send on it when they start waiting
}

// serveTraced serves, under fasttimeoutotel.Middleware and with
// fasttimeoutotel.Handler inside fasttimeout.New: /fast; /fail, which
// answers 500 in time; /block, which
// ignores its context until release is closed; /hold, which does the same
// once it has said so on entered; /wait, which returns when its context
// ends; /child, which starts a child span from fasttimeoutotel.Context;
// /starved, whose Handler starts only once release is closed, as on a
// starved process, and which then says on entered that it has returned.
func serveTraced(t *testing.T, cfg fasttimeout.Config, sampler sdktrace.Sampler) *traced {
	t.Helper()
	tt := &traced{
		served:   make(chan error, 1),
		recorder: tracetest.NewSpanRecorder(),
		ended:    make(chan sdktrace.ReadOnlySpan, 100), // room for every span of a test that fails before reading them
		release:  make(chan struct{}),
		entered:  make(chan struct{}, 10),
	}
	provider := sdktrace.NewTracerProvider(
		sdktrace.WithSampler(sampler),
		sdktrace.WithSpanProcessor(tt.recorder),
		sdktrace.WithSpanProcessor(endSignal{tt.ended}),
	)
	tracer := provider.Tracer("test")
	app := func(ctx *fasthttp.RequestCtx) {
		switch string(ctx.Path()) {
		case "/block":
			<-tt.release
		case "/hold":
			tt.entered <- struct{}{}
			<-tt.release
		case "/wait":
			done := fasttimeout.Context(ctx).Done()
			tt.entered <- struct{}{}
			<-done
		case "/child":
			_, span := tracer.Start(fasttimeoutotel.Context(ctx), "child")
			span.End()
		case "/fail":
			ctx.SetStatusCode(fasthttp.StatusInternalServerError)
		case "/past": // returns just past its deadline, whatever its context says
			for left, _ := fasttimeout.Remaining(ctx); left > 0; left, _ = fasttimeout.Remaining(ctx) {
				time.Sleep(left)
			}
		}
		ctx.SetBodyString("ok")
	}
	inner := fasttimeoutotel.Handler(app)
	handler := fasttimeout.New(func(ctx *fasthttp.RequestCtx) {
		if string(ctx.Path()) != "/starved" {
			inner(ctx)
			return
		}
		<-tt.release
		inner(ctx)
		tt.entered <- struct{}{}
	}, cfg)
	ln := fasthttputil.NewInmemoryListener()
	tt.server = &fasthttp.Server{Handler: fasttimeoutotel.Middleware(handler, tracer)}
	go func() { tt.served <- tt.server.Serve(ln) }()
	tt.client = &fasthttp.Client{
		Dial:                      func(string) (net.Conn, error) { return ln.Dial() },
		MaxIdemponentCallAttempts: 1,
	}
	t.Cleanup(func() {
		tt.client.CloseIdleConnections()
		select {
		case <-tt.release:
		default:
			close(tt.release)
		}
		require.NoError(t, tt.server.Shutdown())
		require.NoError(t, <-tt.served)
		require.NoError(t, provider.Shutdown(context.Background()))
	})
	return tt
}

func (tt *traced) get(t *testing.T, path string) int {
	t.Helper()
	status, _, err := tt.client.GetTimeout(nil, "http://app"+path, 10*time.Second)
	require.NoError(t, err)
	return status
}

// getAsync sends GET path from a goroutine, and sends its status (0 if it
// failed) on the channel it returns.
func (tt *traced) getAsync(path string) <-chan int {
	answered := make(chan int, 1)
	go func() {
		status, _, err := tt.client.GetTimeout(nil, "http://app"+path, time.Minute)
		if err != nil {
			status = 0
		}
		answered <- status
	}()
	return answered
}

// hold sends GET /hold from a goroutine and waits until its handler runs,
// holding a slot under the concurrency limit until release is closed.
func (tt *traced) hold(t *testing.T) <-chan int {
	t.Helper()
	answered := tt.getAsync("/hold")
	select {
	case <-tt.entered:
	case status := <-answered:
		t.Fatalf("GET /hold answered %d before its handler ran", status)
	case <-time.After(10 * time.Second):
		t.Fatal("the handler of /hold did not start within 10 s")
	}
	return answered
}

// nextEnded waits for the next span to end.
func (tt *traced) nextEnded(t *testing.T) sdktrace.ReadOnlySpan {
	t.Helper()
	select {
	case span := <-tt.ended:
		return span
	case <-time.After(10 * time.Second):
		t.Fatal("no span ended within 10 s")
		return nil
	}
}

// eventNames lists the names of the span's events.
func eventNames(span sdktrace.ReadOnlySpan) []string {
	names := []string{}
	for _, e := range span.Events() {
		names = append(names, e.Name)
	}
	return names
}

// attrs returns the event's attributes by key.
func attrs(e sdktrace.Event) map[attribute.Key]attribute.Value {
	m := map[attribute.Key]attribute.Value{}
	for _, kv := range e.Attributes {
		m[kv.Key] = kv.Value
	}
	return m
}

// requireTimeoutEvents checks the events of a span whose request timed out
// and whose handler then returned.
func requireTimeoutEvents(t *testing.T, span sdktrace.ReadOnlySpan, timeout time.Duration) {
	t.Helper()
	require.Equal(t, []string{fasttimeoutotel.EventTimeout, fasttimeoutotel.EventLateReturn}, eventNames(span))
	assert.Equal(t, codes.Error, span.Status().Code)
	assert.Equal(t, fasttimeout.ErrTimeout.Error(), span.Status().Description)
	var lateness []float64
	for _, e := range span.Events() {
		a := attrs(e)
		assert.Equal(t, fasttimeout.ErrTimeout.Error(), a[fasttimeoutotel.AttrCause].AsString(), e.Name)
		assert.Greater(t, a[fasttimeoutotel.AttrTimeout].AsFloat64(), 0.0, e.Name)
		assert.LessOrEqual(t, a[fasttimeoutotel.AttrTimeout].AsFloat64(), timeout.Seconds(), e.Name)
		assert.GreaterOrEqual(t, a[fasttimeoutotel.AttrLateness].AsFloat64(), 0.0, e.Name)
		lateness = append(lateness, a[fasttimeoutotel.AttrLateness].AsFloat64())
	}
	assert.LessOrEqual(t, lateness[0], lateness[1], "the return comes after the timeout")
}

func TestHandler(t *testing.T) {
	t.Parallel()
	// Time enough, on a loaded machine, for a handler meant to time out to
	// start before its deadline: its events record the time it had left
	// then (AttrTimeout), which must be positive.
	const timeout = time.Second
	// /fast and /child must be answered by their handler: a minute.
	inTime := func(ctx *fasthttp.RequestCtx) time.Duration {
		if p := string(ctx.Path()); p == "/fast" || p == "/child" {
			return time.Minute
		}
		return 0
	}
	tests := []struct {
		name string
		mode fasttimeout.Mode
		run  func(t *testing.T, tt *traced)
	}{{
		name: "a_request_in_time_has_no_event_and_no_status",
		run: func(t *testing.T, tt *traced) {
			require.Equal(t, fasthttp.StatusOK, tt.get(t, "/fast"))
			span := tt.nextEnded(t)
			assert.Equal(t, "GET", span.Name())
			assert.Equal(t, trace.SpanKindServer, span.SpanKind())
			assert.Empty(t, eventNames(span))
			assert.Equal(t, codes.Unset, span.Status().Code)
		},
	}, {
		name: "a_timeout_honoured_by_the_handler_records_the_timeout_and_the_return",
		run: func(t *testing.T, tt *traced) {
			require.Equal(t, fasthttp.StatusGatewayTimeout, tt.get(t, "/wait"))
			requireTimeoutEvents(t, tt.nextEnded(t), timeout)
		},
	}, {
		name: "a_late_handler_keeps_the_span_open_until_it_returns",
		run: func(t *testing.T, tt *traced) {
			require.Equal(t, fasthttp.StatusGatewayTimeout, tt.get(t, "/block"))
			select {
			case span := <-tt.ended:
				t.Fatalf("span %q ended while its handler still runs", span.Name())
			default:
			}
			require.Empty(t, tt.recorder.Ended())
			close(tt.release)
			span := tt.nextEnded(t)
			requireTimeoutEvents(t, span, timeout)
			late := attrs(span.Events()[1])[fasttimeoutotel.AttrLateness].AsFloat64()
			assert.Greater(t, late, 0.0)
		},
	}, {
		name: "a_handler_that_starts_after_the_timeout_answer_leaves_the_timeout_on_the_span",
		run: func(t *testing.T, tt *traced) {
			require.Equal(t, fasthttp.StatusGatewayTimeout, tt.get(t, "/starved"))
			span := tt.nextEnded(t) // before the handler starts
			require.Equal(t, []string{fasttimeoutotel.EventTimeout}, eventNames(span))
			assert.Equal(t, codes.Error, span.Status().Code)
			assert.Equal(t, fasttimeout.ErrTimeout.Error(), attrs(span.Events()[0])[fasttimeoutotel.AttrCause].AsString())
			close(tt.release)
			<-tt.entered
			assert.Len(t, tt.recorder.Ended(), 1, "the handler, started late, records nothing more")
		},
	}, {
		name: "cooperative_mode_records_the_timeout_and_the_return",
		mode: fasttimeout.Cooperative,
		run: func(t *testing.T, tt *traced) {
			require.Equal(t, fasthttp.StatusGatewayTimeout, tt.get(t, "/wait"))
			requireTimeoutEvents(t, tt.nextEnded(t), timeout)
		},
	}, {
		name: "the_handler_starts_child_spans_from_Context",
		run: func(t *testing.T, tt *traced) {
			require.Equal(t, fasthttp.StatusOK, tt.get(t, "/child"))
			child, parent := tt.nextEnded(t), tt.nextEnded(t)
			require.Equal(t, "child", child.Name())
			assert.Equal(t, parent.SpanContext().SpanID(), child.Parent().SpanID())
			assert.Equal(t, parent.SpanContext().TraceID(), child.SpanContext().TraceID())
		},
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tt := serveTraced(t, fasttimeout.Config{Timeout: timeout, TimeoutFunc: inTime, Mode: tc.mode}, sdktrace.AlwaysSample())
			tc.run(t, tt)
		})
	}
}

func TestHandlerRecordsShutdown(t *testing.T) {
	t.Parallel()
	tt := serveTraced(t, fasttimeout.Config{Timeout: time.Minute}, sdktrace.AlwaysSample())
	answered := make(chan int, 1)
	go func() {
		status, _, _ := tt.client.GetTimeout(nil, "http://app/wait", 10*time.Second)
		answered <- status
	}()
	<-tt.entered
	go func() { _ = tt.server.Shutdown() }() // cancels the running request's context
	span := tt.nextEnded(t)
	<-answered
	require.Equal(t, []string{fasttimeoutotel.EventShutdown, fasttimeoutotel.EventLateReturn}, eventNames(span))
	assert.Equal(t, codes.Error, span.Status().Code)
	assert.Equal(t, fasttimeout.ErrShutdown.Error(), attrs(span.Events()[0])[fasttimeoutotel.AttrCause].AsString())
}

func TestHandlerWithoutRecordingSpan(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		handler func(h fasthttp.RequestHandler, tracer trace.Tracer) fasthttp.RequestHandler
		sampler sdktrace.Sampler
	}{
		{"no_span_attached", func(h fasthttp.RequestHandler, _ trace.Tracer) fasthttp.RequestHandler { return h }, sdktrace.AlwaysSample()},
		{"span_not_sampled", fasttimeoutotel.Middleware, sdktrace.NeverSample()},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			recorder := tracetest.NewSpanRecorder()
			provider := sdktrace.NewTracerProvider(sdktrace.WithSampler(tc.sampler), sdktrace.WithSpanProcessor(recorder))
			wait := func(ctx *fasthttp.RequestCtx) { <-fasttimeout.Context(ctx).Done() }
			h := tc.handler(fasttimeout.New(fasttimeoutotel.Handler(wait), fasttimeout.Config{Timeout: 10 * time.Millisecond}),
				provider.Tracer("test"))
			ln := fasthttputil.NewInmemoryListener()
			server := &fasthttp.Server{Handler: h}
			served := make(chan error, 1)
			go func() { served <- server.Serve(ln) }()
			client := &fasthttp.Client{Dial: func(string) (net.Conn, error) { return ln.Dial() }}
			status, _, err := client.GetTimeout(nil, "http://app/", 10*time.Second)
			require.NoError(t, err)
			require.Equal(t, fasthttp.StatusGatewayTimeout, status)
			client.CloseIdleConnections()
			require.NoError(t, server.Shutdown())
			require.NoError(t, <-served)
			require.Empty(t, recorder.Ended())
		})
	}
}

// A request refused with 503 never reaches Handler; Middleware records the
// refusal on its span when fasttimeout.New's call returns.
func TestMiddlewareRecordsRejection(t *testing.T) {
	t.Parallel()
	// holdLonger gives /hold a minute, so that it holds its slot, in time,
	// until the test releases it.
	holdLonger := func(ctx *fasthttp.RequestCtx) time.Duration {
		if string(ctx.Path()) == "/hold" {
			return time.Minute
		}
		return 0
	}
	fullQueue := new(fasttimeout.Stats)
	tests := []struct {
		name   string
		cfg    fasttimeout.Config
		reason string
		// refuse has one request refused, with other requests' handlers
		// blocked until release is closed; it returns how many spans they
		// hold open.
		refuse func(t *testing.T, tt *traced) (open int)
	}{{
		name: "late_handlers_at_MaxLateHandlers",
		// A second: /block must run to be late, its budget not spent on
		// arrival by a stall.
		cfg:    fasttimeout.Config{Timeout: time.Second, MaxLateHandlers: 1},
		reason: fasttimeout.RejectedLateHandlers,
		refuse: func(t *testing.T, tt *traced) int {
			require.Equal(t, fasthttp.StatusGatewayTimeout, tt.get(t, "/block"))
			require.Equal(t, fasthttp.StatusServiceUnavailable, tt.get(t, "/fast"))
			return 1
		},
	}, {
		name: "queue_timeout_after_waiting_a_tenth_of_the_budget",
		cfg: fasttimeout.Config{MaxConcurrency: 1, Timeout: time.Second,
			TimeoutFunc: holdLonger},
		reason: fasttimeout.RejectedQueueTimeout,
		refuse: func(t *testing.T, tt *traced) int {
			tt.hold(t)
			require.Equal(t, fasthttp.StatusServiceUnavailable, tt.get(t, "/fast"))
			return 1
		},
	}, {
		name: "queue_full_beyond_the_queue",
		// Long enough that no waiter reaches its share of its budget.
		cfg:    fasttimeout.Config{MaxConcurrency: 1, Timeout: 5 * time.Minute, Stats: fullQueue},
		reason: fasttimeout.RejectedQueueFull,
		refuse: func(t *testing.T, tt *traced) int {
			tt.hold(t)
			// Requests join the queue one at a time until one is refused:
			// the newcomer, or the oldest waiter once the queue serves the
			// newest first.
			var n int64
			for fullQueue.Snapshot().Rejected == 0 {
				require.Less(t, n, int64(10000), "the queue never fills")
				tt.getAsync("/fast")
				n++
				require.Eventually(t, func() bool {
					c := fullQueue.Snapshot()
					return c.Waiting == n || c.Rejected > 0
				}, 10*time.Second, time.Millisecond)
			}
			require.Equal(t, int64(1), fullQueue.Snapshot().RejectedFull)
			return int(n) // the held one, and the waiters but one
		},
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tt := serveTraced(t, tc.cfg, sdktrace.AlwaysSample())
			open := tc.refuse(t, tt)

			// The other requests hold their spans open: the refused
			// request's span ends first.
			span := tt.nextEnded(t)
			require.Equal(t, []string{fasttimeoutotel.EventRejected}, eventNames(span))
			assert.Equal(t, tc.reason, attrs(span.Events()[0])[fasttimeoutotel.AttrRejectReason].AsString())
			assert.Equal(t, codes.Error, span.Status().Code)
			assert.Contains(t, span.Status().Description, tc.reason)

			close(tt.release)
			for range open {
				assert.NotContains(t, eventNames(tt.nextEnded(t)), fasttimeoutotel.EventRejected)
			}
		})
	}
}

// A request whose budget is spent on arrival gets the timeout response
// without running, so Handler never sees it; Middleware records it as a
// timeout at once (an event, status Error).
func TestMiddlewareRecordsSpentBudget(t *testing.T) {
	t.Parallel()
	tt := serveTraced(t, fasttimeout.Config{Timeout: time.Second, HonorDeadlineHeaders: true}, sdktrace.AlwaysSample())
	req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	req.SetRequestURI("http://app/fast")
	req.Header.Set("grpc-timeout", "0S")
	require.NoError(t, tt.client.DoTimeout(req, resp, 10*time.Second))
	require.Equal(t, fasthttp.StatusGatewayTimeout, resp.StatusCode())

	span := tt.nextEnded(t)
	require.Equal(t, []string{fasttimeoutotel.EventTimeout}, eventNames(span))
	assert.Equal(t, fasttimeout.ErrTimeout.Error(), attrs(span.Events()[0])[fasttimeoutotel.AttrCause].AsString())
	assert.Equal(t, codes.Error, span.Status().Code)
}

// A handler that returns just past its deadline, before its context is
// cancelled (here a cooperative context, cancelled by a housekeeper that
// ticks every 100 ms, the longest tick a Precision of a second gets), is
// late: the client gets the timeout response. Its span records the timeout
// and the late return, although the context had not ended.
func TestHandlerRecordsAReturnPastTheDeadlineBeforeTheContextEnds(t *testing.T) {
	t.Parallel()
	tt := serveTraced(t, fasttimeout.Config{Timeout: 20 * time.Millisecond, Mode: fasttimeout.Cooperative, Precision: time.Second},
		sdktrace.AlwaysSample())
	require.Equal(t, fasthttp.StatusGatewayTimeout, tt.get(t, "/past"))

	span := tt.nextEnded(t)
	require.Equal(t, []string{fasttimeoutotel.EventTimeout, fasttimeoutotel.EventLateReturn}, eventNames(span))
	assert.Equal(t, fasttimeout.ErrTimeout.Error(), attrs(span.Events()[0])[fasttimeoutotel.AttrCause].AsString())
	assert.Equal(t, codes.Error, span.Status().Code)
}

// After a timeout the RequestCtx belongs to the late handler, which changes
// it when it returns (fasttimeout gives Context back then): Middleware must
// not read it to look for a refusal. Handlers that return at their deadline
// make the two meet often; the race detector tells.
//
// On a loaded machine the middleware may run 10 ms after fasthttp read the
// request, and then answers it at once without running the handler (its
// budget is spent, see Stats.SpentBudgets): nothing races then, and its
// span has the timeout event alone.
func TestMiddlewareLeavesATimedOutRequestAlone(t *testing.T) {
	t.Parallel()
	const n = 100
	stats := new(fasttimeout.Stats)
	tt := serveTraced(t, fasttimeout.Config{Timeout: 10 * time.Millisecond, Stats: stats}, sdktrace.AlwaysSample())
	spent := int64(0)
	for range n {
		require.Equal(t, fasthttp.StatusGatewayTimeout, tt.get(t, "/wait"))
		if s := stats.Snapshot().SpentBudgets; s != spent {
			spent = s
			require.Less(t, spent, int64(n), "the budget of every request was spent before its handler could run")
			require.Equal(t, []string{fasttimeoutotel.EventTimeout}, eventNames(tt.nextEnded(t)))
			continue
		}
		select {
		case <-tt.entered:
		case <-time.After(10 * time.Second):
			t.Fatal("the handler of /wait did not run within 10 s")
		}
		span := tt.nextEnded(t)
		require.Equal(t, []string{fasttimeoutotel.EventTimeout, fasttimeoutotel.EventLateReturn}, eventNames(span))
	}
}

// Middleware's server span follows OpenTelemetry's HTTP semantic
// conventions: the status code sent (for a timeout, the timeout response's,
// not the late handler's), the status Error for a 5xx answer without
// overwriting the cause fasttimeout recorded, with error.type (the
// conventions require it of a request that ended with an error, and a 5xx
// answer is one), and a method it does not know as _OTHER, so that a
// client cannot make up span names.
func TestMiddlewareFollowsHTTPConventions(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		mode       fasttimeout.Mode
		method     string
		path       string
		header     []string // name, value
		wantStatus int
		wantName   string
		wantMethod string // http.request.method
		wantOrig   string // http.request.method_original, "" for none
		wantCode   codes.Code
		wantDesc   string
	}{
		{name: "in_time", method: "GET", path: "/fast", wantStatus: 200, wantName: "GET", wantMethod: "GET", wantCode: codes.Unset},
		{name: "POST", method: "POST", path: "/fast", wantStatus: 200, wantName: "POST", wantMethod: "POST", wantCode: codes.Unset},
		{name: "a_500_of_the_app", method: "GET", path: "/fail", wantStatus: 500, wantName: "GET", wantMethod: "GET", wantCode: codes.Error},
		{name: "a_racing_timeout", method: "GET", path: "/wait", wantStatus: 504, wantName: "GET", wantMethod: "GET",
			wantCode: codes.Error, wantDesc: fasttimeout.ErrTimeout.Error()},
		{name: "a_cooperative_timeout", mode: fasttimeout.Cooperative, method: "GET", path: "/wait", wantStatus: 504, wantName: "GET", wantMethod: "GET",
			wantCode: codes.Error, wantDesc: fasttimeout.ErrTimeout.Error()},
		{name: "a_spent_budget", method: "GET", path: "/fast", header: []string{"grpc-timeout", "0S"}, wantStatus: 504, wantName: "GET", wantMethod: "GET",
			wantCode: codes.Error, wantDesc: fasttimeout.ErrTimeout.Error()},
		// The conventions (semconv v1.43.0, which this module imports)
		// know QUERY beside RFC 9110's methods and PATCH.
		{name: "QUERY", method: "QUERY", path: "/fast", wantStatus: 200, wantName: "QUERY", wantMethod: "QUERY", wantCode: codes.Unset},
		{name: "an_unknown_method", method: "FOO", path: "/fast", wantStatus: 200, wantName: "HTTP", wantMethod: "_OTHER", wantOrig: "FOO", wantCode: codes.Unset},
		{name: "a_method_in_lower_case", method: "get", path: "/fast", wantStatus: 200, wantName: "HTTP", wantMethod: "_OTHER", wantOrig: "get", wantCode: codes.Unset},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			// /fast and /fail get a minute, to answer in time on a loaded
			// machine; /wait a second (a stall that spends it on arrival
			// gets the same 504 and status).
			inTime := func(ctx *fasthttp.RequestCtx) time.Duration {
				if p := string(ctx.Path()); p == "/fast" || p == "/fail" {
					return time.Minute
				}
				return 0
			}
			tt := serveTraced(t, fasttimeout.Config{Timeout: time.Second, TimeoutFunc: inTime, Mode: tc.mode, HonorDeadlineHeaders: true},
				sdktrace.AlwaysSample())
			req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
			defer fasthttp.ReleaseRequest(req)
			defer fasthttp.ReleaseResponse(resp)
			req.Header.SetMethod(tc.method)
			req.SetRequestURI("http://app" + tc.path)
			for i := 0; i+1 < len(tc.header); i += 2 {
				req.Header.Set(tc.header[i], tc.header[i+1])
			}
			require.NoError(t, tt.client.DoTimeout(req, resp, 10*time.Second))
			require.Equal(t, tc.wantStatus, resp.StatusCode())

			span := tt.nextEnded(t)
			got := map[attribute.Key]attribute.Value{}
			for _, kv := range span.Attributes() {
				got[kv.Key] = kv.Value
			}
			assert.Equal(t, tc.wantName, span.Name())
			assert.Equal(t, tc.wantMethod, got["http.request.method"].AsString())
			assert.Equal(t, tc.wantOrig, got["http.request.method_original"].AsString())
			assert.Equal(t, tc.path, got["url.path"].AsString())
			assert.Equal(t, "http", got["url.scheme"].AsString())
			assert.Equal(t, int64(tc.wantStatus), got["http.response.status_code"].AsInt64())
			assert.Equal(t, tc.wantCode, span.Status().Code)
			assert.Equal(t, tc.wantDesc, span.Status().Description)
			// Conditionally required for a request that ended with an
			// error, as a 5xx answer is: its status code.
			wantErrorType := ""
			if tc.wantStatus >= fasthttp.StatusInternalServerError {
				wantErrorType = strconv.Itoa(tc.wantStatus)
			}
			errorType, ok := got["error.type"]
			assert.Equal(t, wantErrorType != "", ok, "error.type set")
			assert.Equal(t, wantErrorType, errorType.AsString())
		})
	}
}

// Context wraps the request's context only to carry a span worth carrying:
// under a layer of its own, every context a handler derives with a cancel
// takes a goroutine (see fasttimeout.Context). A span with no trace, as a
// tracer without an SDK starts, is not; one sampled out is, so that child
// spans are sampled out with it.
func TestContextCarriesOnlyASpanOfATrace(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		tracer   trace.Tracer
		wantSame bool // Context returns fasttimeout.Context itself
	}{
		{"no_SDK", noop.NewTracerProvider().Tracer("test"), true},
		{"sampled_out", sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.NeverSample())).Tracer("test"), false},
		{"sampled", sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.AlwaysSample())).Tracer("test"), false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			same := make(chan bool, 1)
			app := func(ctx *fasthttp.RequestCtx) {
				c := fasttimeoutotel.Context(ctx)
				same <- c == fasttimeout.Context(ctx)
				if trace.SpanContextFromContext(c).IsValid() {
					ctx.SetBodyString("traced")
				}
			}
			ln := fasthttputil.NewInmemoryListener()
			server := &fasthttp.Server{Handler: fasttimeoutotel.Middleware(
				fasttimeout.New(fasttimeoutotel.Handler(app), fasttimeout.Config{Timeout: time.Minute}), tc.tracer)}
			served := make(chan error, 1)
			go func() { served <- server.Serve(ln) }()
			client := &fasthttp.Client{Dial: func(string) (net.Conn, error) { return ln.Dial() }}
			status, body, err := client.GetTimeout(nil, "http://app/", 10*time.Second)
			require.NoError(t, err)
			require.Equal(t, fasthttp.StatusOK, status)
			client.CloseIdleConnections()
			require.NoError(t, server.Shutdown())
			require.NoError(t, <-served)
			assert.Equal(t, tc.wantSame, <-same)
			assert.Equal(t, !tc.wantSame, string(body) == "traced", "the span's trace reaches the handler")
		})
	}
}
