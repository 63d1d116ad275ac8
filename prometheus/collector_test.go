package fasttimeoutprom_test

import (
	"fmt"
	"net"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/valyala/fasthttp"

	"github.com/fasttimeout/fasttimeout"
	fasttimeoutprom "github.com/fasttimeout/fasttimeout/prometheus"
)

// app serves /fast at once; /block and /block-then-panic wait until release
// is closed, ignoring their context, and the latter then panics; /hold does
// the same as /block once it has said so on entered; /wait waits for its
// context to end.
type app struct {
	release chan struct{}
	entered chan struct{} // /hold and /wait send on it when they start waiting
}

func (a *app) serve(ctx *fasthttp.RequestCtx) {
	switch string(ctx.Path()) {
	case "/block":
		<-a.release
	case "/hold":
		a.entered <- struct{}{}
		<-a.release
	case "/block-then-panic":
		<-a.release
		panic("late and broken")
	case "/wait":
		done := fasttimeout.Context(ctx).Done()
		a.entered <- struct{}{}
		<-done
	}
	ctx.SetBodyString("ok")
}

// bench is a middleware counting into a Stats, behind a real server, with a
// registry holding the Stats' collector.
type bench struct {
	addr     string
	stats    *fasttimeout.Stats
	registry *prometheus.Registry
	client   *fasthttp.Client
	app      *app
	returned chan time.Duration // OnLateReturn, after Stats counted the return, before InFlight
	panicked chan any           // OnPanic
}

func start(t *testing.T, cfg fasttimeout.Config) *bench {
	t.Helper()
	b := &bench{
		registry: prometheus.NewRegistry(),
		app:      &app{release: make(chan struct{}), entered: make(chan struct{}, 10)},
		returned: make(chan time.Duration, 10),
		panicked: make(chan any, 10),
	}
	cfg.Stats = new(fasttimeout.Stats)
	b.stats = cfg.Stats
	cfg.OnLateReturn = func(_ *fasthttp.RequestCtx, late time.Duration) { b.returned <- late }
	cfg.OnPanic = func(_ *fasthttp.RequestCtx, v any, _ []byte) { b.panicked <- v }
	b.registry.MustRegister(fasttimeoutprom.NewCollector(cfg.Stats, prometheus.Labels{"handler": "app"}))

	// Loopback TCP, not an in-memory listener: a client's hang-up is seen
	// only on a connection with a descriptor.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	b.addr = ln.Addr().String()
	server := &fasthttp.Server{Handler: fasttimeout.New(b.app.serve, cfg)}
	served := make(chan error, 1)
	go func() { served <- server.Serve(ln) }()
	b.client = &fasthttp.Client{
		Dial:                      func(string) (net.Conn, error) { return net.Dial("tcp", b.addr) },
		MaxIdemponentCallAttempts: 1,
	}
	t.Cleanup(func() {
		select {
		case <-b.app.release:
		default: // the test failed before it released its handlers
			close(b.app.release)
		}
		b.client.CloseIdleConnections()
		require.NoError(t, server.Shutdown())
		require.NoError(t, <-served)
	})
	return b
}

// get sends GET path with the header name-value pairs kv and returns the
// status.
func (b *bench) get(t *testing.T, path string, kv ...string) int {
	t.Helper()
	req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	req.SetRequestURI("http://app" + path)
	for i := 0; i+1 < len(kv); i += 2 {
		req.Header.Set(kv[i], kv[i+1])
	}
	require.NoError(t, b.client.DoTimeout(req, resp, 10*time.Second))
	return resp.StatusCode()
}

// getAsync sends GET path from a goroutine, and sends its status (0 if it
// failed) on the channel it returns.
func (b *bench) getAsync(path string) <-chan int {
	answered := make(chan int, 1)
	go func() {
		status, _, err := b.client.GetTimeout(nil, "http://app"+path, time.Minute)
		if err != nil {
			status = 0
		}
		answered <- status
	}()
	return answered
}

