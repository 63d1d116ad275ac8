package fasttimeout_test

import (
	"context"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/fasthttputil"

	"github.com/fasttimeout/fasttimeout"
)

var modes = []fasttimeout.Mode{fasttimeout.Racing, fasttimeout.Cooperative}

// waitDone is a handler that blocks until its request context is done (the
// deadline, in a cooperative handler) or release is closed.
func waitDone(release <-chan struct{}) fasthttp.RequestHandler {
	return func(ctx *fasthttp.RequestCtx) {
		select {
		case <-fasttimeout.Context(ctx).Done():
		case <-release:
		}
	}
}

func TestHonorDeadlineHeaders(t *testing.T) {
	t.Parallel()

	t.Run("the caller's smaller budget bounds the handler", func(t *testing.T) {
		t.Parallel()
		for _, mode := range modes {
			for _, header := range [][2]string{
				{"grpc-timeout", "30m"},
				{"x-envoy-expected-rq-timeout-ms", "30"},
				{"Request-Timeout", "0.03"},
			} {
				release := make(chan struct{})
				stats := new(fasttimeout.Stats)
				s := serve(t, fasttimeout.New(waitDone(release), fasttimeout.Config{
					Timeout: time.Minute, Mode: mode, HonorDeadlineHeaders: true, Stats: stats,
				}))
				start := time.Now()
				resp := send(t, s, header[0], header[1])
				assert.Equal(t, fasthttp.StatusGatewayTimeout, resp.StatusCode(), "%v %s", mode, header[0])
				assert.Less(t, time.Since(start), 10*time.Second, "answered long before the configured minute")
				assert.Equal(t, int64(1), stats.Snapshot().Timeouts)
				close(release)
			}
		}
	})

	t.Run("the context deadline is the caller's budget less the margin", func(t *testing.T) {
		t.Parallel()
		for _, mode := range modes {
			left := make(chan time.Duration, 1)
			s := serve(t, fasttimeout.New(func(ctx *fasthttp.RequestCtx) {
				deadline, ok := fasttimeout.Context(ctx).Deadline()
				require.True(t, ok)
				left <- time.Until(deadline)
			}, fasttimeout.Config{Timeout: time.Minute, Mode: mode, HonorDeadlineHeaders: true, DeadlineMargin: time.Second}))

			resp := send(t, s, "grpc-timeout", "5S")
			require.Equal(t, fasthttp.StatusOK, resp.StatusCode())
			got := <-left
			assert.LessOrEqual(t, got, 4*time.Second, mode)
			assert.Greater(t, got, 3*time.Second, mode)
		}
	})

	t.Run("the configured timeout wins when it is smaller", func(t *testing.T) {
		t.Parallel()
		left := make(chan time.Duration, 1)
		s := serve(t, fasttimeout.New(func(ctx *fasthttp.RequestCtx) {
			d, ok := fasttimeout.Remaining(ctx)
			require.True(t, ok)
			left <- d
		}, fasttimeout.Config{Timeout: 2 * time.Second, HonorDeadlineHeaders: true}))

		send(t, s, "grpc-timeout", "1H")
		assert.LessOrEqual(t, <-left, 2*time.Second)
	})

	t.Run("a spent budget is answered at once without running the handler", func(t *testing.T) {
		t.Parallel()
		for _, mode := range modes {
			for _, tc := range []struct {
				header, value string
				margin        time.Duration
			}{
				{"grpc-timeout", "0S", 0},
				{"grpc-timeout", "0n", 0},
				{"x-envoy-expected-rq-timeout-ms", "1", time.Millisecond}, // Envoy's "time is up"
				{"Request-Timeout", "0.0", 0},
				{"grpc-timeout", "50m", 50 * time.Millisecond}, // all of it taken by the margin
				{"x-envoy-expected-rq-timeout-ms", "10", time.Second},
			} {
				var called atomic.Bool
				stats := new(fasttimeout.Stats)
				timeouts := make(chan int, 1)
				s := serve(t, fasttimeout.New(func(ctx *fasthttp.RequestCtx) { called.Store(true) }, fasttimeout.Config{
					Timeout: time.Minute, Mode: mode, HonorDeadlineHeaders: true, DeadlineMargin: tc.margin, Stats: stats,
					OnTimeout: func(_ *fasthttp.RequestCtx, resp *fasthttp.Response) { timeouts <- resp.StatusCode() },
				}))

				resp := send(t, s, tc.header, tc.value)
				assert.Equal(t, fasthttp.StatusGatewayTimeout, resp.StatusCode(), "%v %s: %s", mode, tc.header, tc.value)
				assert.JSONEq(t, fasttimeout.DefaultBody, string(resp.Body()))
				assert.False(t, called.Load(), "handler called for %s: %s", tc.header, tc.value)
				select {
				case status := <-timeouts:
					assert.Equal(t, fasthttp.StatusGatewayTimeout, status, "OnTimeout sees the response")
				case <-time.After(waitTimeout):
					t.Fatalf("OnTimeout not called for %s: %s", tc.header, tc.value)
				}
				c := stats.Snapshot()
				assert.Equal(t, int64(1), c.Timeouts)
				assert.Equal(t, int64(1), c.SpentBudgets, "counted apart from real timeouts")
				assert.Zero(t, c.BadDeadlineHeaders)
			}
		}
	})

	t.Run("the smallest budget of all headers and lines bounds the handler", func(t *testing.T) {
		t.Parallel()
		for _, headers := range [][]string{
			{"grpc-timeout", "3S", "x-envoy-expected-rq-timeout-ms", "100"}, // a caller's grpc-timeout behind Envoy
			{"grpc-timeout", "3S", "grpc-timeout", "100m"},
			{"Request-Timeout", "3", "x-envoy-expected-rq-timeout-ms", "5000", "Request-Timeout", "0.1"},
		} {
			left := make(chan time.Duration, 1)
			s := serve(t, fasttimeout.New(func(ctx *fasthttp.RequestCtx) {
				d, _ := fasttimeout.Remaining(ctx)
				left <- d
			}, fasttimeout.Config{Timeout: time.Minute, HonorDeadlineHeaders: true}))

			resp := send(t, s, headers...)
			require.Equal(t, fasthttp.StatusOK, resp.StatusCode(), headers)
			assert.LessOrEqual(t, <-left, 100*time.Millisecond, headers)
		}
	})

	t.Run("values beyond 24h are valid and do not shorten the timeout", func(t *testing.T) {
		t.Parallel()
		for _, header := range [][2]string{
			{"grpc-timeout", "25H"},
			{"grpc-timeout", "108000S"}, // what grpc-go sends for 30 hours
			{"grpc-timeout", "99999999H"},
			{"x-envoy-expected-rq-timeout-ms", "90000000"},
			{"Request-Timeout", "86401"},
		} {
			stats := new(fasttimeout.Stats)
			left := make(chan time.Duration, 1)
			s := serve(t, fasttimeout.New(func(ctx *fasthttp.RequestCtx) {
				d, _ := fasttimeout.Remaining(ctx)
				left <- d
			}, fasttimeout.Config{Timeout: 2 * time.Second, HonorDeadlineHeaders: true, Stats: stats}))

			resp := send(t, s, header[0], header[1])
			require.Equal(t, fasthttp.StatusOK, resp.StatusCode(), header)
			d := <-left
			assert.Greater(t, d, time.Second, header)
			assert.LessOrEqual(t, d, 2*time.Second, header)
			assert.Zero(t, stats.Snapshot().BadDeadlineHeaders, "%s: %s is not malformed", header[0], header[1])
		}
	})

	t.Run("Envoy's 0 gives no budget, not a spent one", func(t *testing.T) {
		t.Parallel()
		for _, mode := range modes {
			stats := new(fasttimeout.Stats)
			left := make(chan time.Duration, 1)
			s := serve(t, fasttimeout.New(func(ctx *fasthttp.RequestCtx) {
				d, _ := fasttimeout.Remaining(ctx)
				left <- d
			}, fasttimeout.Config{Timeout: 2 * time.Second, Mode: mode, HonorDeadlineHeaders: true, Stats: stats}))

			resp := send(t, s, "x-envoy-expected-rq-timeout-ms", "0")
			require.Equal(t, fasthttp.StatusOK, resp.StatusCode(), mode)
			assert.Greater(t, <-left, time.Second, "the configured timeout applies")
			c := stats.Snapshot()
			assert.Zero(t, c.Timeouts)
			assert.Zero(t, c.SpentBudgets)
			assert.Zero(t, c.BadDeadlineHeaders)
		}
	})

	t.Run("hostile values are ignored and counted", func(t *testing.T) {
		t.Parallel()
		hostile := [][2]string{
			{"grpc-timeout", "soon"},
			{"grpc-timeout", "123456789S"}, // 9 digits
			{"grpc-timeout", "-5S"},
			{"grpc-timeout", "5 S"},
			{"grpc-timeout", "٥S"}, // an Arabic-Indic five
			{"grpc-timeout", "5s"},
			{"grpc-timeout", ""},
			{"x-envoy-expected-rq-timeout-ms", "-1"},
			{"x-envoy-expected-rq-timeout-ms", "1e3"},
			{"x-envoy-expected-rq-timeout-ms", strings.Repeat("9", 2000)},
			{"x-envoy-expected-rq-timeout-ms", "9223372036854775808"},
			{"x-envoy-expected-rq-timeout-ms", "１０"}, // full-width digits
			{"Request-Timeout", "NaN"},
			{"Request-Timeout", "Inf"},
			{"Request-Timeout", "-0.5"},
			{"Request-Timeout", "1 0"},
			{"Request-Timeout", "1\t0"}, // a tab inside
		}
		for _, mode := range modes {
			stats := new(fasttimeout.Stats)
			left := make(chan time.Duration, 1)
			s := serve(t, fasttimeout.New(func(ctx *fasthttp.RequestCtx) {
				d, ok := fasttimeout.Remaining(ctx)
				require.True(t, ok)
				left <- d
			}, fasttimeout.Config{Timeout: 2 * time.Second, Mode: mode, HonorDeadlineHeaders: true, Stats: stats}))

			for _, h := range hostile {
				resp := send(t, s, h[0], h[1])
				require.Equal(t, fasthttp.StatusOK, resp.StatusCode(), "%v %s: %q", mode, h[0], h[1])
				d := <-left
				assert.Greater(t, d, time.Second, "%s: %q must leave the configured timeout", h[0], h[1])
			}
			c := stats.Snapshot()
			assert.Equal(t, int64(len(hostile)), c.BadDeadlineHeaders, mode)
			assert.Zero(t, c.Timeouts, mode)
		}
	})

	t.Run("a malformed header gives way to the next valid one", func(t *testing.T) {
		t.Parallel()
		stats := new(fasttimeout.Stats)
		left := make(chan time.Duration, 1)
		s := serve(t, fasttimeout.New(func(ctx *fasthttp.RequestCtx) {
			d, _ := fasttimeout.Remaining(ctx)
			left <- d
		}, fasttimeout.Config{Timeout: time.Minute, HonorDeadlineHeaders: true, Stats: stats}))

		send(t, s, "grpc-timeout", "forever", "x-envoy-expected-rq-timeout-ms", "3000")
		d := <-left
		assert.LessOrEqual(t, d, 3*time.Second)
		assert.Greater(t, d, 2*time.Second)
		assert.Equal(t, int64(1), stats.Snapshot().BadDeadlineHeaders)
	})

	t.Run("headers are ignored unless enabled", func(t *testing.T) {
		t.Parallel()
		stats := new(fasttimeout.Stats)
		var called atomic.Bool
		s := serve(t, fasttimeout.New(func(ctx *fasthttp.RequestCtx) { called.Store(true) }, fasttimeout.Config{Stats: stats}))

		resp := send(t, s, "grpc-timeout", "0S", "Request-Timeout", "garbage")
		assert.Equal(t, fasthttp.StatusOK, resp.StatusCode())
		assert.True(t, called.Load())
		assert.Zero(t, stats.Snapshot().BadDeadlineHeaders)
	})
}

