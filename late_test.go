// Late is late: a handler that returns or panics after its deadline gets
// the timeout response, whatever the goroutine that watches the deadline has
// seen or not seen yet. These tests hold that goroutine back (one P and a
// spinning handler, a burst of connections, a stopped process) and check
// that no late handler's response or panic gets through, and that a flood of
// late handlers that ignore their context leaves the fast requests beside
// them their own answers.
package fasttimeout_test

import (
	"bufio"
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/valyala/fasthttp"

	"github.com/fasttimeout/fasttimeout"
)

// spinPast burns CPU, without a single blocking call, until the deadline
// of ctx is past by d: on one P nothing else runs meanwhile, unless the
// runtime preempts the spinner (after 10 ms).
func spinPast(ctx *fasthttp.RequestCtx, d time.Duration) {
	for {
		if left, ok := fasttimeout.Remaining(ctx); !ok || left < -d {
			return
		}
	}
}

// On one P, a handler that spins 3 ms past a 5 ms deadline returns before
// anything else can run: before a goroutine watching the deadline could
// tick, which once let its own response (or its panic, re-raised on the
// server goroutine) through.
//
// On a machine this busy, the server goroutine may also run 5 ms after
// fasthttp read the request, and the middleware then answers it at once
// with the timeout response, without running the handler (its budget is
// spent, see Stats.SpentBudgets). That is right, but it is not what this
// test is about: such a request is sent again.
// Not parallel: GOMAXPROCS is the process's.
func TestLate_handler_on_a_starved_process_gets_the_timeout_response(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	for _, mode := range []fasttimeout.Mode{fasttimeout.Racing, fasttimeout.Cooperative} {
		for _, panics := range []bool{false, true} {
			t.Run(fmt.Sprintf("%v/panics=%v", mode, panics), func(t *testing.T) {
				var stats fasttimeout.Stats
				reported := make(chan any, 10)
				recovered := make(chan any, 10)
				server := panicServer(t, func(ctx *fasthttp.RequestCtx) {
					secret := string(ctx.Request.Header.Peek("X-Secret"))
					spinPast(ctx, 3*time.Millisecond)
					if panics {
						panic(&secretPanic{secret: secret})
					}
					replyWithSecret(ctx, "spin", secret)
				}, fasttimeout.Config{
					Timeout: 5 * time.Millisecond, Mode: mode, Stats: &stats,
					OnPanic: func(_ *fasthttp.RequestCtx, v any, _ []byte) { reported <- v },
				}, recovered)
				c, err := dialStress(server.addr)
				require.NoError(t, err)
				defer c.close()

				const n, maxTries = 5, 20
				spent := int64(0)
				for i := range n {
					secret := fmt.Sprintf("S%016x", i+1)
					for try := 1; ; try++ {
						requireTimeoutResponse(t, c.get(t, "/spin", secret))
						s := stats.Snapshot().SpentBudgets
						if s == spent {
							break
						}
						spent = s
						require.Less(t, try, maxTries, "the budget of every request was spent before its handler could run")
					}
					if panics {
						require.Equal(t, secret, receive(t, reported, "late panic for OnPanic").(*secretPanic).secret, "the late panic goes to OnPanic")
					}
				}
				if spent > 0 {
					t.Logf("%d requests were answered before their handler ran, their budget spent", spent)
				}
				require.Empty(t, recovered, "a late panic is never re-raised")
				// A late return leaves LateRunning before it is counted in
				// LateFinished and LateRun (countLateReturn); it leaves
				// InFlight last (see Stats.Snapshot).
				require.Eventually(t, func() bool { return stats.Snapshot().InFlight == 0 }, stressBound, 5*time.Millisecond)
				got := stats.Snapshot()
				assert.Zero(t, got.LateRunning)
				assert.EqualValues(t, n+spent, got.Timeouts)
				assert.EqualValues(t, n, got.LateFinished)
				assert.Zero(t, got.InFlight)
				assert.EqualValues(t, n, stats.LateRun().Count)
				assert.EqualValues(t, n, stats.AnswerLateness().Count)
			})
		}
	}
}