// hold sends GET /hold from a goroutine and waits until its handler runs,
// holding a slot under the concurrency limit until release is closed.
func (b *bench) hold(t *testing.T) <-chan int {
	t.Helper()
	answered := b.getAsync("/hold")
	select {
	case <-b.app.entered:
	case status := <-answered:
		t.Fatalf("GET /hold answered %d before its handler ran", status)
	case <-time.After(10 * time.Second):
		t.Fatal("the handler of /hold did not start within 10 s")
	}
	return answered
}

// waitFor waits for a request's answer and returns its status.
func waitFor(t *testing.T, answered <-chan int) int {
	t.Helper()
	select {
	case status := <-answered:
		return status
	case <-time.After(30 * time.Second):
		t.Fatal("no answer within 30 s")
		return 0
	}
}

// lateReturns releases the blocked handlers and waits until n of them have
// returned and been counted. OnLateReturn comes before a handler leaves
// InFlight, which falls last, so that is waited for too.
func (b *bench) lateReturns(t *testing.T, n int) {
	t.Helper()
	inFlight := b.stats.Snapshot().InFlight
	close(b.app.release)
	for range n {
		select {
		case <-b.returned:
		case <-time.After(10 * time.Second):
			t.Fatal("no late return within 10 s of the release")
		}
	}
	require.Eventually(t, func() bool { return b.stats.Snapshot().InFlight <= inFlight-int64(n) },
		10*time.Second, time.Millisecond, "the late handlers out of InFlight")
}

// scrape gathers the registry: every series' value (a histogram's count),
// keyed by its name and its labels other than handler, as in
// fasttimeout_rejected_total{reason="queue_full"}; and the histograms.
func (b *bench) scrape(t *testing.T) (map[string]float64, map[string]*dto.Histogram) {
	t.Helper()
	families, err := b.registry.Gather()
	require.NoError(t, err)
	values := map[string]float64{}
	histograms := map[string]*dto.Histogram{}
	for _, f := range families {
		for _, m := range f.GetMetric() {
			labels := m.GetLabel() // sorted by name
			require.Equal(t, "handler", labels[0].GetName())
			require.Equal(t, "app", labels[0].GetValue())
			name := f.GetName()
			for _, l := range labels[1:] {
				name += fmt.Sprintf("{%s=%q}", l.GetName(), l.GetValue())
			}
			_, seen := values[name]
			require.False(t, seen, "two series %s", name)
			switch f.GetType() {
			case dto.MetricType_COUNTER:
				values[name] = m.GetCounter().GetValue()
			case dto.MetricType_GAUGE:
				values[name] = m.GetGauge().GetValue()
			case dto.MetricType_HISTOGRAM:
				values[name] = float64(m.GetHistogram().GetSampleCount())
				histograms[name] = m.GetHistogram()
			default:
				t.Fatalf("%s: unexpected type %v", name, f.GetType())
			}
		}
	}
	return values, histograms
}

// rejected is the series of fasttimeout_rejected_total for reason.
func rejected(reason string) string {
	return fmt.Sprintf("fasttimeout_rejected_total{reason=%q}", reason)
}

