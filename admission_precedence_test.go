// The checks New makes before a handler runs, combined on one request, over
// a real server: which answer wins when more than one applies, and where
// the request is counted. The order is that of admit, as docs/overload.md
// ("What happens to a request") tells it: Skip, then MaxLateHandlers, then
// the request's age and deadline (a spent budget), then the concurrency
// limit.
package fasttimeout_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/valyala/fasthttp"

	"github.com/fasttimeout/fasttimeout"
)

// TestAdmission_combined_checks_answer_and_count_each_request_once sends
// requests to which several of New's admission checks apply at once and
// checks, for each, the answer, whether the handler ran (and with which
// deadline), the Stats counters it moved (each request counted once, in
// one place), RejectReason and SpentBudget as a middleware around New sees
// them, and whether OnTimeout was called.
//
// No outcome depends on how fast the machine is: requests that must run
// have minutes, "old" requests are minutes old, a deadline header's budget
// counts from when the middleware sees the request (so a budget of 500 µs
// is never spent, but too short to wait for a slot), and deadlines are
// checked against the clock readings around the request, not a tolerance.
func TestAdmission_combined_checks_answer_and_count_each_request_once(t *testing.T) {
	t.Parallel()
	type setup int
	const (
		plain    setup = iota
		lateFull       // MaxLateHandlers 1, and one handler running late (racing mode only: see MaxLateHandlers)
		limited        // MaxConcurrency 1, the slot free
		slotHeld       // MaxConcurrency 1, its slot held by a running handler
	)
	// A header value for a request sent at now.
	type header struct {
		name  string
		value func(now time.Time) string
	}
	nginx := func(age time.Duration) header { // X-Request-Start, age old (negative: in the future)
		return header{"X-Request-Start", func(now time.Time) string {
			at := now.Add(-age)
			return fmt.Sprintf("t=%d.%03d", at.Unix(), at.Nanosecond()/1e6)
		}}
	}
	alb := func(age time.Duration) header {
		return header{"X-Amzn-Trace-Id", func(now time.Time) string {
			return fmt.Sprintf("Root=1-%08x-abcdef012345678912345678", now.Add(-age).Unix())
		}}
	}
	literal := func(name, value string) header { return header{name, func(time.Time) string { return value }} }

	const (
		okBody    = "ran"
		deadlineH = fasttimeout.HeaderGRPCTimeout
	)
	// The deadline a handler that runs must have: its budget counted from
	// when the middleware saw the request (fromSent), or from the queue
	// header's start (fromStart, the age being the header's); or none
	// (unbounded, for Skip).
	type deadline struct {
		fromSent  time.Duration
		fromStart time.Duration
		age       time.Duration
		unbounded bool
	}
	type want struct {
		status    int
		ran       bool
		deadline  deadline // if ran
		reason    string   // RejectReason around New
		spent     bool     // SpentBudget around New
		onTimeout bool
		counts    fasttimeout.Counters // moved by the request; Requests is always 1
	}
	spentAnswer := func(badDeadline, badQueue int64) want {
		return want{status: fasthttp.StatusGatewayTimeout, spent: true, onTimeout: true, counts: fasttimeout.Counters{
			Timeouts: 1, SpentBudgets: 1, BadDeadlineHeaders: badDeadline, BadQueueHeaders: badQueue,
		}}
	}
	cases := []struct {
		name    string
		setup   setup
		cfg     fasttimeout.Config // Mode, Stats, OnTimeout, Skip, TimeoutFunc and the setup's fields are the test's
		skip    bool
		timeout time.Duration // TimeoutFunc's choice for the request; 0: Timeout's
		headers []header
		want    want
	}{
		{
			name:    "an old start, a TimeoutFunc and a shorter deadline header: the header bounds it",
			cfg:     fasttimeout.Config{HonorDeadlineHeaders: true, HonorQueueHeaders: true},
			timeout: 10 * time.Minute, // 5 min left of it, after the request's age
			headers: []header{nginx(5 * time.Minute), literal(deadlineH, "60S")},
			want:    want{status: fasthttp.StatusOK, ran: true, deadline: deadline{fromSent: time.Minute}},
		},
		{
			name:    "an old start, a TimeoutFunc and a longer deadline header: the age bounds it",
			cfg:     fasttimeout.Config{HonorDeadlineHeaders: true, HonorQueueHeaders: true},
			timeout: 8 * time.Minute, // 3 min left of it
			headers: []header{nginx(5 * time.Minute), literal(deadlineH, "10M")},
			want:    want{status: fasthttp.StatusOK, ran: true, deadline: deadline{fromStart: 8 * time.Minute, age: 5 * time.Minute}},
		},
		{
			name:    "an old start spends a TimeoutFunc's budget that the deadline header would leave",
			cfg:     fasttimeout.Config{HonorDeadlineHeaders: true, HonorQueueHeaders: true},
			timeout: 2 * time.Minute,
			headers: []header{nginx(5 * time.Minute), literal(deadlineH, "60S")},
			want:    spentAnswer(0, 0),
		},
		{
			// The trace id may be the caller's, begun long before.
			name:    "a time stamp's start counts, not an older ALB trace id's, which would spend the budget",
			cfg:     fasttimeout.Config{HonorQueueHeaders: true},
			timeout: 3 * time.Minute, // 2 min left of it
			headers: []header{nginx(time.Minute), alb(5 * time.Minute)},
			want:    want{status: fasthttp.StatusOK, ran: true, deadline: deadline{fromStart: 3 * time.Minute, age: time.Minute}},
		},
		{
			name:    "the margin spends a deadline header's budget that a long TimeoutFunc leaves",
			cfg:     fasttimeout.Config{HonorDeadlineHeaders: true, DeadlineMargin: time.Minute},
			timeout: 10 * time.Minute,
			headers: []header{literal(deadlineH, "60S")},
			want:    spentAnswer(0, 0),
		},
		{
			name:    "malformed deadline and queue headers are each counted, and the request runs",
			cfg:     fasttimeout.Config{HonorDeadlineHeaders: true, HonorQueueHeaders: true, MaxQueueAge: time.Minute},
			headers: []header{literal(deadlineH, "soon"), literal("X-Request-Start", "t=soon")},
			want: want{status: fasthttp.StatusOK, ran: true, deadline: deadline{fromSent: 10 * time.Minute},
				counts: fasttimeout.Counters{BadDeadlineHeaders: 1, BadQueueHeaders: 1}},
		},
		{
			name:    "MaxQueueAge with a start in the future: it counts as now and runs",
			cfg:     fasttimeout.Config{HonorQueueHeaders: true, MaxQueueAge: time.Minute},
			headers: []header{nginx(-10 * time.Minute)},
			want:    want{status: fasthttp.StatusOK, ran: true, deadline: deadline{fromSent: 10 * time.Minute}},
		},
		{
			name:    "MaxQueueAge with a start more than an hour ago: ignored, counted, and runs",
			cfg:     fasttimeout.Config{HonorQueueHeaders: true, MaxQueueAge: time.Minute},
			headers: []header{nginx(2 * time.Hour)},
			want: want{status: fasthttp.StatusOK, ran: true, deadline: deadline{fromSent: 10 * time.Minute},
				counts: fasttimeout.Counters{BadQueueHeaders: 1}},
		},
		{
			name:    "MaxQueueAge passed with budget left, and a malformed deadline header: a spent budget",
			cfg:     fasttimeout.Config{HonorDeadlineHeaders: true, HonorQueueHeaders: true, MaxQueueAge: time.Minute},
			headers: []header{nginx(2 * time.Minute), literal(deadlineH, "soon")},
			want:    spentAnswer(1, 0),
		},
		{
			name:    "Skip runs the handler unbounded, whatever the headers say",
			cfg:     fasttimeout.Config{HonorDeadlineHeaders: true, HonorQueueHeaders: true, MaxQueueAge: time.Minute},
			skip:    true,
			headers: []header{literal(deadlineH, "0S"), nginx(5 * time.Minute), literal("Request-Timeout", "soon")},
			want:    want{status: fasthttp.StatusOK, ran: true, deadline: deadline{unbounded: true}},
		},
		{
			name:  "Skip runs the handler beside MaxLateHandlers late ones",
			setup: lateFull,
			skip:  true,
			want:  want{status: fasthttp.StatusOK, ran: true, deadline: deadline{unbounded: true}},
		},
		{
			name:  "Skip runs the handler while the concurrency limit's slot is held",
			setup: slotHeld,
			skip:  true,
			want:  want{status: fasthttp.StatusOK, ran: true, deadline: deadline{unbounded: true}},
		},
		{
			// The docs do not order the two; admit sheds first, before
			// reading any header (so the malformed one is not counted).
			name:    "MaxLateHandlers reached and a spent budget: shed with 503",
			setup:   lateFull,
			cfg:     fasttimeout.Config{HonorDeadlineHeaders: true},
			headers: []header{literal(deadlineH, "0S"), literal("Request-Timeout", "soon")},
			want: want{status: fasthttp.StatusServiceUnavailable, reason: fasttimeout.RejectedLateHandlers,
				counts: fasttimeout.Counters{Shed: 1}},
		},
		{
			name:    "a spent budget is answered before the concurrency limit is asked",
			setup:   slotHeld,
			cfg:     fasttimeout.Config{HonorDeadlineHeaders: true},
			headers: []header{literal(deadlineH, "0S")},
			want:    spentAnswer(0, 0),
		},
		{
			name:    "an age past MaxQueueAge is answered before the concurrency limit is asked",
			setup:   slotHeld,
			cfg:     fasttimeout.Config{HonorQueueHeaders: true, MaxQueueAge: time.Minute},
			headers: []header{nginx(2 * time.Minute)},
			want:    spentAnswer(0, 0),
		},
		{
			name:    "a budget too short to wait for the held slot is refused at once",
			setup:   slotHeld,
			cfg:     fasttimeout.Config{HonorDeadlineHeaders: true},
			headers: []header{literal(deadlineH, "500u")}, // may wait 50 µs, under the least wait
			want: want{status: fasthttp.StatusServiceUnavailable, reason: fasttimeout.RejectedQueueFull,
				counts: fasttimeout.Counters{Rejected: 1, RejectedFull: 1}},
		},
		{
			name:    "an old start and a deadline header with the slot free: admitted with the earlier deadline",
			setup:   limited,
			cfg:     fasttimeout.Config{HonorDeadlineHeaders: true, HonorQueueHeaders: true, MaxQueueAge: 10 * time.Minute},
			headers: []header{nginx(5 * time.Minute), literal(deadlineH, "2M")},
			want: want{status: fasthttp.StatusOK, ran: true, deadline: deadline{fromSent: 2 * time.Minute},
				counts: fasttimeout.Counters{Admitted: 1}},
		},
	}
	for _, tc := range cases {
		for _, mode := range allModes {
			if tc.setup == lateFull && mode == fasttimeout.Cooperative {
				continue // a cooperative handler that never asked for its context is found late only when it returns
			}
			t.Run(tc.name+"/"+mode.String(), func(t *testing.T) {
				t.Parallel()
				stats := new(fasttimeout.Stats)
				release := make(chan struct{})
				var ran, onTimeout atomic.Int64
				type bound struct {
					at time.Time
					ok bool
				}
				handlerDeadline := make(chan bound, 1)
				timeoutCauses := make(chan error, 1)
				type marks struct {
					reason string
					spent  bool
				}
				around := make(chan marks, 1)

				cfg := tc.cfg
				cfg.Mode = mode
				cfg.Stats = stats
				if cfg.Timeout == 0 {
					cfg.Timeout = 10 * time.Minute
				}
				switch tc.setup {
				case lateFull:
					cfg.MaxLateHandlers = 1
				case limited, slotHeld:
					cfg.MaxConcurrency = 1
				}
				cfg.Skip = func(ctx *fasthttp.RequestCtx) bool { return tc.skip && string(ctx.Path()) == "/case" }
				cfg.TimeoutFunc = func(ctx *fasthttp.RequestCtx) time.Duration {
					switch string(ctx.Path()) {
					case "/stuck":
						return actInTime // runs, then times out and runs on, late
					case "/case":
						return tc.timeout
					}
					return 0
				}
				cfg.OnTimeout = func(ctx *fasthttp.RequestCtx, resp *fasthttp.Response) {
					if string(ctx.Path()) == "/case" {
						onTimeout.Add(1)
						timeoutCauses <- context.Cause(fasttimeout.Context(ctx))
					}
				}
				h := fasttimeout.New(func(ctx *fasthttp.RequestCtx) {
					switch string(ctx.Path()) {
					case "/stuck", "/block":
						<-release // ignores its context
					case "/case":
						ran.Add(1)
						at, ok := fasttimeout.Context(ctx).Deadline()
						handlerDeadline <- bound{at, ok}
						ctx.SetBodyString(okBody)
					}
				}, cfg)
				s := serve(t, func(ctx *fasthttp.RequestCtx) {
					path := string(ctx.Path()) // read now: after a racing timeout, ctx is the late handler's
					h(ctx)
					if path == "/case" {
						around <- marks{fasttimeout.RejectReason(ctx), fasttimeout.SpentBudget(ctx)}
					}
				})
				var held <-chan *fasthttp.Response
				t.Cleanup(func() { // before serve's shutdown, which waits for the handlers
					close(release)
					if held != nil {
						assert.Equal(t, fasthttp.StatusOK, receive(t, held, "the answer to /block").StatusCode())
					}
				})

				switch tc.setup {
				case lateFull:
					// Counted late before its answer; sent again should a
					// stall spend its second before the middleware saw it
					// (answered at once, its handler not run).
					for i := 0; stats.Snapshot().LateRunning == 0; i++ {
						require.Less(t, i, 100, "no /stuck ran")
						require.Equal(t, fasthttp.StatusGatewayTimeout, do(t, s, "GET", "/stuck").StatusCode())
					}
				case slotHeld:
					held = async(t, s, "/block")
					require.Eventually(t, func() bool { return stats.Snapshot().InFlight == 1 }, waitTimeout, time.Millisecond)
				}

				req, resp := fasthttp.AcquireRequest(), new(fasthttp.Response)
				defer fasthttp.ReleaseRequest(req)
				req.SetRequestURI("http://test/case")
				before := stats.Snapshot()
				sent := time.Now()
				for _, h := range tc.headers {
					req.Header.Add(h.name, h.value(sent))
				}
				require.NoError(t, s.client.DoTimeout(req, resp, waitTimeout))
				done := time.Now()
				after := stats.Snapshot()

				w := tc.want
				assert.Equal(t, w.status, resp.StatusCode())
				switch w.status {
				case fasthttp.StatusOK:
					assert.Equal(t, okBody, string(resp.Body()))
				case fasthttp.StatusGatewayTimeout:
					assert.Equal(t, fasttimeout.DefaultBody, string(resp.Body()))
				case fasthttp.StatusServiceUnavailable:
					assert.Equal(t, fasttimeout.ShedBody, string(resp.Body()))
					assert.Equal(t, "1", string(resp.Header.Peek(fasthttp.HeaderRetryAfter)))
				}

				got := receive(t, around, "the look of the middleware around New")
				assert.Equal(t, w.reason, got.reason, "RejectReason")
				assert.Equal(t, w.spent, got.spent, "SpentBudget")

				if w.ran {
					assert.Equal(t, int64(1), ran.Load(), "the handler ran once")
					b := receive(t, handlerDeadline, "the handler's deadline")
					d := w.deadline
					switch {
					case d.unbounded:
						assert.False(t, b.ok, "a skipped request has no deadline, got %v", b.at)
					case d.fromSent != 0:
						// The middleware saw the request between sent and done.
						require.True(t, b.ok)
						assert.False(t, b.at.Before(sent.Add(d.fromSent)), "deadline %v before %v after the request was sent", b.at.Sub(sent), d.fromSent)
						assert.False(t, b.at.After(done.Add(d.fromSent)), "deadline %v after %v after its answer", b.at.Sub(done), d.fromSent)
					default:
						// The header's start, in milliseconds, is at most 1 ms
						// before sent-age; the middleware reads the wall clock
						// (for the header) after its own, at most done-sent
						// later.
						require.True(t, b.ok)
						want := sent.Add(-d.age + d.fromStart)
						assert.False(t, b.at.After(want), "deadline %v after the start's", b.at.Sub(want))
						assert.False(t, b.at.Before(want.Add(-done.Sub(sent)-time.Millisecond)), "deadline %v before the start's", b.at.Sub(want))
					}
				} else {
					assert.Zero(t, ran.Load(), "the handler did not run")
				}

				assert.Equal(t, int64(btoi(w.onTimeout)), onTimeout.Load(), "OnTimeout calls")
				if w.onTimeout {
					assert.ErrorIs(t, receive(t, timeoutCauses, "OnTimeout's context cause"), fasttimeout.ErrTimeout)
				}

				moved := fasttimeout.Counters{
					Requests:             after.Requests - before.Requests,
					Timeouts:             after.Timeouts - before.Timeouts,
					SpentBudgets:         after.SpentBudgets - before.SpentBudgets,
					Shed:                 after.Shed - before.Shed,
					BadDeadlineHeaders:   after.BadDeadlineHeaders - before.BadDeadlineHeaders,
					BadQueueHeaders:      after.BadQueueHeaders - before.BadQueueHeaders,
					Admitted:             after.Admitted - before.Admitted,
					Queued:               after.Queued - before.Queued,
					Rejected:             after.Rejected - before.Rejected,
					RejectedFull:         after.RejectedFull - before.RejectedFull,
					RejectedQueueTimeout: after.RejectedQueueTimeout - before.RejectedQueueTimeout,
					Panics:               after.Panics - before.Panics,
					ClientGone:           after.ClientGone - before.ClientGone,
				}
				wantMoved := w.counts
				wantMoved.Requests = 1
				assert.Equal(t, wantMoved, moved, "counters moved by the request")
			})
		}
	}
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}