// A burst of keep-alive connections at once, each with a mix of handlers
// that race their deadline: fast ones, ones that sleep about as long as the
// timeout, ones that honour their context, ones that panic about at the
// deadline, and streams. Each handler notes how much time it had left just
// before it returned or panicked; since the middleware decides after that,
// by the clock, a client must never get the own response of a handler that
// had none left, and a panic that came with none left must never be
// re-raised.
func TestLate_mixed_burst_never_lets_a_late_handler_through(t *testing.T) {
	for _, mode := range []fasttimeout.Mode{fasttimeout.Racing, fasttimeout.Cooperative} {
		t.Run(mode.String(), func(t *testing.T) {
			t.Parallel()
			const (
				timeout  = 20 * time.Millisecond
				conns    = 64
				requests = 8
			)
			var (
				stats              fasttimeout.Stats
				left               sync.Map // secret -> time left when the handler returned or panicked
				thrown, reported   atomic.Int64
				lateOwn, reraised  atomic.Int64
				timeouts, own, bad atomic.Int64
			)
			note := func(ctx *fasthttp.RequestCtx, secret string) {
				l, _ := fasttimeout.Remaining(ctx)
				left.Store(secret, l)
			}
			recovered := make(chan any, conns*requests)
			server := panicServer(t, func(ctx *fasthttp.RequestCtx) {
				secret := string(ctx.Request.Header.Peek("X-Secret"))
				switch string(ctx.Path()) {
				case "/sleep":
					time.Sleep(rand.N(2 * timeout))
				case "/honour":
					<-fasttimeout.Context(ctx).Done()
				case "/panic":
					time.Sleep(timeout/2 + rand.N(timeout))
					note(ctx, secret)
					thrown.Add(1)
					panic(&secretPanic{secret: secret})
				case "/stream":
					note(ctx, secret)
					ctx.SetBodyStreamWriter(func(w *bufio.Writer) {
						_, _ = w.WriteString(ownBody("stream", secret))
					})
					ctx.Response.Header.Set("X-Secret", secret)
					return
				}
				note(ctx, secret)
				replyWithSecret(ctx, "mixed", secret)
			}, fasttimeout.Config{
				Timeout: timeout, Mode: mode, Stats: &stats,
				OnPanic: func(*fasthttp.RequestCtx, any, []byte) { reported.Add(1) },
			}, recovered)

			paths := []string{"/fast", "/sleep", "/sleep", "/honour", "/panic", "/stream"}
			start := make(chan struct{})
			var wg sync.WaitGroup
			for i := range conns {
				wg.Go(func() {
					c, err := dialStress(server.addr)
					if !assert.NoError(t, err) {
						return
					}
					defer c.close()
					<-start // all connections at once
					for j := range requests {
						secret := fmt.Sprintf("S%08x%08x", i, j)
						path := paths[rand.N(len(paths))]
						if !assert.NoError(t, c.do(path, secret)) {
							return
						}
						resp := &c.resp
						status, body := resp.StatusCode(), string(resp.Body())
						l, noted := left.Load(secret)
						switch {
						case status == fasttimeout.DefaultStatusCode && body == fasttimeout.DefaultBody:
							timeouts.Add(1)
						case status == fasthttp.StatusInternalServerError && body == "recovered":
							if noted && l.(time.Duration) < 0 {
								reraised.Add(1)
							}
						case status == fasthttp.StatusOK && string(resp.Header.Peek("X-Secret")) == secret:
							own.Add(1)
							if noted && l.(time.Duration) < 0 {
								lateOwn.Add(1)
								t.Errorf("%s %s: own response of a handler that returned %v after its deadline", path, secret, -l.(time.Duration))
							}
						default:
							bad.Add(1)
							t.Errorf("%s %s: unexpected response %d %q", path, secret, status, body)
						}
					}
				})
			}
			close(start)
			wg.Wait()

			assert.Zero(t, lateOwn.Load(), "own responses of late handlers")
			assert.Zero(t, reraised.Load(), "late panics re-raised")
			assert.Zero(t, bad.Load())
			// A late return leaves LateRunning before its panic goes to
			// OnPanic and before it leaves InFlight, last (see
			// Stats.Snapshot): wait for InFlight.
			require.Eventually(t, func() bool { return stats.Snapshot().InFlight == 0 }, stressBound, 5*time.Millisecond)
			got := stats.Snapshot()
			assert.Zero(t, got.LateRunning)
			assert.Equal(t, timeouts.Load(), got.Timeouts, "timeouts counted as answered")
			assert.Equal(t, thrown.Load(), got.Panics, "panics counted")
			assert.Equal(t, thrown.Load(), reported.Load()+int64(len(recovered)), "each panic either re-raised or reported")
			assert.Zero(t, got.InFlight)
			assert.Positive(t, own.Load())
			assert.Positive(t, timeouts.Load())
			t.Logf("%v: %d own, %d timeouts, %d panics (%d re-raised in time), late-run histogram count %d",
				mode, own.Load(), timeouts.Load(), thrown.Load(), len(recovered), stats.LateRun().Count)
		})
	}
}