// metrics is every metric at zero, with the given ones set.
func metrics(set map[string]float64) map[string]float64 {
	all := map[string]float64{
		"fasttimeout_requests_total":               0,
		"fasttimeout_in_flight_handlers":           0,
		"fasttimeout_timeouts_total":               0,
		"fasttimeout_late_running_handlers":        0,
		"fasttimeout_late_finished_handlers_total": 0,
		"fasttimeout_panics_total":                 0,
		"fasttimeout_shed_requests_total":          0,
		"fasttimeout_bad_deadline_headers_total":   0,
		"fasttimeout_spent_budgets_total":          0,
		"fasttimeout_client_gone_total":            0,
		"fasttimeout_unwatched_clients_total":      0,
		"fasttimeout_answer_lateness_seconds":      0,
		"fasttimeout_late_run_seconds":             0,

		"fasttimeout_admitted_total":               0,
		"fasttimeout_queued_total":                 0,
		"fasttimeout_left_waiting_total":           0,
		rejected(fasttimeout.RejectedQueueFull):    0,
		rejected(fasttimeout.RejectedQueueTimeout): 0,
		rejected(fasttimeout.RejectedLateHandlers): 0,
		"fasttimeout_concurrency_limit":            0,
		"fasttimeout_waiting":                      0,
		"fasttimeout_bad_queue_headers_total":      0,
		"fasttimeout_queue_wait_seconds":           0,
	}
	for name, v := range set {
		if _, ok := all[name]; !ok {
			panic("no metric " + name)
		}
		all[name] = v
	}
	return all
}

// holdLonger gives /hold a minute, so that it holds its slot, in time,
// until the test releases it, whatever the test's timeout.
func holdLonger(ctx *fasthttp.RequestCtx) time.Duration {
	if string(ctx.Path()) == "/hold" {
		return time.Minute
	}
	return 0
}

// fastInTime gives /fast a minute under the tests' timeout: it must be
// answered by its handler, whatever a loaded machine does to the requests
// meant to time out.
func fastInTime(ctx *fasthttp.RequestCtx) time.Duration {
	if string(ctx.Path()) == "/fast" {
		return time.Minute
	}
	return 0
}