func TestTimeoutFunc(t *testing.T) {
	t.Parallel()

	t.Run("chooses the timeout per path", func(t *testing.T) {
		t.Parallel()
		for _, mode := range modes {
			release := make(chan struct{})
			s := serve(t, fasttimeout.New(waitDone(release), fasttimeout.Config{
				Timeout: time.Minute,
				Mode:    mode,
				TimeoutFunc: func(ctx *fasthttp.RequestCtx) time.Duration {
					if string(ctx.Path()) == "/quick" {
						return 20 * time.Millisecond
					}
					return 0 // the configured minute
				},
			}))
			status, _, _ := s.get(t, "/quick")
			assert.Equal(t, fasthttp.StatusGatewayTimeout, status, mode)
			close(release)
		}
	})

	t.Run("zero or negative means the configured timeout", func(t *testing.T) {
		t.Parallel()
		for _, d := range []time.Duration{0, -time.Second} {
			left := make(chan time.Duration, 1)
			s := serve(t, fasttimeout.New(func(ctx *fasthttp.RequestCtx) {
				r, _ := fasttimeout.Remaining(ctx)
				left <- r
			}, fasttimeout.Config{Timeout: 3 * time.Second, TimeoutFunc: func(*fasthttp.RequestCtx) time.Duration { return d }}))
			s.get(t, "/")
			r := <-left
			assert.LessOrEqual(t, r, 3*time.Second)
			assert.Greater(t, r, 2*time.Second)
		}
	})

	t.Run("the caller's budget still applies to a chosen timeout", func(t *testing.T) {
		t.Parallel()
		left := make(chan time.Duration, 1)
		s := serve(t, fasttimeout.New(func(ctx *fasthttp.RequestCtx) {
			r, _ := fasttimeout.Remaining(ctx)
			left <- r
		}, fasttimeout.Config{
			HonorDeadlineHeaders: true,
			TimeoutFunc:          func(*fasthttp.RequestCtx) time.Duration { return time.Hour },
		}))
		send(t, s, "grpc-timeout", "2S")
		assert.LessOrEqual(t, <-left, 2*time.Second)
	})
}

