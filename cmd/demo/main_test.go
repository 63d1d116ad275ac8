package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log"
	"net"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/stretchr/testify/require"
	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/fasthttputil"

	"github.com/fasttimeout/fasttimeout"
)

// demo is a demo server on an in-memory listener.
type demo struct {
	client   *fasthttp.Client
	stats    *fasttimeout.Stats
	log      *syncBuffer
	shutdown func() error // Server.Shutdown, once
}

// startDemo serves newHandler with timeout and the other options at their
// defaults (racing mode, adaptive admission) until the test ends.
func startDemo(t *testing.T, timeout time.Duration) *demo {
	t.Helper()
	return startDemoWith(t, new(fasttimeout.Stats), defaultOptions(timeout))
}

// defaultOptions are the demo's options when run without flags, with
// timeout.
func defaultOptions(timeout time.Duration) options {
	return options{addr: ":8080", timeout: timeout, mode: fasttimeout.Racing, adaptive: true}
}

func startDemoWith(t *testing.T, stats *fasttimeout.Stats, opts options) *demo {
	t.Helper()
	logs := new(syncBuffer)
	logger := log.New(logs, "", 0)
	ln := fasthttputil.NewInmemoryListener()
	handler, _ := newHandler(stats, opts, logger)
	server := newServer(handler, logger)
	served := make(chan error, 1)
	go func() { served <- server.Serve(ln) }()
	shutdown := sync.OnceValue(func() error {
		if err := server.Shutdown(); err != nil {
			return err
		}
		return <-served
	})
	t.Cleanup(func() { require.NoError(t, shutdown()) })
	client := &fasthttp.Client{Dial: func(string) (net.Conn, error) { return ln.Dial() }}
	return &demo{client: client, stats: stats, log: logs, shutdown: shutdown}
}

// get requests path and returns the status, content type and body.
func (d *demo) get(t *testing.T, path string) (status int, contentType, body string) {
	t.Helper()
	req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	req.SetRequestURI("http://demo" + path)
	require.NoError(t, d.client.DoTimeout(req, resp, 5*time.Second))
	return resp.StatusCode(), string(resp.Header.ContentType()), string(resp.Body())
}

// requireBadRequest requests path and checks the answer: 400, with a JSON
// body whose detail contains want.
func (d *demo) requireBadRequest(t *testing.T, path, want string) {
	t.Helper()
	status, contentType, body := d.get(t, path)
	require.Equal(t, fasthttp.StatusBadRequest, status, path)
	require.Equal(t, "application/json", contentType, path)
	var answer struct{ Detail string }
	require.NoError(t, json.Unmarshal([]byte(body), &answer), path)
	require.Contains(t, answer.Detail, want, path)
}

// eventuallyBound is how long eventually waits: it only turns a hang into a
// failure with a message, and is shorter than a minute, which tests use as
// the run time of a handler that ignores its context.
const eventuallyBound = 30 * time.Second

// eventually polls cond until it holds or eventuallyBound passes.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	require.Eventually(t, cond, eventuallyBound, 5*time.Millisecond, what)
}

// listeningOn finds the address in run's start line.
var listeningOn = regexp.MustCompile(`listening on (\S+),`)

// startRun runs the demo on a free port of 127.0.0.1 until stop, which
// requires it to return 0 within eventuallyBound. It returns the demo's
// address and its stderr.
func startRun(t *testing.T) (addr string, stderr *syncBuffer, stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	stderr = new(syncBuffer)
	code := make(chan int, 1)
	go func() { code <- run(ctx, []string{"-addr", "127.0.0.1:0"}, stderr) }()
	eventually(t, "the start line", func() bool {
		m := listeningOn.FindStringSubmatch(stderr.String())
		if m != nil {
			addr = m[1]
		}
		return m != nil
	})
	return addr, stderr, func() {
		t.Helper()
		cancel()
		select {
		case c := <-code:
			require.Equal(t, 0, c, stderr.String())
		case <-time.After(eventuallyBound):
			t.Fatalf("run did not return after its context ended: %s", stderr.String())
		}
	}
}