func TestCollector(t *testing.T) {
	t.Parallel()
	// The handlers of /block and /wait must run, to be counted late: a
	// second, which a stall before the middleware runs cannot spend on
	// arrival.
	const timeout = time.Second
	tests := []struct {
		name string
		cfg  fasttimeout.Config
		// run sends requests and returns the metrics expected after them.
		run func(t *testing.T, b *bench) map[string]float64
	}{{
		name: "requests_in_time_are_counted_and_nothing_else",
		run: func(t *testing.T, b *bench) map[string]float64 {
			for range 3 {
				require.Equal(t, fasthttp.StatusOK, b.get(t, "/fast"))
			}
			return metrics(map[string]float64{"fasttimeout_requests_total": 3})
		},
	}, {
		name: "a_timeout_counts_while_its_handler_runs_late",
		run: func(t *testing.T, b *bench) map[string]float64 {
			require.Equal(t, fasthttp.StatusGatewayTimeout, b.get(t, "/block"))
			want := metrics(map[string]float64{
				"fasttimeout_requests_total":          1,
				"fasttimeout_in_flight_handlers":      1,
				"fasttimeout_timeouts_total":          1,
				"fasttimeout_late_running_handlers":   1,
				"fasttimeout_answer_lateness_seconds": 1,
			})
			got, _ := b.scrape(t)
			require.Equal(t, want, got, "before the late handler returns")
			b.lateReturns(t, 1) // the cleanup's Shutdown would wait for it
			return nil
		},
	}, {
		name: "a_late_return_moves_the_handler_from_running_to_finished",
		run: func(t *testing.T, b *bench) map[string]float64 {
			require.Equal(t, fasthttp.StatusGatewayTimeout, b.get(t, "/block"))
			b.lateReturns(t, 1)
			return metrics(map[string]float64{
				"fasttimeout_requests_total":               1,
				"fasttimeout_timeouts_total":               1,
				"fasttimeout_late_finished_handlers_total": 1,
				"fasttimeout_answer_lateness_seconds":      1,
				"fasttimeout_late_run_seconds":             1,
			})
		},
	}, {
		name: "a_panic_after_the_deadline_is_counted",
		run: func(t *testing.T, b *bench) map[string]float64 {
			require.Equal(t, fasthttp.StatusGatewayTimeout, b.get(t, "/block-then-panic"))
			b.lateReturns(t, 1)
			require.Equal(t, "late and broken", <-b.panicked)
			return metrics(map[string]float64{
				"fasttimeout_requests_total":               1,
				"fasttimeout_timeouts_total":               1,
				"fasttimeout_late_finished_handlers_total": 1,
				"fasttimeout_panics_total":                 1,
				"fasttimeout_answer_lateness_seconds":      1,
				"fasttimeout_late_run_seconds":             1,
			})
		},
	}, {
		name: "requests_shed_while_late_handlers_are_at_the_cap",
		cfg:  fasttimeout.Config{MaxLateHandlers: 1},
		run: func(t *testing.T, b *bench) map[string]float64 {
			require.Equal(t, fasthttp.StatusGatewayTimeout, b.get(t, "/block"))
			require.Equal(t, fasthttp.StatusServiceUnavailable, b.get(t, "/fast"))
			require.Equal(t, fasthttp.StatusServiceUnavailable, b.get(t, "/fast"))
			got, _ := b.scrape(t)
			require.Equal(t, 2.0, got["fasttimeout_shed_requests_total"])
			require.Equal(t, 2.0, got[rejected(fasttimeout.RejectedLateHandlers)])
			require.Equal(t, 1.0, got["fasttimeout_late_running_handlers"])
			b.lateReturns(t, 1)
			require.Equal(t, fasthttp.StatusOK, b.get(t, "/fast"))
			return metrics(map[string]float64{
				"fasttimeout_requests_total":               4,
				"fasttimeout_timeouts_total":               1,
				"fasttimeout_shed_requests_total":          2,
				rejected(fasttimeout.RejectedLateHandlers): 2,
				"fasttimeout_late_finished_handlers_total": 1,
				"fasttimeout_answer_lateness_seconds":      1,
				"fasttimeout_late_run_seconds":             1,
			})
		},
	}, {
		name: "a_request_beyond_the_limit_waits_then_is_admitted",
		cfg:  fasttimeout.Config{MaxConcurrency: 1, Timeout: 5 * time.Minute},
		run: func(t *testing.T, b *bench) map[string]float64 {
			held := b.hold(t)
			waiter := b.getAsync("/fast")
			require.Eventually(t, func() bool { return b.stats.Snapshot().Waiting == 1 }, 10*time.Second, time.Millisecond)
			got, _ := b.scrape(t)
			require.Equal(t, metrics(map[string]float64{
				"fasttimeout_requests_total":     2,
				"fasttimeout_in_flight_handlers": 1,
				"fasttimeout_admitted_total":     1,
				"fasttimeout_queued_total":       1,
				"fasttimeout_concurrency_limit":  1,
				"fasttimeout_waiting":            1,
			}), got, "while /fast waits")
			close(b.app.release)
			require.Equal(t, fasthttp.StatusOK, waitFor(t, held))
			require.Equal(t, fasthttp.StatusOK, waitFor(t, waiter))
			return metrics(map[string]float64{
				"fasttimeout_requests_total":     2,
				"fasttimeout_admitted_total":     2,
				"fasttimeout_queued_total":       1,
				"fasttimeout_concurrency_limit":  1,
				"fasttimeout_queue_wait_seconds": 1,
			})
		},
	}, {
		name: "a_request_that_waits_its_share_of_its_budget_is_refused",
		// /fast waits for a tenth of its second.
		cfg: fasttimeout.Config{MaxConcurrency: 1, TimeoutFunc: holdLonger, Timeout: time.Second},
		run: func(t *testing.T, b *bench) map[string]float64 {
			held := b.hold(t)
			require.Equal(t, fasthttp.StatusServiceUnavailable, b.get(t, "/fast"))
			close(b.app.release)
			require.Equal(t, fasthttp.StatusOK, waitFor(t, held))
			return metrics(map[string]float64{
				"fasttimeout_requests_total":               2,
				"fasttimeout_admitted_total":               1,
				"fasttimeout_queued_total":                 1,
				rejected(fasttimeout.RejectedQueueTimeout): 1,
				"fasttimeout_concurrency_limit":            1,
				"fasttimeout_queue_wait_seconds":           1,
			})
		},
	}, {
		name: "a_request_beyond_a_full_queue_is_refused",
		// Long enough that no waiter reaches its share of its budget.
		cfg: fasttimeout.Config{MaxConcurrency: 1, Timeout: 5 * time.Minute},
		run: func(t *testing.T, b *bench) map[string]float64 {
			held := b.hold(t)
			// Requests join the queue one at a time until one is refused:
			// the newcomer, or the oldest waiter once the queue serves the
			// newest first.
			var waiters []<-chan int
			for b.stats.Snapshot().Rejected == 0 {
				require.Less(t, len(waiters), 10000, "the queue never fills")
				waiters = append(waiters, b.getAsync("/fast"))
				n := int64(len(waiters))
				require.Eventually(t, func() bool {
					c := b.stats.Snapshot()
					return c.Waiting == n || c.Rejected > 0
				}, 10*time.Second, time.Millisecond)
			}
			got, _ := b.scrape(t)
			require.Equal(t, 1.0, got[rejected(fasttimeout.RejectedQueueFull)])
			require.Equal(t, float64(len(waiters)-1), got["fasttimeout_waiting"])
			close(b.app.release)
			require.Equal(t, fasthttp.StatusOK, waitFor(t, held))
			statuses := map[int]int{}
			for _, answered := range waiters {
				statuses[waitFor(t, answered)]++
			}
			require.Equal(t, map[int]int{fasthttp.StatusOK: len(waiters) - 1, fasthttp.StatusServiceUnavailable: 1}, statuses)
			// An evicted waiter was queued, and its wait observed; a
			// newcomer refused at once was neither.
			queued := b.stats.Snapshot().Queued
			require.Contains(t, []int64{int64(len(waiters) - 1), int64(len(waiters))}, queued)
			return metrics(map[string]float64{
				"fasttimeout_requests_total":            float64(1 + len(waiters)),
				"fasttimeout_admitted_total":            float64(len(waiters)),
				"fasttimeout_queued_total":              float64(queued),
				rejected(fasttimeout.RejectedQueueFull): 1,
				"fasttimeout_concurrency_limit":         1,
				"fasttimeout_queue_wait_seconds":        float64(queued),
			})
		},
	}, {
		name: "spent_budgets_and_bad_deadline_headers",
		cfg:  fasttimeout.Config{HonorDeadlineHeaders: true},
		run: func(t *testing.T, b *bench) map[string]float64 {
			require.Equal(t, fasthttp.StatusGatewayTimeout, b.get(t, "/fast", "grpc-timeout", "0S"))
			require.Equal(t, fasthttp.StatusOK, b.get(t, "/fast", "grpc-timeout", "nonsense"))
			return metrics(map[string]float64{
				"fasttimeout_requests_total":             2,
				"fasttimeout_timeouts_total":             1,
				"fasttimeout_spent_budgets_total":        1,
				"fasttimeout_bad_deadline_headers_total": 1,
			})
		},
	}, {
		name: "cooperative_mode_counts_a_late_return_as_a_timeout",
		cfg:  fasttimeout.Config{Mode: fasttimeout.Cooperative},
		run: func(t *testing.T, b *bench) map[string]float64 {
			require.Equal(t, fasthttp.StatusGatewayTimeout, b.get(t, "/wait"))
			return metrics(map[string]float64{
				"fasttimeout_requests_total":               1,
				"fasttimeout_timeouts_total":               1,
				"fasttimeout_late_finished_handlers_total": 1,
				"fasttimeout_answer_lateness_seconds":      1,
				"fasttimeout_late_run_seconds":             1,
			})
		},
	}, {
		name: "a_client_hang_up_is_counted_and_is_not_a_timeout",
		cfg:  fasttimeout.Config{Timeout: time.Minute},
		run: func(t *testing.T, b *bench) map[string]float64 {
			if runtime.GOOS != "linux" {
				t.Skip("hang-ups are watched on Linux only")
			}
			conn, err := net.Dial("tcp", b.addr)
			require.NoError(t, err)
			_, err = conn.Write([]byte("GET /wait HTTP/1.1\r\nHost: app\r\n\r\n"))
			require.NoError(t, err)
			<-b.app.entered
			require.NoError(t, conn.Close())
			select {
			case <-b.returned: // the handler honoured its cancelled context
			case <-time.After(10 * time.Second):
				t.Fatal("the handler did not return within 10 s of the hang-up")
			}
			// OnLateReturn comes before the handler leaves InFlight.
			require.Eventually(t, func() bool { return b.stats.Snapshot().InFlight == 0 }, 10*time.Second, time.Millisecond)
			return metrics(map[string]float64{
				"fasttimeout_requests_total":               1,
				"fasttimeout_client_gone_total":            1,
				"fasttimeout_late_finished_handlers_total": 1,
				"fasttimeout_late_run_seconds":             1,
			})
		},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			cfg := tt.cfg
			if cfg.Timeout == 0 {
				cfg.Timeout = timeout
				cfg.TimeoutFunc = fastInTime
			}
			b := start(t, cfg)
			want := tt.run(t, b)
			if want == nil {
				return
			}
			got, _ := b.scrape(t)
			require.Equal(t, want, got)
		})
	}
}