func TestSkip(t *testing.T) {
	t.Parallel()
	for _, mode := range modes {
		t.Run("skipped requests run without deadline, "+mode.String(), func(t *testing.T) {
			t.Parallel()
			stats := new(fasttimeout.Stats)
			type seen struct{ remaining, deadline bool }
			seenc := make(chan seen, 1)
			s := serve(t, fasttimeout.New(func(ctx *fasthttp.RequestCtx) {
				_, remaining := fasttimeout.Remaining(ctx)
				_, deadline := fasttimeout.Context(ctx).Deadline()
				seenc <- seen{remaining: remaining, deadline: deadline}
				if string(ctx.Path()) == "/health" {
					// Outlive the timeout: a skipped request is never answered 504.
					<-time.After(60 * time.Millisecond)
				}
			}, fasttimeout.Config{
				Timeout: 20 * time.Millisecond, Mode: mode, Stats: stats, HonorDeadlineHeaders: true,
				Skip: func(ctx *fasthttp.RequestCtx) bool { return string(ctx.Path()) == "/health" },
			}))

			status, _, _ := s.get(t, "/health")
			assert.Equal(t, fasthttp.StatusOK, status)
			assert.Equal(t, seen{}, <-seenc, "no deadline for a skipped request")
			s.get(t, "/api")
			assert.Equal(t, seen{remaining: true, deadline: true}, <-seenc)

			req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
			req.SetRequestURI("http://test/health")
			req.Header.Set("grpc-timeout", "0S")
			require.NoError(t, s.client.DoTimeout(req, resp, 10*time.Second))
			assert.Equal(t, fasthttp.StatusOK, resp.StatusCode(), "deadline headers do not apply to skipped requests")
			<-seenc
			fasthttp.ReleaseRequest(req)
			fasthttp.ReleaseResponse(resp)

			c := stats.Snapshot()
			assert.Equal(t, int64(3), c.Requests)
			assert.Zero(t, c.Timeouts)
		})
	}
}