// Two thousand handlers that never look at their context time out beside
// fast requests on the same connections: every fast request gets its own
// answer, each late handler costs one goroutine and nothing more, and those
// goroutines end once released.
func TestLateHandlerFlood(t *testing.T) {
	const connections, perConnection = 40, 50 // 2 000 late handlers
	release := make(chan struct{})
	var stats fasttimeout.Stats
	h := fasttimeout.New(func(ctx *fasthttp.RequestCtx) {
		secret := string(ctx.Request.Header.Peek("X-Secret"))
		if string(ctx.Path()) == "/late" {
			<-release // never looks at its context
			replyWithSecret(ctx, "late", secret)
			return
		}
		replyWithSecret(ctx, "fast", secret)
	}, fasttimeout.Config{
		// The late ones time out at once; the fast ones get all the time
		// they need on a loaded machine, so a wrong answer is never timing.
		TimeoutFunc: func(ctx *fasthttp.RequestCtx) time.Duration {
			if string(ctx.Path()) == "/late" {
				return 5 * time.Millisecond
			}
			return time.Minute
		},
		Stats: &stats,
	})
	goroutineBase := runtime.NumGoroutine()
	server := startStressLoopback(t, h)

	var clients sync.WaitGroup
	var wrong atomic.Int64
	for i := range connections {
		clients.Go(func() {
			c, err := dialStress(server.addr)
			if !assert.NoError(t, err) {
				return
			}
			defer c.close()
			for j := range perConnection {
				secret := fmt.Sprintf("S%08x%08x", i, j)
				if !assert.NoError(t, c.do("/late", secret)) {
					return
				}
				if c.resp.StatusCode() != fasttimeout.DefaultStatusCode || string(c.resp.Body()) != fasttimeout.DefaultBody {
					wrong.Add(1)
				}
				// Fast requests keep being answered, correctly, meanwhile.
				if !assert.NoError(t, c.do("/fast", secret)) {
					return
				}
				if string(c.resp.Body()) != ownBody("fast", secret) {
					wrong.Add(1)
				}
			}
		})
	}
	clients.Wait()
	snap := stats.Snapshot()
	late := snap.LateRunning
	peak := runtime.NumGoroutine()
	t.Logf("%d late handlers running, %d answered at admission, goroutines %d before, %d with them",
		late, snap.SpentBudgets, goroutineBase, peak)
	require.Zero(t, wrong.Load())
	// On a loaded machine a /late request can reach the middleware after
	// its 5 ms budget, counted from its arrival: it gets the timeout
	// response at admission, without running (SpentBudgets).
	require.EqualValues(t, connections*perConnection, late+snap.SpentBudgets)
	require.Positive(t, late, "the flood ran")
	// One goroutine per late handler, plus a few per connection and the
	// server's own: nothing else grows with the late handlers.
	require.LessOrEqual(t, peak-goroutineBase, int(late)+4*connections+50)

	close(release)
	require.Eventually(t, func() bool { return stats.Snapshot().LateRunning == 0 }, stressBound, 5*time.Millisecond)
	require.NoError(t, server.shutdown())
	require.Eventually(t, func() bool { return runtime.NumGoroutine() <= goroutineBase+10 }, stressBound, 5*time.Millisecond,
		"goroutines fall back once the late handlers are released: %d, base %d", runtime.NumGoroutine(), goroutineBase)
}

