package fasttimeout_test

import (
	"fmt"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/valyala/fasthttp"

	"github.com/fasttimeout/fasttimeout"
)

func TestStats_String_is_JSON_for_expvar(t *testing.T) {
	t.Parallel()
	stats := new(fasttimeout.Stats)
	// The handler runs past HangupDelay, as any can on a loaded machine; its
	// in-memory connection cannot be watched, and with the watch on that
	// adds unwatched_clients to the JSON.
	s := serve(t, fasttimeout.New(func(*fasthttp.RequestCtx) { time.Sleep(2 * fasttimeout.HangupDelay) },
		fasttimeout.Config{Stats: stats, IgnoreHangups: true}))
	do(t, s, "GET", "/")
	do(t, s, "GET", "/")
	assert.JSONEq(t, `{"requests":2,"in_flight":0,"timeouts":0,"late_running":0,"late_finished":0,"panics":0,"shed":0,"bad_deadline_headers":0,"spent_budgets":0,"client_gone":0}`, stats.String())
}

// A snapshot whose InFlight has fallen to zero counts the handlers that
// ran in full: a late handler, here one that panics (the slowest way to
// return), leaves InFlight last.
func TestStats_InFlight_falls_last(t *testing.T) {
	t.Parallel()
	for _, mode := range []fasttimeout.Mode{fasttimeout.Racing, fasttimeout.Cooperative} {
		t.Run(mode.String(), func(t *testing.T) {
			t.Parallel()
			stats := new(fasttimeout.Stats)
			release, pastDeadline := make(chan struct{}), make(chan struct{})
			h := fasttimeout.New(func(ctx *fasthttp.RequestCtx) {
				<-fasttimeout.Context(ctx).Done()
				close(pastDeadline)
				<-release
				panic("late")
			}, fasttimeout.Config{
				Timeout: actInTime, Mode: mode, Stats: stats, // the handler must run, its budget not spent on arrival
				OnPanic: func(*fasthttp.RequestCtx, any, []byte) {},
			})
			s := serve(t, h)
			answered := make(chan int, 1)
			go func() {
				code, _, err := s.client.GetTimeout(nil, "http://test/", 10*time.Second)
				if err != nil {
					code = 0
				}
				answered <- code
			}()
			receive(t, pastDeadline, "handler past its deadline")
			require.EqualValues(t, 1, stats.Snapshot().InFlight)

			// Spin on snapshots while the handler returns, as a scraper
			// might, and keep the first one without it in flight.
			seen, spinning := make(chan fasttimeout.Counters, 1), make(chan struct{})
			go func() {
				close(spinning)
				giveUp := time.Now().Add(10 * time.Second)
				for {
					c := stats.Snapshot()
					if c.InFlight == 0 || time.Now().After(giveUp) {
						seen <- c
						return
					}
				}
			}()
			<-spinning
			close(release)
			c := receive(t, seen, "the handler's report")
			require.Zero(t, c.InFlight, "the handler did not return within 10 s")
			assert.EqualValues(t, 1, c.LateFinished)
			assert.Zero(t, c.LateRunning)
			assert.EqualValues(t, 1, c.Panics)
			assert.EqualValues(t, 1, c.Timeouts)
			assert.Equal(t, fasthttp.StatusGatewayTimeout, receive(t, answered, "the answer"))
		})
	}
}