func TestMaxLateHandlers(t *testing.T) {
	t.Parallel()

	t.Run("a flood of late handlers sheds new requests with 503 until they finish", func(t *testing.T) {
		t.Parallel()
		const maxLate = 4
		release := make(chan struct{})
		returned := make(chan time.Duration, maxLate)
		var handled atomic.Int64
		stats := new(fasttimeout.Stats)
		s := serve(t, fasttimeout.New(func(ctx *fasthttp.RequestCtx) {
			handled.Add(1)
			if string(ctx.Path()) == "/stuck" {
				<-release // ignores its context
			}
		}, fasttimeout.Config{
			Timeout:         20 * time.Millisecond,
			MaxLateHandlers: maxLate,
			RetryAfter:      1500 * time.Millisecond,
			Stats:           stats,
			OnLateReturn:    func(_ *fasthttp.RequestCtx, late time.Duration) { returned <- late },
		}))
		releaseOnce := func() {
			select {
			case <-release:
			default:
				close(release)
			}
		}
		t.Cleanup(releaseOnce)

		// Fill the cap: each stuck handler times out and keeps running.
		flood := make(chan int, maxLate)
		for range maxLate {
			go func() {
				status, _, _ := s.get(t, "/stuck")
				flood <- status
			}()
		}
		for range maxLate {
			assert.Equal(t, fasthttp.StatusGatewayTimeout, <-flood)
		}
		require.Equal(t, int64(maxLate), stats.Snapshot().LateRunning)

		// Full: new requests are refused at once, without running.
		handledBefore := handled.Load()
		for range 3 {
			req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
			req.SetRequestURI("http://test/ok")
			require.NoError(t, s.client.DoTimeout(req, resp, 10*time.Second))
			assert.Equal(t, fasthttp.StatusServiceUnavailable, resp.StatusCode())
			assert.Equal(t, "2", string(resp.Header.Peek(fasthttp.HeaderRetryAfter)), "1.5 s rounded up")
			assert.Equal(t, fasttimeout.ShedBody, string(resp.Body()))
			assert.Equal(t, "application/json", string(resp.Header.ContentType()))
			fasthttp.ReleaseRequest(req)
			fasthttp.ReleaseResponse(resp)
		}
		assert.Equal(t, handledBefore, handled.Load(), "shed requests do not run the handler")
		assert.Equal(t, int64(3), stats.Snapshot().Shed)

		// The late handlers finish: the server serves normally again.
		releaseOnce()
		for range maxLate {
			select {
			case late := <-returned:
				assert.Greater(t, late, time.Duration(0))
			case <-time.After(10 * time.Second):
				t.Fatal("late handlers did not return within 10s of their release")
			}
		}
		status, _, _ := s.get(t, "/ok")
		assert.Equal(t, fasthttp.StatusOK, status)
		c := stats.Snapshot()
		assert.Zero(t, c.LateRunning)
		assert.Equal(t, int64(maxLate), c.LateFinished)
		assert.Equal(t, int64(maxLate), c.Timeouts)
		assert.Equal(t, int64(3), c.Shed)
		assert.Equal(t, int64(maxLate+3+1), c.Requests)
	})

	t.Run("below the cap requests are served", func(t *testing.T) {
		t.Parallel()
		release := make(chan struct{})
		defer close(release)
		stats := new(fasttimeout.Stats)
		s := serve(t, fasttimeout.New(func(ctx *fasthttp.RequestCtx) {
			if string(ctx.Path()) == "/stuck" {
				<-release
			}
		}, fasttimeout.Config{Timeout: 20 * time.Millisecond, MaxLateHandlers: 2, Stats: stats}))

		status, _, _ := s.get(t, "/stuck")
		require.Equal(t, fasthttp.StatusGatewayTimeout, status)
		status, _, _ = s.get(t, "/ok")
		assert.Equal(t, fasthttp.StatusOK, status)
		assert.Zero(t, stats.Snapshot().Shed)
	})
}