// A cooperative handler that sets a hijack handler and returns after its
// deadline is late: its response is replaced by the timeout response, and
// its hijack handler must not take the connection after that answer (the
// client's next request on it would read the hijacker's bytes, or nothing).
func TestLate_cooperative_hijack_does_not_take_the_connection(t *testing.T) {
	t.Parallel()
	server := startStressLoopback(t, fasttimeout.New(func(ctx *fasthttp.RequestCtx) {
		if string(ctx.Path()) == "/fast" {
			replyWithSecret(ctx, "fast", string(ctx.Request.Header.Peek("X-Secret")))
			return
		}
		<-fasttimeout.Context(ctx).Done()
		for left, _ := fasttimeout.Remaining(ctx); left >= 0; left, _ = fasttimeout.Remaining(ctx) {
			runtime.Gosched() // until the return is past the deadline
		}
		ctx.Hijack(func(c net.Conn) { _, _ = c.Write([]byte("HIJACKED")) })
	}, fasttimeout.Config{Timeout: actInTime, TimeoutFunc: onlyTimingOut("/slow"), Mode: fasttimeout.Cooperative})) // /slow must run
	c, err := dialStress(server.addr)
	require.NoError(t, err)
	defer c.close()

	requireTimeoutResponse(t, c.get(t, "/slow", "S0000000000000001"))
	requireOwnResponse(t, c.get(t, "/fast", "S0000000000000002"), "fast", "S0000000000000002")
}

// In racing mode OnTimeout runs beside the late handler, whose return must
// leave ctx as OnTimeout sees it: removing the call from ctx's user values
// would race with OnTimeout reading them, and Context in OnTimeout would
// then give a new context that never ends. The next
// request on the connection, likely on the same worker, must not inherit
// the context OnTimeout asked for.
func TestLate_return_leaves_ctx_to_OnTimeout(t *testing.T) {
	t.Parallel()
	type seen struct {
		id    any
		cause error
	}
	returned := make(chan struct{})
	seenByOnTimeout := make(chan seen, 1)
	h := fasttimeout.New(func(ctx *fasthttp.RequestCtx) {
		if string(ctx.Path()) == "/slow" {
			<-fasttimeout.Context(ctx).Done() // returns late, unordered with OnTimeout
			return
		}
		fmt.Fprint(ctx, fasttimeout.Context(ctx).Err())
	}, fasttimeout.Config{
		Timeout:      actInTime, // /slow must run to race with OnTimeout
		TimeoutFunc:  onlyTimingOut("/slow"),
		OnLateReturn: func(*fasthttp.RequestCtx, time.Duration) { close(returned) },
		OnTimeout: func(ctx *fasthttp.RequestCtx, _ *fasthttp.Response) {
			id := ctx.UserValue("id")
			select {
			case <-returned:
			case <-time.After(waitTimeout):
			}
			seenByOnTimeout <- seen{id, context.Cause(fasttimeout.Context(ctx))}
		},
	})
	s := serve(t, func(ctx *fasthttp.RequestCtx) {
		ctx.SetUserValue("id", "r1") // an outer middleware's request ID
		h(ctx)
	})
	assert.Equal(t, fasthttp.StatusGatewayTimeout, do(t, s, "GET", "/slow").StatusCode())
	got := receive(t, seenByOnTimeout, "OnTimeout")
	assert.Equal(t, "r1", got.id)
	assert.ErrorIs(t, got.cause, fasttimeout.ErrTimeout)
	for range 3 {
		assert.Equal(t, "<nil>", string(do(t, s, "GET", "/fast").Body()))
	}
}