// syncBuffer is a bytes.Buffer safe for a logger and a test to share.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func TestRoutes(t *testing.T) {
	t.Parallel()

	t.Run("root_answers_the_greeting", func(t *testing.T) {
		t.Parallel()
		status, contentType, body := startDemo(t, time.Second).get(t, "/")
		require.Equal(t, fasthttp.StatusOK, status)
		require.Equal(t, "application/json", contentType)
		require.JSONEq(t, `{"message":"Hello, World!"}`, body)
	})

	t.Run("async_sleep_0_answers_200", func(t *testing.T) {
		t.Parallel()
		status, contentType, body := startDemo(t, time.Second).get(t, "/async_sleep/0")
		require.Equal(t, fasthttp.StatusOK, status)
		require.Equal(t, "application/json", contentType)
		require.JSONEq(t, `{"slept_seconds":0}`, body)
	})

	t.Run("sleep_with_decimals_answers_200", func(t *testing.T) {
		t.Parallel()
		status, _, body := startDemo(t, time.Second).get(t, "/sleep/0.01")
		require.Equal(t, fasthttp.StatusOK, status)
		require.JSONEq(t, `{"slept_seconds":0.01}`, body)
	})

	t.Run("unknown_path_answers_404_json", func(t *testing.T) {
		t.Parallel()
		for _, path := range []string{"/nope", "/sleep", "/async_sleep"} {
			status, contentType, body := startDemo(t, time.Second).get(t, path)
			require.Equal(t, fasthttp.StatusNotFound, status, path)
			require.Equal(t, "application/json", contentType, path)
			require.JSONEq(t, `{"detail":"not found"}`, body, path)
		}
	})

	t.Run("bad_n_answers_400_json", func(t *testing.T) {
		t.Parallel()
		d := startDemo(t, time.Second)
		for _, path := range []string{
			"/sleep/abc", "/sleep/-1", "/sleep/1e9", "/sleep/", "/sleep/NaN", "/sleep/Inf", "/sleep/1/2",
			"/async_sleep/abc", "/async_sleep/-0.5", "/async_sleep/3601",
			// Go's literal forms, which strconv.ParseFloat reads: "1_0" is
			// 10, "0x1p-2" a quarter.
			"/async_sleep/1_0", "/sleep/0x1p-2", "/sleep/0X1P-2",
		} {
			d.requireBadRequest(t, path, "n must be a number of seconds from 0 to 3600")
		}
	})

	t.Run("other_methods_answer_405", func(t *testing.T) {
		t.Parallel()
		d := startDemo(t, time.Second)
		req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
		defer fasthttp.ReleaseRequest(req)
		defer fasthttp.ReleaseResponse(resp)
		req.SetRequestURI("http://demo/")
		req.Header.SetMethod(fasthttp.MethodPost)
		require.NoError(t, d.client.DoTimeout(req, resp, 5*time.Second))
		require.Equal(t, fasthttp.StatusMethodNotAllowed, resp.StatusCode())
		require.Equal(t, "GET, HEAD", string(resp.Header.Peek(fasthttp.HeaderAllow)))
	})
}