func TestCollectorHistograms(t *testing.T) {
	t.Parallel()
	b := start(t, fasttimeout.Config{Timeout: time.Second}) // /block must run, its budget not spent on arrival
	require.Equal(t, fasthttp.StatusGatewayTimeout, b.get(t, "/block"))
	b.lateReturns(t, 1)

	_, histograms := b.scrape(t)
	for _, name := range []string{"fasttimeout_answer_lateness_seconds", "fasttimeout_late_run_seconds"} {
		h := histograms[name]
		require.NotNil(t, h, name)
		buckets := h.GetBucket()
		require.Len(t, buckets, 21, name)
		assert.Equal(t, 0.0001, buckets[0].GetUpperBound(), name)
		assert.Equal(t, 0.001, buckets[3].GetUpperBound(), name)
		assert.Equal(t, 1.0, buckets[12].GetUpperBound(), name)
		assert.Equal(t, 600.0, buckets[20].GetUpperBound(), name)
		assert.Equal(t, uint64(1), h.GetSampleCount(), name)
		assert.Equal(t, uint64(1), buckets[20].GetCumulativeCount(), name)
		for i := 1; i < len(buckets); i++ {
			assert.LessOrEqual(t, buckets[i-1].GetCumulativeCount(), buckets[i].GetCumulativeCount(), "%s: cumulative", name)
		}
		assert.Less(t, h.GetSampleSum(), 600.0, name)
	}
	// The late handler ran from the deadline until the test released it,
	// which was after the timeout response had been received.
	lateness, lateRun := histograms["fasttimeout_answer_lateness_seconds"], histograms["fasttimeout_late_run_seconds"]
	assert.GreaterOrEqual(t, lateRun.GetSampleSum(), lateness.GetSampleSum())
	assert.Greater(t, lateRun.GetSampleSum(), 0.0)
}