// OnTimeout gets the request's own context from Context, ended with
// ErrTimeout, in both modes, whether or not the handler asked for it
// first: a callback that logs or traces with it must not find a context
// that never ends.
func TestLate_OnTimeout_sees_the_request_context_ended(t *testing.T) {
	t.Parallel()
	for _, mode := range allModes {
		for _, asked := range []bool{true, false} {
			t.Run(fmt.Sprintf("%v/handler-asked=%v", mode, asked), func(t *testing.T) {
				t.Parallel()
				type seen struct {
					err, cause error
				}
				seenByOnTimeout := make(chan seen, 1)
				h := fasttimeout.New(func(ctx *fasthttp.RequestCtx) {
					if asked {
						<-fasttimeout.Context(ctx).Done()
						return
					}
					spinPast(ctx, time.Millisecond) // ends in both modes: Remaining needs no context
				}, fasttimeout.Config{
					Timeout: shortTimeout,
					Mode:    mode,
					OnTimeout: func(ctx *fasthttp.RequestCtx, _ *fasthttp.Response) {
						c := fasttimeout.Context(ctx)
						seenByOnTimeout <- seen{c.Err(), context.Cause(c)}
					},
				})
				s := serve(t, h)
				assert.Equal(t, fasthttp.StatusGatewayTimeout, do(t, s, "GET", "/").StatusCode())
				got := receive(t, seenByOnTimeout, "OnTimeout")
				assert.ErrorIs(t, got.err, context.DeadlineExceeded)
				assert.ErrorIs(t, got.cause, fasttimeout.ErrTimeout)
			})
		}
	}
}

// A late racing handler keeps its own RequestCtx until it returns: once its
// request has been answered with the timeout response and the connection
// has served the next request, it still reads its own request (path,
// headers, query, user values) and writes into its own response, while the
// connection's next request has its own RequestCtx and answer.
func TestLate_handler_keeps_its_own_RequestCtx_while_the_connection_serves_on(t *testing.T) {
	t.Parallel()
	type seen struct {
		path, header, query, userValue, body string
	}
	nextServed := make(chan struct{})
	seenByLate := make(chan seen, 1)
	h := fasttimeout.New(func(ctx *fasthttp.RequestCtx) {
		secret := string(ctx.Request.Header.Peek("X-Secret"))
		if string(ctx.Path()) != "/slow" {
			replyWithSecret(ctx, "fast", secret)
			return
		}
		ctx.SetUserValue("secret", secret)
		<-nextServed // late: answered, and the connection has served another request
		replyWithSecret(ctx, "late", string(ctx.QueryArgs().Peek("secret")))
		userValue, _ := ctx.UserValue("secret").(string)
		seenByLate <- seen{
			path:      string(ctx.Path()),
			header:    string(ctx.Request.Header.Peek("X-Secret")),
			query:     string(ctx.QueryArgs().Peek("secret")),
			userValue: userValue,
			body:      string(ctx.Response.Body()),
		}
	}, fasttimeout.Config{Timeout: actInTime, TimeoutFunc: onlyTimingOut("/slow")}) // /slow must run
	server := startStressLoopback(t, h)
	c, err := dialStress(server.addr)
	require.NoError(t, err)
	defer c.close()

	const slow = "S0000000000000001"
	requireTimeoutResponse(t, c.get(t, "/slow", slow))
	requireOwnResponse(t, c.get(t, "/fast", "S0000000000000002"), "fast", "S0000000000000002")
	close(nextServed)
	require.Equal(t, seen{path: "/slow", header: slow, query: slow, userValue: slow, body: ownBody("late", slow)},
		receive(t, seenByLate, "what the late handler read from its RequestCtx"))
	requireOwnResponse(t, c.get(t, "/fast", "S0000000000000003"), "fast", "S0000000000000003")
	require.EqualValues(t, 1, server.ln.accepted.Load(), "one connection for all requests")
}