func TestTimeouts(t *testing.T) {
	t.Parallel()

	t.Run("async_sleep_past_the_timeout_answers_504_and_is_cancelled", func(t *testing.T) {
		t.Parallel()
		d := startDemo(t, 100*time.Millisecond)
		status, contentType, body := d.get(t, "/async_sleep/60")
		require.Equal(t, fasthttp.StatusGatewayTimeout, status)
		require.Equal(t, fasttimeout.DefaultContentType, contentType)
		require.Equal(t, fasttimeout.DefaultBody, body)
		// A handler that ignored its context would run a minute, longer
		// than eventually waits: returning shows it was cancelled.
		eventually(t, "the cancelled handler returns", func() bool {
			c := d.stats.Snapshot()
			return c.LateFinished == 1 && c.LateRunning == 0
		})
		c := d.stats.Snapshot()
		require.Equal(t, int64(1), c.Requests)
		require.Equal(t, int64(1), c.Timeouts)
	})

	t.Run("sleep_past_the_timeout_answers_504_and_logs_the_late_return", func(t *testing.T) {
		t.Parallel()
		d := startDemo(t, 50*time.Millisecond)
		// Two seconds of sleep: the handler still runs when the checks
		// below look, even if the machine stalls between them.
		status, _, body := d.get(t, "/sleep/2")
		require.Equal(t, fasthttp.StatusGatewayTimeout, status)
		require.Equal(t, fasttimeout.DefaultBody, body)
		require.Equal(t, int64(1), d.stats.Snapshot().LateRunning, "answered while the sleeping handler still runs")
		require.NotContains(t, d.log.String(), "late handlers")

		eventually(t, "the late-return log line", func() bool {
			return strings.Contains(d.log.String(), "late handlers")
		})
		line := d.log.String()
		require.Regexp(t, `^late handlers: 1 returned late \(after their deadline or client's hang-up\) in the last 1s, the worst \d+(\.\d+)?m?s late \(GET /sleep/2\); 0 stopped within 2ms of it \(honoured their context\), 1 ran on \(ignored it\)\n$`, line)
		c := d.stats.Snapshot()
		require.Equal(t, int64(0), c.LateRunning)
		require.Equal(t, int64(1), c.LateFinished)
	})

	t.Run("async_sleep_answers_503_when_the_server_shuts_down", func(t *testing.T) {
		t.Parallel()
		d := startDemo(t, 10*time.Second)
		type answer struct {
			status int
			body   string
		}
		answered := make(chan answer, 1)
		go func() {
			status, body, err := d.client.GetTimeout(nil, "http://demo/async_sleep/10", 5*time.Second)
			if err != nil {
				body = []byte(err.Error())
			}
			answered <- answer{status, string(body)}
		}()
		eventually(t, "the request is in flight", func() bool { return d.stats.Snapshot().Requests == 1 })
		require.NoError(t, d.shutdown())
		got := <-answered
		require.Equal(t, fasthttp.StatusServiceUnavailable, got.status, got.body)
		require.JSONEq(t, `{"detail":"server shutting down"}`, got.body)
	})

	t.Run("keep_alive_connection_serves_the_next_request", func(t *testing.T) {
		t.Parallel()
		// A second: time enough for / to be answered by its handler on a
		// loaded machine.
		d := startDemo(t, time.Second)
		status, _, _ := d.get(t, "/sleep/1.2")
		require.Equal(t, fasthttp.StatusGatewayTimeout, status)
		status, _, body := d.get(t, "/")
		require.Equal(t, fasthttp.StatusOK, status)
		require.JSONEq(t, `{"message":"Hello, World!"}`, body)
	})
}

func TestDebugVars(t *testing.T) {
	t.Parallel()
	d := startDemoWith(t, publishedStats(), defaultOptions(50*time.Millisecond))
	before := d.stats.Snapshot() // -count=N runs share the published Stats
	// Two seconds: the handler still runs when /debug/vars is read, even on
	// a machine that stalls between the two requests.
	status, _, _ := d.get(t, "/sleep/2")
	require.Equal(t, fasthttp.StatusGatewayTimeout, status)

	status, contentType, body := d.get(t, "/debug/vars")
	require.Equal(t, fasthttp.StatusOK, status)
	require.Contains(t, contentType, "application/json")
	var vars struct {
		Fasttimeout *fasttimeout.Counters `json:"fasttimeout"`
	}
	require.NoError(t, json.Unmarshal([]byte(body), &vars))
	require.NotNil(t, vars.Fasttimeout, body)
	want := before
	want.Requests++
	want.Timeouts++
	want.LateRunning++
	want.InFlight++
	want.Admitted++ // by the adaptive limit, on by default
	// The limits of the middlewares sharing the published Stats: this
	// demo's, and those of other tests' demos until the garbage collector
	// finds them gone, at any time.
	require.Positive(t, vars.Fasttimeout.ConcurrencyLimit, "this demo's limit")
	want.ConcurrencyLimit = vars.Fasttimeout.ConcurrencyLimit
	require.Equal(t, want, *vars.Fasttimeout,
		"/debug/vars is not counted, and the sleeping handler still runs")
	for _, name := range []string{"requests", "timeouts", "late_running", "late_finished", "panics", "shed", "bad_deadline_headers"} {
		require.Contains(t, body, `"`+name+`"`)
	}
	eventually(t, "the late handler returns", func() bool {
		return d.stats.Snapshot().LateFinished == before.LateFinished+1
	})
}

