package fasttimeout

import (
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/valyala/fasthttp"
)

// allBusyEnv, set to 1, runs the package's tests with every connection
// busy (see worker.arm), as most requests of a loaded server are; on a
// quiet one many tests' requests are too far apart.
const allBusyEnv = "FASTTIMEOUT_TEST_ALL_BUSY"

func init() {
	if os.Getenv(allBusyEnv) == "1" {
		testAllBusy.Store(true)
	}
}

// allBusy makes every connection busy for the rest of the test: the tests
// that set it do not run in parallel, and the others are right either way.
func allBusy(t *testing.T) {
	was := testAllBusy.Swap(true)
	t.Cleanup(func() { testAllBusy.Store(was) })
}

// serveBlocking serves, on a real server, a handler configured by cfg
// (with a Stats of its own) that blocks on the path /slow until the test
// ends and returns at once on any other.
func serveBlocking(t *testing.T, cfg Config) (*fasthttp.Client, *Stats) {
	t.Helper()
	cfg.Stats = &Stats{}
	release := make(chan struct{})
	client := serveInMemory(t, New(func(ctx *fasthttp.RequestCtx) {
		if string(ctx.Path()) == "/slow" {
			<-release
		}
	}, cfg))
	t.Cleanup(func() { close(release) }) // before the server's shutdown
	return client, cfg.Stats
}

// TestRacing_a_busy_connections_kept_timer_still_ends_its_request: on a
// busy connection a request keeps the timer an earlier request armed, which
// goes off before this one needs it to. The server goroutine then arms it
// again, and the request still gets its timeout answer: at its deadline,
// with the hang-up watch started on the way (a watched timeout) or not (a
// short one).
func TestRacing_a_busy_connections_kept_timer_still_ends_its_request(t *testing.T) {
	allBusy(t)
	rearmed := make(chan uint64, 100) // the generation of each call armed again
	hook := func(c *call) { rearmed <- c.state.Load() / generation }
	testHookRearmed.Store(&hook)
	t.Cleanup(func() { testHookRearmed.Store(nil) })

	for _, tc := range []struct {
		timeout time.Duration
		spacing time.Duration // after the request that arms the timer, before the probe
	}{
		{actInTime, HangupDelay / 2},                   // first wake: the watch's start
		{minWatchedTimeout / 2, 20 * time.Millisecond}, // first wake: the deadline
	} {
		t.Run(fmt.Sprint(tc.timeout), func(t *testing.T) {
			stats := &Stats{}
			probes := make(chan uint64, 1) // a probe's generation, or 0
			release := make(chan struct{})
			h := New(func(ctx *fasthttp.RequestCtx) {
				c := lookup(ctx)
				if string(ctx.Path()) != "/probe" {
					time.Sleep(tc.spacing) // spacing only: nothing depends on its length
					return
				}
				// Armed by an earlier request: earlier than this one's first
				// wake, which its own arming would have passed.
				if at := c.timerAt.Load(); at <= 0 || at >= c.nextWake() {
					probes <- 0
					return
				}
				probes <- c.state.Load() / generation
				<-release
			}, Config{Timeout: tc.timeout, Stats: stats})
			client := serveInMemory(t, h)
			t.Cleanup(func() { close(release) })

			// Until a probe keeps the timer of the request before it, and
			// that timer goes off early for it: on a loaded machine it may
			// go off late enough to end the probe itself.
			kept := 0
			for attempt, early := 0, false; !early; attempt++ {
				require.Less(t, attempt, 100, "no probe kept an earlier request's timer that went off early")
				status, _, err := client.Get(nil, "http://test/")
				require.NoError(t, err)
				require.Equal(t, fasthttp.StatusOK, status)
				answer := getAsync(t, client, "/probe")
				probe := receive(t, probes, "the probe")
				status = receive(t, answer, "the probe's answer")
				if probe == 0 {
					require.Equal(t, fasthttp.StatusOK, status)
					continue
				}
				assert.Equal(t, DefaultStatusCode, status)
				kept++
				for len(rearmed) > 0 {
					early = early || <-rearmed == probe
				}
			}
			assert.EqualValues(t, kept, stats.Snapshot().Timeouts)
		})
	}
}

// TestRacing_a_busy_connections_timer_gone_off_while_armed_holds_nothing:
// a server goroutine stalled between resetting a busy connection's timer
// and noting when it goes off finds it gone off by then (here to start the
// hang-up watch), and must not note it armed: the connection's next request
// would keep a timer that is no longer there, and never get its timeout
// answer.
func TestRacing_a_busy_connections_timer_gone_off_while_armed_holds_nothing(t *testing.T) {
	allBusy(t)
	stalled := false
	hook := func(c *call) {
		if stalled {
			return
		}
		stalled = true
		require.Eventually(t, func() bool { return c.timerAt.Load() < 0 }, 30*time.Second, time.Millisecond,
			"the timer never went off")
	}
	testHookArmed.Store(&hook)
	t.Cleanup(func() { testHookArmed.Store(nil) })

	client, stats := serveBlocking(t, Config{Timeout: actInTime})

	// Stalled past the start of its watch before its handler ran.
	status, _, err := client.Get(nil, "http://test/")
	require.NoError(t, err)
	require.Equal(t, fasthttp.StatusOK, status)
	// The next request arms a timer of its own, and times out.
	assert.Equal(t, DefaultStatusCode, receive(t, getAsync(t, client, "/slow"), "the answer"))
	assert.EqualValues(t, 1, stats.Snapshot().Timeouts)
}