func TestCollectorFollowsPrometheusConventions(t *testing.T) {
	t.Parallel()
	registry := prometheus.NewRegistry()
	registry.MustRegister(fasttimeoutprom.NewCollector(new(fasttimeout.Stats), nil))
	problems, err := testutil.GatherAndLint(registry)
	require.NoError(t, err)
	require.Empty(t, problems)

	// 20 series of their own and the 3 reasons of fasttimeout_rejected_total.
	count, err := testutil.GatherAndCount(registry)
	require.NoError(t, err)
	require.Equal(t, 23, count)

	families, err := registry.Gather()
	require.NoError(t, err)
	for _, f := range families {
		require.True(t, strings.HasPrefix(f.GetName(), "fasttimeout_"), f.GetName())
		require.NotEmpty(t, f.GetHelp(), f.GetName())
	}
}

// Each help text says what the Stats godoc says is counted, in short: who
// is left out (Skip), what a bad queue header is (a value malformed or more
// than an hour from now, any line, once per request, read only with
// HonorQueueHeaders), whose runtime.Goexit counts as a panic, and what the
// answer lateness leaves out.
func TestCollectorHelpSaysWhatIsCounted(t *testing.T) {
	t.Parallel()
	registry := prometheus.NewRegistry()
	registry.MustRegister(fasttimeoutprom.NewCollector(new(fasttimeout.Stats), nil))
	families, err := registry.Gather()
	require.NoError(t, err)
	help := map[string]string{}
	for _, f := range families {
		help[f.GetName()] = f.GetHelp()
	}
	for _, tc := range []struct {
		metric string
		says   []string
	}{
		{"fasttimeout_requests_total", []string{"Skip", "included"}},
		{"fasttimeout_in_flight_handlers", []string{"late ones included", "Skip", "not"}},
		{"fasttimeout_panics_total", []string{"runtime.Goexit calls of handlers", "and of Skip and TimeoutFunc"}},
		{"fasttimeout_bad_queue_headers_total", []string{"HonorQueueHeaders", "X-Request-Start, X-Queue-Start or X-Amzn-Trace-Id",
			"malformed or more than an hour away from now", "once per request"}},
		{"fasttimeout_answer_lateness_seconds", []string{"spent budgets not included"}},
		{"fasttimeout_left_waiting_total", []string{"hung up while they waited for a slot", "without running", "also in fasttimeout_client_gone_total"}},
		{"fasttimeout_admitted_total", []string{"handler ran", "not those answered without running"}},
	} {
		for _, s := range tc.says {
			assert.Contains(t, help[tc.metric], s, tc.metric)
		}
	}
}