func TestMetrics(t *testing.T) {
	t.Parallel()
	d := startDemo(t, 50*time.Millisecond)
	// Two seconds: the handler still runs when /metrics is read, even on a
	// machine that stalls between the two requests.
	status, _, _ := d.get(t, "/sleep/2")
	require.Equal(t, fasthttp.StatusGatewayTimeout, status)

	status, contentType, body := d.get(t, "/metrics")
	require.Equal(t, fasthttp.StatusOK, status)
	require.Contains(t, contentType, "text/plain")
	parser := expfmt.NewTextParser(model.LegacyValidation)
	families, err := parser.TextToMetricFamilies(strings.NewReader(body))
	require.NoError(t, err, body)
	value := func(name string) float64 {
		t.Helper()
		f := families[name]
		require.NotNil(t, f, "no %s in /metrics", name)
		require.Len(t, f.GetMetric(), 1, name)
		m := f.GetMetric()[0]
		switch {
		case m.Counter != nil:
			return m.GetCounter().GetValue()
		case m.Gauge != nil:
			return m.GetGauge().GetValue()
		default:
			return float64(m.GetHistogram().GetSampleCount())
		}
	}
	require.Equal(t, 1.0, value("fasttimeout_requests_total"), "/metrics itself is not counted")
	require.Equal(t, 1.0, value("fasttimeout_timeouts_total"))
	require.Equal(t, 1.0, value("fasttimeout_answer_lateness_seconds"))
	require.Equal(t, 1.0, value("fasttimeout_late_running_handlers"), "the sleeping handler still runs")
	require.Contains(t, families, "go_goroutines")

	// A late return is counted in LateFinished before its LateRun
	// observation; it leaves InFlight last (see Stats.Snapshot).
	eventually(t, "the late handler returns", func() bool {
		c := d.stats.Snapshot()
		return c.LateFinished == 1 && c.InFlight == 0
	})
	_, _, body = d.get(t, "/metrics")
	families, err = parser.TextToMetricFamilies(strings.NewReader(body))
	require.NoError(t, err, body)
	require.Equal(t, 0.0, value("fasttimeout_late_running_handlers"))
	require.Equal(t, 1.0, value("fasttimeout_late_finished_handlers_total"))
	require.Equal(t, 1.0, value("fasttimeout_late_run_seconds"))
}