func TestNetHTTPHandler(t *testing.T) {
	t.Parallel()

	for _, mode := range modes {
		t.Run("r.Context() carries the deadline and is cancelled with ErrTimeout, "+mode.String(), func(t *testing.T) {
			t.Parallel()
			type seen struct {
				left  time.Duration
				cause error
			}
			seenc := make(chan seen, 1)
			s := serve(t, fasttimeout.New(fasttimeout.NetHTTPHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				deadline, ok := r.Context().Deadline()
				require.True(t, ok)
				<-r.Context().Done()
				seenc <- seen{left: time.Until(deadline), cause: context.Cause(r.Context())}
			})), fasttimeout.Config{Timeout: 30 * time.Millisecond, Mode: mode}))

			status, _, _ := s.get(t, "/")
			assert.Equal(t, fasthttp.StatusGatewayTimeout, status)
			v := <-seenc
			assert.LessOrEqual(t, v.left, time.Duration(0))
			assert.ErrorIs(t, v.cause, fasttimeout.ErrTimeout)
		})
	}

	t.Run("a handler that finishes in time answers as written", func(t *testing.T) {
		t.Parallel()
		s := serve(t, fasttimeout.New(fasttimeout.NetHTTPHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/plain")
			w.WriteHeader(http.StatusCreated)
			_, _ = w.Write([]byte("created " + r.URL.Path))
		})), fasttimeout.Config{Timeout: time.Minute}))

		status, body, contentType := s.get(t, "/items")
		assert.Equal(t, fasthttp.StatusCreated, status)
		assert.Equal(t, "created /items", body)
		assert.Equal(t, "text/plain", contentType)
	})

	t.Run("r.Context() outside New is cancelled only by shutdown", func(t *testing.T) {
		t.Parallel()
		deadlines := make(chan bool, 1)
		s := serve(t, fasttimeout.NetHTTPHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			_, ok := r.Context().Deadline()
			deadlines <- ok
		})))
		status, _, _ := s.get(t, "/")
		assert.Equal(t, fasthttp.StatusOK, status)
		assert.False(t, <-deadlines)
	})

	t.Run("panics on a nil handler", func(t *testing.T) {
		t.Parallel()
		assert.PanicsWithValue(t, "fasttimeout: NetHTTPHandler needs a handler, got nil", func() { fasttimeout.NetHTTPHandler(nil) })
	})
}