// The counters every request updates are spread over stripes by
// connection: over many connections, both while handlers run and once
// they have returned, they must add up to what was served.
func TestStats_counts_the_requests_of_many_connections(t *testing.T) {
	t.Parallel()
	const conns, more = 40, 10 // more connections than stripes
	for _, mode := range allModes {
		t.Run(mode.String(), func(t *testing.T) {
			t.Parallel()
			stats := new(fasttimeout.Stats)
			release := make(chan struct{})
			server := startStressLoopback(t, fasttimeout.New(func(ctx *fasthttp.RequestCtx) {
				if string(ctx.Path()) == "/block" {
					<-release
				}
				replyWithSecret(ctx, "fast", string(ctx.Request.Header.Peek("X-Secret")))
			}, fasttimeout.Config{Timeout: time.Minute, Mode: mode, Stats: stats, MaxConcurrency: 10 * conns}))
			releaseAll := sync.OnceFunc(func() { close(release) })
			t.Cleanup(releaseAll) // before the server's shutdown, if the test fails early

			errs := make(chan error, conns)
			for i := range conns {
				go func() {
					c, err := dialStress(server.addr)
					if err != nil {
						errs <- err
						return
					}
					defer c.close()
					for j := range 1 + more {
						path := "/fast"
						if j == 0 {
							path = "/block"
						}
						secret := fmt.Sprintf("S%08x%08x", i, j)
						if err := c.do(path, secret); err != nil {
							errs <- err
							return
						}
						if got := string(c.resp.Body()); got != ownBody("fast", secret) {
							errs <- fmt.Errorf("%s: got %q", path, got)
							return
						}
					}
					errs <- nil
				}()
			}

			require.Eventually(t, func() bool { return stats.Snapshot().InFlight == conns }, stressBound, time.Millisecond,
				"every connection's blocked handler in flight")
			got := stats.Snapshot()
			assert.EqualValues(t, conns, got.Requests)
			assert.EqualValues(t, conns, got.Admitted)

			releaseAll()
			for range conns {
				require.NoError(t, receive(t, errs, "a connection's last answer"))
			}
			got = stats.Snapshot()
			assert.Zero(t, got.InFlight, "every handler has returned before its answer")
			assert.EqualValues(t, conns*(1+more), got.Requests)
			assert.EqualValues(t, conns*(1+more), got.Admitted)
		})
	}
}

// goroutineID returns the ID of the calling goroutine, as goroutineStacks
// keys it.
func goroutineID() string {
	buf := make([]byte, 64)
	buf = buf[:runtime.Stack(buf, false)]
	id, _, _ := strings.Cut(strings.TrimPrefix(string(buf), "goroutine "), " ")
	return id
}

// In racing mode, a request that timed out (or whose client hung up) is
// answered on the server goroutine, which observes AnswerLateness and calls
// OnTimeout (or OnHangup), while its late handler returns on its worker:
// the request leaves InFlight only once both are done, so that a snapshot
// whose InFlight is zero has it counted in full, whichever finishes first.
// Here the late handler returns while OnTimeout (OnHangup) still runs.
func TestStats_InFlight_falls_after_the_racing_answer(t *testing.T) {
	t.Parallel()
	for _, over := range []string{"timeout", "hang-up"} {
		t.Run(over, func(t *testing.T) {
			t.Parallel()
			if over == "hang-up" {
				requireHangups(t)
			}
			stats := new(fasttimeout.Stats)
			worker, answering, release := make(chan string, 1), make(chan struct{}), make(chan struct{})
			releaseOnce := sync.OnceFunc(func() { close(release) })
			t.Cleanup(releaseOnce) // before the server's shutdown, if the test fails early
			cfg := fasttimeout.Config{
				Timeout: actInTime, // the handler must run, its budget not spent on arrival
				Stats:   stats,
				OnTimeout: func(*fasthttp.RequestCtx, *fasthttp.Response) {
					close(answering)
					<-release
				},
				OnHangup: func(*fasthttp.RequestCtx, time.Duration) {
					close(answering)
					<-release
				},
			}
			if over == "hang-up" {
				cfg.Timeout = time.Minute
			}
			server := startStressLoopback(t, fasttimeout.New(func(ctx *fasthttp.RequestCtx) {
				done := fasttimeout.Context(ctx).Done()
				worker <- goroutineID()
				<-done
			}, cfg))
			conn := sendRaw(t, server.addr, rawRequest("/"))
			id := receive(t, worker, "the handler's start")
			if over == "hang-up" {
				require.NoError(t, conn.Close())
			}
			receive(t, answering, "the "+over+" callback")

			require.Eventually(t, func() bool {
				return !strings.Contains(goroutineStacks()[id], "(*worker).serve")
			}, stressBound, time.Millisecond, "the late handler returns, its worker done with it")
			got := stats.Snapshot()
			assert.EqualValues(t, 1, got.LateFinished, "the late handler has returned")
			assert.EqualValues(t, 1, got.InFlight, "the request is answered only once the callback returns")

			releaseOnce()
			require.Eventually(t, func() bool { return stats.Snapshot().InFlight == 0 }, stressBound, time.Millisecond)
			got = stats.Snapshot()
			assert.EqualValues(t, 1, got.Timeouts+got.ClientGone)
			assert.EqualValues(t, got.Timeouts, stats.AnswerLateness().Count)
			if over == "timeout" {
				resp := readResponse(t, conn)
				assert.Equal(t, fasttimeout.DefaultStatusCode, resp.StatusCode())
			}
		})
	}
}

