// Config.HonorDeadlineHeaders through a real server: the deadline a caller
// sends (grpc-timeout, x-envoy-expected-rq-timeout-ms, Request-Timeout)
// bounds the handler. Their parsing alone is tested in headers_test.go.
package fasttimeout_test

import (
	"context"
	"fmt"
	"net"
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

func TestHonorDeadlineHeaders(t *testing.T) {
	t.Parallel()

	t.Run("the caller's smaller budget bounds the handler", func(t *testing.T) {
		t.Parallel()
		for _, mode := range allModes {
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
		for _, mode := range allModes {
			left := make(chan time.Duration, 1)
			s := serve(t, fasttimeout.New(func(ctx *fasthttp.RequestCtx) {
				deadline, ok := fasttimeout.Context(ctx).Deadline()
				assert.True(t, ok)
				left <- time.Until(deadline)
			}, fasttimeout.Config{Timeout: time.Hour, Mode: mode, HonorDeadlineHeaders: true, DeadlineMargin: time.Second}))

			resp := send(t, s, "grpc-timeout", "60S")
			require.Equal(t, fasthttp.StatusOK, resp.StatusCode())
			got := receive(t, left, "the handler's deadline")
			assert.LessOrEqual(t, got, 59*time.Second, mode)
			// Less however long a loaded machine took to run the handler.
			assert.Greater(t, got, 30*time.Second, mode)
		}
	})

	// Do writes Request-Timeout in whole seconds, rounded down, beside the
	// milliseconds of X-Envoy-Expected-Rq-Timeout-Ms: the next hop must not
	// lose the fraction, a second a hop down a chain of proxies.
	t.Run("a whole-second Request-Timeout gives way to the finer header within its second", func(t *testing.T) {
		t.Parallel()
		for _, mode := range allModes {
			deadlines := make(chan time.Time, 1)
			s := serve(t, fasttimeout.New(func(ctx *fasthttp.RequestCtx) {
				deadline, ok := fasttimeout.Context(ctx).Deadline()
				assert.True(t, ok)
				deadlines <- deadline
			}, fasttimeout.Config{Timeout: time.Hour, Mode: mode, HonorDeadlineHeaders: true}))

			req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
			req.SetRequestURI("http://test/api")
			req.Header.Set(fasttimeout.HeaderRequestTimeout, "60")
			req.Header.Set(fasttimeout.HeaderEnvoyExpectedTimeout, "60900")
			sent := time.Now()
			require.NoError(t, s.client.DoTimeout(req, resp, 10*time.Second))
			assert.Equal(t, fasthttp.StatusOK, resp.StatusCode())
			fasthttp.ReleaseRequest(req)
			fasthttp.ReleaseResponse(resp)
			// The budget counts from when the middleware saw the request,
			// after sent: 60.9 s from then at least, whatever the stall.
			assert.GreaterOrEqual(t, receive(t, deadlines, "the handler's deadline").Sub(sent), 60900*time.Millisecond, mode)
		}
	})

	t.Run("the configured timeout wins when it is smaller", func(t *testing.T) {
		t.Parallel()
		left := make(chan time.Duration, 1)
		s := serve(t, fasttimeout.New(func(ctx *fasthttp.RequestCtx) {
			d, ok := fasttimeout.Remaining(ctx)
			assert.True(t, ok)
			left <- d
		}, fasttimeout.Config{Timeout: 2 * time.Second, HonorDeadlineHeaders: true}))

		send(t, s, "grpc-timeout", "1H")
		assert.LessOrEqual(t, receive(t, left, "the handler's Remaining"), 2*time.Second)
	})

	t.Run("a spent budget is answered at once without running the handler", func(t *testing.T) {
		t.Parallel()
		for _, mode := range allModes {
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
				type answered struct {
					status int
					cause  error // of Context(ctx) in OnTimeout
				}
				timeouts := make(chan answered, 1)
				type seen struct {
					spent  bool
					reason string
				}
				outside := make(chan seen, 1)
				h := fasttimeout.New(func(ctx *fasthttp.RequestCtx) { called.Store(true) }, fasttimeout.Config{
					Timeout: time.Minute, Mode: mode, HonorDeadlineHeaders: true, DeadlineMargin: tc.margin, Stats: stats,
					OnTimeout: func(ctx *fasthttp.RequestCtx, resp *fasthttp.Response) {
						timeouts <- answered{resp.StatusCode(), context.Cause(fasttimeout.Context(ctx))}
					},
				})
				s := serve(t, func(ctx *fasthttp.RequestCtx) {
					h(ctx)
					outside <- seen{fasttimeout.SpentBudget(ctx), fasttimeout.RejectReason(ctx)}
				})

				resp := send(t, s, tc.header, tc.value)
				assert.Equal(t, fasthttp.StatusGatewayTimeout, resp.StatusCode(), "%v %s: %s", mode, tc.header, tc.value)
				assert.JSONEq(t, fasttimeout.DefaultBody, string(resp.Body()))
				assert.False(t, called.Load(), "handler called for %s: %s", tc.header, tc.value)
				a := receive(t, timeouts, fmt.Sprintf("OnTimeout call for %s: %s", tc.header, tc.value))
				assert.Equal(t, fasthttp.StatusGatewayTimeout, a.status, "OnTimeout sees the response")
				assert.ErrorIs(t, a.cause, fasttimeout.ErrTimeout, "OnTimeout's Context")
				c := stats.Snapshot()
				assert.Equal(t, int64(1), c.Timeouts)
				assert.Equal(t, int64(1), c.SpentBudgets, "counted apart from real timeouts")
				assert.Zero(t, c.BadDeadlineHeaders)
				o := receive(t, outside, "the middleware around")
				assert.True(t, o.spent, "SpentBudget")
				assert.Empty(t, o.reason, "not a refusal")
			}
		}
	})

	t.Run("the smallest budget of all headers and lines bounds the handler", func(t *testing.T) {
		t.Parallel()
		for _, headers := range [][]string{
			// The smallest is 10 s, time enough for the handler to answer
			// itself on a loaded machine.
			{"grpc-timeout", "30S", "x-envoy-expected-rq-timeout-ms", "10000"}, // a caller's grpc-timeout behind Envoy
			{"grpc-timeout", "30S", "grpc-timeout", "10000m"},
			{"Request-Timeout", "30", "x-envoy-expected-rq-timeout-ms", "50000", "Request-Timeout", "10"},
		} {
			left := make(chan time.Duration, 1)
			s := serve(t, fasttimeout.New(func(ctx *fasthttp.RequestCtx) {
				d, _ := fasttimeout.Remaining(ctx)
				left <- d
			}, fasttimeout.Config{Timeout: time.Minute, HonorDeadlineHeaders: true}))

			resp := send(t, s, headers...)
			require.Equal(t, fasthttp.StatusOK, resp.StatusCode(), headers)
			assert.LessOrEqual(t, receive(t, left, "the handler's Remaining"), 10*time.Second, headers)
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
			}, fasttimeout.Config{Timeout: time.Minute, HonorDeadlineHeaders: true, Stats: stats}))

			resp := send(t, s, header[0], header[1])
			require.Equal(t, fasthttp.StatusOK, resp.StatusCode(), header)
			d := receive(t, left, "the handler's Remaining")
			assert.Greater(t, d, 30*time.Second, header) // a minute, less a loaded machine's delay
			assert.LessOrEqual(t, d, time.Minute, header)
			assert.Zero(t, stats.Snapshot().BadDeadlineHeaders, "%s: %s is not malformed", header[0], header[1])
		}
	})

	t.Run("Envoy's 0 gives no budget, not a spent one", func(t *testing.T) {
		t.Parallel()
		for _, mode := range allModes {
			stats := new(fasttimeout.Stats)
			left := make(chan time.Duration, 1)
			s := serve(t, fasttimeout.New(func(ctx *fasthttp.RequestCtx) {
				d, _ := fasttimeout.Remaining(ctx)
				left <- d
			}, fasttimeout.Config{Timeout: time.Minute, Mode: mode, HonorDeadlineHeaders: true, Stats: stats}))

			resp := send(t, s, "x-envoy-expected-rq-timeout-ms", "0")
			require.Equal(t, fasthttp.StatusOK, resp.StatusCode(), mode)
			assert.Greater(t, receive(t, left, "the handler's Remaining"), 30*time.Second, "the configured timeout applies")
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
		for _, mode := range allModes {
			stats := new(fasttimeout.Stats)
			left := make(chan time.Duration, 1)
			s := serve(t, fasttimeout.New(func(ctx *fasthttp.RequestCtx) {
				d, ok := fasttimeout.Remaining(ctx)
				assert.True(t, ok)
				left <- d
			}, fasttimeout.Config{Timeout: time.Minute, Mode: mode, HonorDeadlineHeaders: true, Stats: stats}))

			for _, h := range hostile {
				resp := send(t, s, h[0], h[1])
				require.Equal(t, fasthttp.StatusOK, resp.StatusCode(), "%v %s: %q", mode, h[0], h[1])
				d := receive(t, left, "the handler's Remaining")
				assert.Greater(t, d, 30*time.Second, "%s: %q must leave the configured timeout", h[0], h[1])
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

		send(t, s, "grpc-timeout", "forever", "x-envoy-expected-rq-timeout-ms", "30000")
		d := receive(t, left, "the handler's Remaining")
		assert.LessOrEqual(t, d, 30*time.Second)
		assert.Greater(t, d, 15*time.Second) // 30 s, less a loaded machine's delay
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

// TestDeadlineMargin_is_ignored_without_HonorDeadlineHeaders: the margin is
// taken off a caller's budget only; without HonorDeadlineHeaders the
// deadline is the configured timeout after arrival, to the nanosecond,
// whatever the margin and the headers sent.
func TestDeadlineMargin_is_ignored_without_HonorDeadlineHeaders(t *testing.T) {
	t.Parallel()
	for _, mode := range allModes {
		t.Run(mode.String(), func(t *testing.T) {
			t.Parallel()
			timeout := make(chan time.Duration, 1)
			s := serve(t, fasttimeout.New(reportTimeout(timeout), fasttimeout.Config{Timeout: time.Minute, Mode: mode, DeadlineMargin: 30 * time.Second}))

			resp := send(t, s, "grpc-timeout", "60S")
			require.Equal(t, fasthttp.StatusOK, resp.StatusCode())
			assert.Equal(t, time.Minute, receive(t, timeout, "the handler's deadline"))
		})
	}
}