// TestRacing_a_deadline_moved_while_a_busy_connection_arms_its_timer_is_not_kept:
// a goroutine that a connection's earlier handler left running may call
// Extend or Disarm on the connection's RequestCtx, which by then carries
// the next request (see Extend), while the server goroutine arms that
// request's timer. The move arms the timer for the moved deadline; the
// server goroutine must not then note it armed for the deadline it had
// read, or the connection's later requests keep a timer that goes off an
// hour late, or never, and get no timeout answer.
func TestRacing_a_deadline_moved_while_a_busy_connection_arms_its_timer_is_not_kept(t *testing.T) {
	allBusy(t)
	for _, tc := range []struct {
		name string
		move func(*fasthttp.RequestCtx) bool
	}{
		{"Extend", func(ctx *fasthttp.RequestCtx) bool { return Extend(ctx, time.Hour) }},
		{"Disarm", Disarm},
	} {
		t.Run(tc.name, func(t *testing.T) {
			moved := make(chan bool, 1)
			hook := func(c *call) {
				if string(c.ctx.Path()) == "/moved" {
					moved <- tc.move(c.ctx) // as the stray goroutine would, right then
				}
			}
			testHookArmed.Store(&hook)
			t.Cleanup(func() { testHookArmed.Store(nil) })

			// No hang-up watch: each request's one wake is its deadline.
			client, stats := serveBlocking(t, Config{Timeout: actInTime, IgnoreHangups: true})

			status, _, err := client.Get(nil, "http://test/moved")
			require.NoError(t, err)
			require.Equal(t, fasthttp.StatusOK, status)
			require.True(t, receive(t, moved, "the move"))
			// The next request on the connection still times out.
			assert.Equal(t, DefaultStatusCode, receive(t, getAsync(t, client, "/slow"), "the answer"))
			assert.EqualValues(t, 1, stats.Snapshot().Timeouts)
		})
	}
}

// TestRacing_a_busy_connections_shorter_timeout_does_not_keep_a_later_timer:
// a request whose timeout (TimeoutFunc, or the caller's deadline header)
// is shorter than the one before it on a busy connection needs the timer
// sooner than that one armed it, and must arm it again rather than keep it.
func TestRacing_a_busy_connections_shorter_timeout_does_not_keep_a_later_timer(t *testing.T) {
	allBusy(t)
	for _, tc := range []struct {
		name   string
		config Config
		header string // sent with the short request, if any
	}{
		{"TimeoutFunc", Config{TimeoutFunc: func(ctx *fasthttp.RequestCtx) time.Duration {
			if string(ctx.Path()) == "/slow" {
				return actInTime
			}
			return time.Hour
		}}, ""},
		{"deadline header", Config{Timeout: time.Hour, HonorDeadlineHeaders: true}, "1S"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			config := tc.config
			config.IgnoreHangups = true // each request's one wake is its deadline
			client, stats := serveBlocking(t, config)

			status, _, err := client.Get(nil, "http://test/")
			require.NoError(t, err)
			require.Equal(t, fasthttp.StatusOK, status)
			answer := make(chan int, 1)
			go func() {
				req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
				defer fasthttp.ReleaseRequest(req)
				defer fasthttp.ReleaseResponse(resp)
				req.SetRequestURI("http://test/slow")
				if tc.header != "" {
					req.Header.Set(HeaderGRPCTimeout, tc.header)
				}
				assert.NoError(t, client.DoTimeout(req, resp, 2*time.Minute))
				answer <- resp.StatusCode()
			}()
			assert.Equal(t, DefaultStatusCode, receive(t, answer, "the answer"))
			assert.EqualValues(t, 1, stats.Snapshot().Timeouts)
		})
	}
}

// TestRacing_a_signal_on_done_never_blocks_its_sender: the timer of a busy
// connection's call that goes off early, twice, leaves one signal to look
// again on done, and the hang-up callback's decision still goes through at
// once, though nobody takes them yet: it runs under the watcher's lock,
// and would hold up every connection's watch.
func TestRacing_a_signal_on_done_never_blocks_its_sender(t *testing.T) {
	t.Parallel()
	m := &middleware{settings: Config{Timeout: time.Minute}.resolve()}
	m.housekeeper = newHousekeeper(m.Precision)
	w := m.acquireWorker(1)
	defer m.releaseWorker(w, 1, 0) // idle since long ago: the housekeeper retires it
	c := &w.call
	t0 := now()
	c.begin(new(fasthttp.RequestCtx), nil, t0, t0+int64(time.Hour), t0)

	w.fire()
	w.fire()
	sent := make(chan struct{})
	go func() {
		w.hungUp()
		close(sent)
	}()
	receive(t, sent, "the hang-up's decision sent")
	assert.True(t, <-w.done, "a signal to look again")
	assert.False(t, <-w.done, "the decision")
	assert.Equal(t, callGone, c.phase())
}