// TestRun sets REQUEST_TIMEOUT, so it cannot run in parallel.
func TestRun(t *testing.T) {
	t.Run("bad_REQUEST_TIMEOUT_exits_2_with_one_line", func(t *testing.T) {
		for _, value := range []string{"garbage", "-1", "0", "1e99"} {
			t.Setenv("REQUEST_TIMEOUT", value)
			var stderr bytes.Buffer
			code := run(context.Background(), []string{"-addr", "127.0.0.1:0"}, &stderr)
			require.Equal(t, 2, code, value)
			msg := stderr.String()
			require.Equal(t, 1, strings.Count(msg, "\n"), msg)
			require.True(t, strings.HasPrefix(msg, "demo: "), msg)
			require.True(t, strings.HasSuffix(msg, " (see demo -h)\n"), "points to the usage: %q", msg)
			require.Contains(t, msg, "REQUEST_TIMEOUT", msg)
		}
	})

	t.Run("bad_flag_exits_2_with_one_line", func(t *testing.T) {
		t.Setenv("REQUEST_TIMEOUT", "")
		// Done already: a flag wrongly accepted makes run start and stop
		// at once (exit 0), not serve until the test binary times out.
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		for _, args := range [][]string{{"-nope"}, {"-addr"}, {"-mode", "fast"}, {"extra"},
			{"-addr", "127.0.0.1"}, {"-addr", "127.0.0.1:99999"}, {"-addr", ":http"},
			{"-adaptive=maybe"}, {"-max-concurrency", "-1"}, {"-max-concurrency", "many"},
			// Go's literal forms, which flag.Int reads: a count is decimal.
			{"-addr", "127.0.0.1:0", "-max-concurrency", "0x10"},
			{"-addr", "127.0.0.1:0", "-max-concurrency", "1_000"},
			{"-addr", "127.0.0.1:0", "-max-concurrency", "0o17"},
			{"-addr", "127.0.0.1:0", "-max-concurrency", "0b11"},
			{"-addr", "127.0.0.1:0", "-max-concurrency", "+16"}, // strconv takes a sign; a count has none
			{"-addr", "127.0.0.1:0", "-max-concurrency", "99999999999999999999"}} {
			var stderr bytes.Buffer
			code := run(ctx, args, &stderr)
			require.Equal(t, 2, code, args)
			msg := stderr.String()
			require.Equal(t, 1, strings.Count(msg, "\n"), msg)
			require.True(t, strings.HasPrefix(msg, "demo: "), msg)
			require.True(t, strings.HasSuffix(msg, " (see demo -h)\n"), "points to the usage: %q", msg)
		}
	})

	t.Run("help_prints_usage_mentioning_REQUEST_TIMEOUT_and_exits_0", func(t *testing.T) {
		var stderr bytes.Buffer
		require.Equal(t, 0, run(context.Background(), []string{"-h"}, &stderr))
		require.Contains(t, stderr.String(), "REQUEST_TIMEOUT")
		require.Contains(t, stderr.String(), "-addr")
		require.Contains(t, stderr.String(), "-mode")
		require.Contains(t, stderr.String(), "-adaptive")
		require.Contains(t, stderr.String(), "-max-concurrency")
		require.Contains(t, stderr.String(), "Exit status:")
		require.Contains(t, stderr.String(), "a second SIGINT (130) or SIGTERM (143)")
	})

	t.Run("options_come_from_flags_and_environment", func(t *testing.T) {
		t.Setenv("REQUEST_TIMEOUT", "2.5")
		for _, tc := range []struct {
			args []string
			want options
		}{
			{[]string{"-addr", "127.0.0.1:9", "-mode", "cooperative"},
				options{addr: "127.0.0.1:9", timeout: 2500 * time.Millisecond, mode: fasttimeout.Cooperative, adaptive: true}},
			{[]string{"-adaptive=false"},
				options{addr: ":8080", timeout: 2500 * time.Millisecond, mode: fasttimeout.Racing}},
			{[]string{"-adaptive", "-max-concurrency", "64"},
				options{addr: ":8080", timeout: 2500 * time.Millisecond, mode: fasttimeout.Racing, adaptive: true, maxConcurrency: 64}},
			{[]string{"-adaptive=false", "-max-concurrency=32"},
				options{addr: ":8080", timeout: 2500 * time.Millisecond, mode: fasttimeout.Racing, maxConcurrency: 32}},
			// Decimal, leading zero or not: flag.Int read "010" as octal 8.
			{[]string{"-max-concurrency", "010"},
				options{addr: ":8080", timeout: 2500 * time.Millisecond, mode: fasttimeout.Racing, adaptive: true, maxConcurrency: 10}},
		} {
			opts, err := parseOptions(tc.args, new(bytes.Buffer))
			require.NoError(t, err, tc.args)
			require.Equal(t, tc.want, opts, tc.args)
		}

		t.Setenv("REQUEST_TIMEOUT", "")
		opts, err := parseOptions(nil, new(bytes.Buffer))
		require.NoError(t, err)
		require.Equal(t, defaultOptions(5*time.Second), opts)
	})

	t.Run("a_signal_at_start_still_stops_it", func(t *testing.T) {
		// ctx is done before the Serve goroutine runs, as when SIGTERM
		// comes while the demo starts: fasthttp's Shutdown closes only the
		// listeners Serve has registered, so Serve must not serve on after
		// it, nor run wait for it.
		t.Setenv("REQUEST_TIMEOUT", "")
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		for range 20 {
			stderr := new(syncBuffer)
			code := make(chan int, 1)
			go func() { code <- run(ctx, []string{"-addr", "127.0.0.1:0"}, stderr) }()
			select {
			case c := <-code:
				require.Equal(t, 0, c, stderr.String())
				require.Contains(t, stderr.String(), "stopped")
			case <-time.After(30 * time.Second): // a hang, not a slow machine
				t.Fatalf("run did not return after its context ended: %s", stderr.String())
			}
		}
	})

	t.Run("the_last_period_is_logged_at_shutdown", func(t *testing.T) {
		// The late-return and hang-up logs write a period's lines at its
		// end, a second after its first event: those of the period in
		// which the demo stops must come out before run returns.
		for _, tc := range []struct {
			name, timeout string
			provoke       func(t *testing.T, addr string)
			done          func(before, now fasttimeout.Counters) bool
			want          string
		}{
			{
				name: "late returns", timeout: "0.05",
				provoke: func(t *testing.T, addr string) {
					for range 2 {
						status, _, err := fasthttp.GetTimeout(nil, "http://"+addr+"/sleep/0.2", eventuallyBound)
						require.NoError(t, err)
						require.Equal(t, fasthttp.StatusGatewayTimeout, status)
					}
				},
				done: func(before, now fasttimeout.Counters) bool { return now.LateFinished == before.LateFinished+2 },
				want: "late handlers: 2 returned late",
			},
			{
				name: "hang-ups", timeout: "60",
				provoke: func(t *testing.T, addr string) {
					stats := publishedStats()
					before := stats.Snapshot()
					var conns []net.Conn
					for range 2 {
						conn, err := net.Dial("tcp", addr)
						require.NoError(t, err)
						defer conn.Close()
						_, err = conn.Write([]byte("GET /async_sleep/60 HTTP/1.1\r\nHost: demo\r\n\r\n"))
						require.NoError(t, err)
						conns = append(conns, conn)
					}
					eventually(t, "both requests run", func() bool { return stats.Snapshot().InFlight == before.InFlight+2 })
					for _, conn := range conns {
						require.NoError(t, conn.Close())
					}
				},
				done: func(before, now fasttimeout.Counters) bool { return now.ClientGone == before.ClientGone+2 },
				want: "clients gone: 1 more in the last 1s",
			},
		} {
			t.Run(tc.name, func(t *testing.T) {
				if runtime.GOOS != "linux" && tc.name == "hang-ups" {
					t.Skip("hang-ups are watched on Linux only")
				}
				t.Setenv("REQUEST_TIMEOUT", tc.timeout)
				stats := publishedStats() // run's, shared by the runs of one process
				before := stats.Snapshot()
				addr, stderr, stop := startRun(t)
				tc.provoke(t, addr)
				eventually(t, "the events counted", func() bool { return tc.done(before, stats.Snapshot()) })
				stop()
				require.Contains(t, stderr.String(), tc.want)
			})
		}
	})

	t.Run("late_handlers_still_running_are_counted_at_exit", func(t *testing.T) {
		// A blocking handler in racing mode runs on after its 504, and after
		// the server has stopped: its work ends with the process, which the
		// last lines must say. It sleeps an hour, so that it surely runs
		// when run returns; it is left to end with the test binary, and
		// the tests that read the published Stats compare with a snapshot.
		t.Setenv("REQUEST_TIMEOUT", "0.05")
		stats := publishedStats() // run's, shared by the runs of one process
		before := stats.Snapshot()
		addr, stderr, stop := startRun(t)
		status, _, err := fasthttp.GetTimeout(nil, "http://"+addr+"/sleep/3600", eventuallyBound)
		require.NoError(t, err)
		require.Equal(t, fasthttp.StatusGatewayTimeout, status)
		require.Equal(t, before.LateRunning+1, stats.Snapshot().LateRunning, "answered while the sleeping handler still runs")
		stop()
		require.Regexp(t, fmt.Sprintf(`(?m)^demo: .*late handlers: %d still running at exit \(after their deadline or client's hang-up\), their work abandoned\ndemo: .* stopped\n$`,
			before.LateRunning+1), stderr.String())
	})

	t.Run("the_start_line_names_the_admission", func(t *testing.T) {
		for _, tc := range []struct {
			adaptive bool
			max      int
			want     string
		}{
			{true, 0, "adaptive concurrency limit up to 1000"},
			{true, 64, "adaptive concurrency limit up to 64"},
			{false, 32, "concurrency limit 32"},
			{false, 0, "no concurrency limit"},
		} {
			require.Equal(t, tc.want, options{adaptive: tc.adaptive, maxConcurrency: tc.max}.admission())
		}
	})
}