func TestHonorDeadlineHeaders_lower_case_names_on_a_server_that_keeps_names(t *testing.T) {
	t.Parallel()
	var called atomic.Bool
	h := fasttimeout.New(func(ctx *fasthttp.RequestCtx) {
		called.Store(true)
		ctx.SetBodyString("ran")
	}, fasttimeout.Config{HonorDeadlineHeaders: true})
	ln := fasthttputil.NewInmemoryListener()
	server := &fasthttp.Server{Handler: h, DisableHeaderNamesNormalizing: true}
	served := make(chan error, 1)
	go func() { served <- server.Serve(ln) }()
	t.Cleanup(func() {
		require.NoError(t, server.Shutdown())
		require.NoError(t, <-served)
	})
	client := &fasthttp.Client{Dial: func(string) (net.Conn, error) { return ln.Dial() }}

	for _, name := range []string{"grpc-timeout", "Grpc-Timeout"} {
		req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
		req.Header.DisableNormalizing()
		req.SetRequestURI("http://test/")
		req.Header.Set(name, "0S") // the caller's time is already spent
		require.NoError(t, client.DoTimeout(req, resp, waitTimeout))
		assert.Equal(t, fasthttp.StatusGatewayTimeout, resp.StatusCode(), name)
		fasthttp.ReleaseRequest(req)
		fasthttp.ReleaseResponse(resp)
	}
	assert.False(t, called.Load(), "a spent budget is answered without running the handler")
}