func TestCollectorSeveralStatsInOneRegistry(t *testing.T) {
	t.Parallel()
	api, admin := new(fasttimeout.Stats), new(fasttimeout.Stats)
	registry := prometheus.NewRegistry()
	registry.MustRegister(
		fasttimeoutprom.NewCollector(api, prometheus.Labels{"handler": "api"}),
		fasttimeoutprom.NewCollector(admin, prometheus.Labels{"handler": "admin"}),
	)
	// A second collector with labels already taken is refused.
	require.Error(t, registry.Register(fasttimeoutprom.NewCollector(api, prometheus.Labels{"handler": "api"})))
	count, err := testutil.GatherAndCount(registry, "fasttimeout_timeouts_total")
	require.NoError(t, err)
	require.Equal(t, 2, count)
}

func TestNewCollectorPanicsOnNilStats(t *testing.T) {
	t.Parallel()
	require.PanicsWithValue(t, "fasttimeoutprom: NewCollector needs a *fasttimeout.Stats, got nil", func() {
		fasttimeoutprom.NewCollector(nil, nil)
	})
}

// A constant label named like a label of the metrics themselves would
// repeat it on their lines; Register refuses it rather than let a scrape
// fail to parse. "le" is the one client_golang does not check for const
// histograms: it registered, and the exposition read
// fasttimeout_answer_lateness_seconds_bucket{le="x",le="0.0001"}.
func TestNewCollectorRefusesConstLabelsTheMetricsUse(t *testing.T) {
	t.Parallel()
	for _, name := range []string{"le", "reason"} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			registry := prometheus.NewRegistry()
			err := registry.Register(fasttimeoutprom.NewCollector(new(fasttimeout.Stats), prometheus.Labels{name: "x"}))
			require.Error(t, err, "registered with a constant label %q", name)
		})
	}
}