// A snapshot is read counter by counter while requests are counted, as a
// scraper reads it; still, a count that is part of another never exceeds
// it: SpentBudgets of Timeouts, which the middleware adds to first. Spent
// budgets are answered (grpc-timeout 0S) as fast as a goroutine can, while
// another takes snapshots; bounded by counts, not by time.
func TestStats_a_snapshot_never_counts_a_part_above_its_whole(t *testing.T) {
	t.Parallel()
	stats := new(fasttimeout.Stats)
	h := fasttimeout.New(func(*fasthttp.RequestCtx) { t.Error("a spent budget ran") },
		fasttimeout.Config{Timeout: time.Minute, Stats: stats, HonorDeadlineHeaders: true})
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		var req fasthttp.Request
		req.Header.Set(fasttimeout.HeaderGRPCTimeout, "0S")
		var ctx fasthttp.RequestCtx
		for {
			select {
			case <-stop:
				return
			default:
			}
			ctx.Init(&req, nil, nil)
			h(&ctx)
		}
	})
	defer wg.Wait()
	defer close(stop)
	for range 200_000 {
		c := stats.Snapshot()
		if c.SpentBudgets > c.Timeouts {
			t.Fatalf("SpentBudgets %d above Timeouts %d", c.SpentBudgets, c.Timeouts)
		}
	}
	require.Positive(t, stats.Snapshot().SpentBudgets, "no spent budget answered")
}

// TestStats_shared_by_several_middlewares: one Stats may serve several
// middlewares, and nested News sharing one each count the request (see
// Config.Stats).
func TestStats_shared_by_several_middlewares(t *testing.T) {
	t.Parallel()
	for _, mode := range allModes {
		t.Run(mode.String(), func(t *testing.T) {
			t.Parallel()
			stats := new(fasttimeout.Stats)
			cfg := fasttimeout.Config{Mode: mode, Timeout: waitTimeout, Stats: stats}
			ok := func(ctx *fasthttp.RequestCtx) { ctx.SetBodyString("ok") }
			nested := fasttimeout.New(fasttimeout.New(ok, cfg), cfg)
			other := fasttimeout.New(ok, cfg)
			s := serve(t, func(ctx *fasthttp.RequestCtx) {
				if string(ctx.Path()) == "/nested" {
					nested(ctx)
					return
				}
				other(ctx)
			})

			status, body, _ := s.get(t, "/nested")
			require.Equal(t, fasthttp.StatusOK, status)
			require.Equal(t, "ok", body)
			assert.Equal(t, int64(2), stats.Snapshot().Requests, "each of the nested News counts the request")
			status, _, _ = s.get(t, "/other")
			require.Equal(t, fasthttp.StatusOK, status)
			c := stats.Snapshot()
			assert.Equal(t, int64(3), c.Requests, "the other middleware counts into the same Stats")
			assert.Zero(t, c.InFlight)
		})
	}
}
