package fasttimeout_test

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/valyala/fasthttp"

	"github.com/fasttimeout/fasttimeout"
)

// echoBudget is an upstream that answers with the deadline headers it got.
func echoBudget(calls *atomic.Int64) fasthttp.RequestHandler {
	return func(ctx *fasthttp.RequestCtx) {
		calls.Add(1)
		for _, name := range []string{fasttimeout.HeaderEnvoyExpectedTimeout, fasttimeout.HeaderGRPCTimeout, fasttimeout.HeaderRequestTimeout} {
			if v := ctx.Request.Header.Peek(name); v != nil {
				ctx.Response.Header.SetBytesV("Got-"+name, v)
			}
		}
		ctx.SetBodyString("upstream")
	}
}

// proxyTo returns a handler that forwards the incoming request's headers to
// upstream with fasttimeout.Do and sends the upstream's answer back, or
// 504/502 on an error, which it also reports on errs if not nil.
func proxyTo(upstream fasttimeout.Doer, errs chan<- error) fasthttp.RequestHandler {
	return func(ctx *fasthttp.RequestCtx) {
		req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
		defer fasthttp.ReleaseRequest(req)
		defer fasthttp.ReleaseResponse(resp)
		ctx.Request.Header.CopyTo(&req.Header)
		req.SetRequestURI("http://upstream/")
		err := fasttimeout.Do(ctx, upstream, req, resp)
		if errs != nil {
			errs <- err
		}
		switch {
		case errors.Is(err, fasttimeout.ErrTimeout):
			ctx.SetStatusCode(fasthttp.StatusGatewayTimeout)
		case err != nil:
			ctx.SetStatusCode(fasthttp.StatusBadGateway)
		default:
			resp.CopyTo(&ctx.Response)
		}
	}
}

// send sends GET / with the given header pairs and returns the response.
func send(t testing.TB, s *testServer, kv ...string) *fasthttp.Response {
	t.Helper()
	req, resp := fasthttp.AcquireRequest(), new(fasthttp.Response)
	defer fasthttp.ReleaseRequest(req)
	req.SetRequestURI("http://test/")
	for i := 0; i < len(kv); i += 2 {
		req.Header.Add(kv[i], kv[i+1]) // Add: a name may come more than once
	}
	require.NoError(t, s.client.DoTimeout(req, resp, waitTimeout))
	return resp
}

func millis(t testing.TB, v []byte) time.Duration {
	t.Helper()
	ms, err := strconv.ParseInt(string(v), 10, 64)
	require.NoError(t, err, "header value %q", v)
	return time.Duration(ms) * time.Millisecond
}

func TestDo(t *testing.T) {
	t.Parallel()

	t.Run("tells the upstream the time left in X-Envoy-Expected-Rq-Timeout-Ms", func(t *testing.T) {
		t.Parallel()
		var calls atomic.Int64
		upstream := serve(t, echoBudget(&calls))
		gateway := serve(t, fasttimeout.New(proxyTo(upstream.client, nil), fasttimeout.Config{Timeout: 2 * time.Second}))

		resp := send(t, gateway)
		require.Equal(t, fasthttp.StatusOK, resp.StatusCode())
		budget := millis(t, resp.Header.Peek("Got-"+fasttimeout.HeaderEnvoyExpectedTimeout))
		assert.Greater(t, budget, time.Duration(0))
		assert.LessOrEqual(t, budget, 2*time.Second)
		assert.Nil(t, resp.Header.Peek("Got-"+fasttimeout.HeaderGRPCTimeout), "no grpc-timeout is added")
		assert.Nil(t, resp.Header.Peek("Got-"+fasttimeout.HeaderRequestTimeout), "no Request-Timeout is added")
	})

	t.Run("passes on the caller's smaller budget and rewrites its stale deadline headers", func(t *testing.T) {
		t.Parallel()
		for _, mode := range []fasttimeout.Mode{fasttimeout.Racing, fasttimeout.Cooperative} {
			var calls atomic.Int64
			upstream := serve(t, echoBudget(&calls))
			gateway := serve(t, fasttimeout.New(proxyTo(upstream.client, nil), fasttimeout.Config{
				Timeout: time.Minute, Mode: mode, HonorDeadlineHeaders: true, DeadlineMargin: 100 * time.Millisecond,
			}))

			resp := send(t, gateway, "grpc-timeout", "3S", "Request-Timeout", "3")
			require.Equal(t, fasthttp.StatusOK, resp.StatusCode(), mode)
			envoy := millis(t, resp.Header.Peek("Got-"+fasttimeout.HeaderEnvoyExpectedTimeout))
			assert.LessOrEqual(t, envoy, 2900*time.Millisecond, "caller's 3 s less the 100 ms margin")
			assert.Greater(t, envoy, 2*time.Second)

			grpc := string(resp.Header.Peek("Got-" + fasttimeout.HeaderGRPCTimeout))
			assert.Equal(t, strconv.FormatInt(envoy.Milliseconds(), 10)+"m", grpc, "grpc-timeout rewritten")
			assert.Equal(t, strconv.FormatInt(envoy.Milliseconds()/1000, 10), string(resp.Header.Peek("Got-"+fasttimeout.HeaderRequestTimeout)),
				"Request-Timeout rewritten in whole seconds, rounded down")
		}
	})

	t.Run("never raises a deadline the outgoing request already carries", func(t *testing.T) {
		t.Parallel()
		for _, tc := range []struct {
			name    string
			timeout time.Duration
			headers []string
			// want: the headers the upstream gets; "" for absent, "<=N" for
			// at most N (the time left, which shrinks as the call runs).
			want map[string]string
		}{
			{
				name: "a caller's grpc-timeout under the server's timeout", timeout: 5 * time.Second,
				headers: []string{"grpc-timeout", "100m"},
				want:    map[string]string{fasttimeout.HeaderGRPCTimeout: "100m", fasttimeout.HeaderEnvoyExpectedTimeout: "100", fasttimeout.HeaderRequestTimeout: ""},
			},
			{
				name: "a caller's Request-Timeout under the server's timeout", timeout: 5 * time.Second,
				headers: []string{"Request-Timeout", "2"},
				want:    map[string]string{fasttimeout.HeaderRequestTimeout: "2", fasttimeout.HeaderEnvoyExpectedTimeout: "2000", fasttimeout.HeaderGRPCTimeout: ""},
			},
			{
				name: "a caller's Envoy budget under the server's timeout", timeout: 5 * time.Second,
				headers: []string{"x-envoy-expected-rq-timeout-ms", "300"},
				want:    map[string]string{fasttimeout.HeaderEnvoyExpectedTimeout: "300"},
			},
			{
				name: "the smallest of several headers and lines", timeout: 5 * time.Second,
				headers: []string{"grpc-timeout", "3S", "grpc-timeout", "250m", "Request-Timeout", "4", "x-envoy-expected-rq-timeout-ms", "900"},
				want:    map[string]string{fasttimeout.HeaderGRPCTimeout: "250m", fasttimeout.HeaderEnvoyExpectedTimeout: "250", fasttimeout.HeaderRequestTimeout: ""},
			},
			{
				name: "the server's time left when it is shorter", timeout: 1500 * time.Millisecond,
				headers: []string{"grpc-timeout", "1H", "Request-Timeout", "3"},
				want:    map[string]string{fasttimeout.HeaderGRPCTimeout: "<=1500m", fasttimeout.HeaderEnvoyExpectedTimeout: "<=1500", fasttimeout.HeaderRequestTimeout: "1"},
			},
			{
				name: "Request-Timeout in whole seconds, removed under one second", timeout: 5 * time.Second,
				headers: []string{"Request-Timeout", "0.694"},
				want:    map[string]string{fasttimeout.HeaderRequestTimeout: "", fasttimeout.HeaderEnvoyExpectedTimeout: "694"},
			},
			{
				name: "Envoy's 0 carries no deadline", timeout: 2 * time.Second,
				headers: []string{"x-envoy-expected-rq-timeout-ms", "0"},
				want:    map[string]string{fasttimeout.HeaderEnvoyExpectedTimeout: "<=2000"},
			},
		} {
			t.Run(tc.name, func(t *testing.T) {
				t.Parallel()
				var calls atomic.Int64
				upstream := serve(t, echoBudget(&calls))
				// The server does not honour the caller's headers: Do alone
				// must keep them from growing.
				gateway := serve(t, fasttimeout.New(proxyTo(upstream.client, nil), fasttimeout.Config{Timeout: tc.timeout}))

				resp := send(t, gateway, tc.headers...)
				require.Equal(t, fasthttp.StatusOK, resp.StatusCode())
				for name, want := range tc.want {
					got := resp.Header.Peek("Got-" + name)
					switch {
					case want == "":
						assert.Nil(t, got, "%s: %q", name, got)
					case strings.HasPrefix(want, "<="):
						limit, unit := strings.TrimPrefix(want, "<="), ""
						if strings.HasSuffix(limit, "m") {
							limit, unit = strings.TrimSuffix(limit, "m"), "m"
						}
						require.True(t, strings.HasSuffix(string(got), unit), "%s: %q", name, got)
						n, err := strconv.Atoi(strings.TrimSuffix(string(got), unit))
						require.NoError(t, err, "%s: %q", name, got)
						most, _ := strconv.Atoi(limit)
						assert.LessOrEqual(t, n, most, name)
						assert.Positive(t, n, name)
					default:
						assert.Equal(t, want, string(got), name)
					}
				}
			})
		}
	})

	// The deadline Do gives the client is the request's own, not the time
	// left measured some instructions earlier and added to the clock again:
	// whatever passes in between (a preemption, a GC assist) would be given
	// to the upstream on top of the request's time.
	t.Run("gives the upstream no deadline later than the request's", func(t *testing.T) {
		t.Parallel()
		for _, tc := range []struct {
			name   string
			mode   fasttimeout.Mode
			nested bool
			extend bool
		}{
			{name: "racing", mode: fasttimeout.Racing},
			{name: "cooperative", mode: fasttimeout.Cooperative},
			{name: "inside another New", mode: fasttimeout.Racing, nested: true},
			{name: "after Extend", mode: fasttimeout.Cooperative, extend: true},
		} {
			t.Run(tc.name, func(t *testing.T) {
				t.Parallel()
				type deadlines struct{ request, upstream time.Time }
				got := make(chan deadlines, 1)
				var h fasthttp.RequestHandler = func(ctx *fasthttp.RequestCtx) {
					if tc.extend {
						assert.True(t, fasttimeout.Extend(ctx, time.Minute))
					}
					request, ok := fasttimeout.Context(ctx).Deadline()
					assert.True(t, ok, "the request has a deadline")
					var upstream time.Time
					req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
					defer fasthttp.ReleaseRequest(req)
					defer fasthttp.ReleaseResponse(resp)
					assert.NoError(t, fasttimeout.Do(ctx, doerFunc(func(_ *fasthttp.Request, _ *fasthttp.Response, deadline time.Time) error {
						upstream = deadline
						return nil
					}), req, resp))
					got <- deadlines{request, upstream}
				}
				h = fasttimeout.New(h, fasttimeout.Config{Timeout: time.Minute, Mode: tc.mode})
				if tc.nested {
					h = fasttimeout.New(h, fasttimeout.Config{Timeout: 2 * time.Minute})
				}
				s := serve(t, h)
				code, _, _ := s.get(t, "/")
				require.Equal(t, fasthttp.StatusOK, code)
				d := receive(t, got, "the deadlines")
				assert.False(t, d.upstream.After(d.request), "upstream deadline %s after the request's",
					d.upstream.Sub(d.request))
			})
		}
	})

	t.Run("does not call the upstream when the carried deadline is spent", func(t *testing.T) {
		t.Parallel()
		var calls atomic.Int64
		upstream := serve(t, echoBudget(&calls))
		errs := make(chan error, 1)
		gateway := serve(t, fasttimeout.New(proxyTo(upstream.client, errs), fasttimeout.Config{Timeout: time.Minute}))

		resp := send(t, gateway, "grpc-timeout", "0n")
		assert.Equal(t, fasthttp.StatusGatewayTimeout, resp.StatusCode())
		assert.ErrorIs(t, receive(t, errs, "the error"), fasttimeout.ErrTimeout)
		assert.Zero(t, calls.Load(), "upstream calls")
	})

	t.Run("answers 504 with an ErrTimeout when the upstream is slower than the budget", func(t *testing.T) {
		t.Parallel()
		for _, mode := range []fasttimeout.Mode{fasttimeout.Racing, fasttimeout.Cooperative} {
			release := make(chan struct{})
			upstream := serve(t, func(ctx *fasthttp.RequestCtx) { <-release })
			errs := make(chan error, 1)
			// actInTime: the upstream call must start before the deadline,
			// for the client's own timeout error to be kept.
			gateway := serve(t, fasttimeout.New(proxyTo(upstream.client, errs), fasttimeout.Config{Timeout: actInTime, Mode: mode}))

			resp := send(t, gateway)
			assert.Equal(t, fasthttp.StatusGatewayTimeout, resp.StatusCode(), mode)
			select {
			case err := <-errs:
				assert.ErrorIs(t, err, fasttimeout.ErrTimeout, mode)
				assert.ErrorIs(t, err, fasthttp.ErrTimeout, "the client's own error is kept")
			case <-time.After(5 * time.Second):
				t.Fatal("the upstream call did not return within 5s of its deadline")
			}
			close(release)
		}
	})

	// The client's own ReadTimeout, shorter than the request's budget, is
	// not the request's deadline: the request has time left, and its
	// context has not ended. ErrTimeout is the request's timeout, the
	// context's cause; the client's error stays as it is, for the caller to
	// answer as it sees fit (nginx answers 504 for proxy_read_timeout).
	t.Run("keeps a timeout of the client's own, before the budget's end, apart from ErrTimeout", func(t *testing.T) {
		t.Parallel()
		for _, mode := range []fasttimeout.Mode{fasttimeout.Racing, fasttimeout.Cooperative} {
			release := make(chan struct{})
			upstream := serve(t, func(ctx *fasthttp.RequestCtx) { <-release })
			t.Cleanup(func() { close(release) }) // before the upstream's shutdown
			slow := &fasthttp.Client{
				Dial:                      upstream.client.Dial,
				ReadTimeout:               50 * time.Millisecond, // the budget is a minute
				MaxIdemponentCallAttempts: 1,
			}
			errs := make(chan error, 1)
			gateway := serve(t, fasttimeout.New(proxyTo(slow, errs), fasttimeout.Config{Timeout: time.Minute, Mode: mode}))

			resp := send(t, gateway)
			err := receive(t, errs, "the proxy's error")
			assert.ErrorIs(t, err, fasthttp.ErrTimeout, "%v: the client's own error", mode)
			assert.NotErrorIs(t, err, fasttimeout.ErrTimeout, "%v: the request has time left", mode)
			assert.Equal(t, fasthttp.StatusBadGateway, resp.StatusCode(), "%v: the test's proxy answers 502 for other errors", mode)
		}
	})

	t.Run("does not call the upstream once the budget is spent", func(t *testing.T) {
		t.Parallel()
		var calls atomic.Int64
		upstream := serve(t, echoBudget(&calls))
		errs := make(chan error, 1)
		proxy := proxyTo(upstream.client, errs)
		gateway := serve(t, fasttimeout.New(func(ctx *fasthttp.RequestCtx) {
			<-fasttimeout.Context(ctx).Done() // cooperative: wait out the deadline
			proxy(ctx)
		}, fasttimeout.Config{Timeout: actInTime, Mode: fasttimeout.Cooperative})) // the handler must run

		resp := send(t, gateway)
		assert.Equal(t, fasthttp.StatusGatewayTimeout, resp.StatusCode())
		err := receive(t, errs, "the proxy's error")
		assert.ErrorIs(t, err, fasttimeout.ErrTimeout)
		assert.NotErrorIs(t, err, fasthttp.ErrTimeout, "the client was not called")
		assert.Zero(t, calls.Load(), "upstream calls")
	})

	t.Run("does not call the upstream once the client has hung up", func(t *testing.T) {
		requireHangups(t)
		t.Parallel()
		for _, tc := range []struct {
			name   string
			mode   fasttimeout.Mode
			disarm bool
			nested bool // the handler's New inside another, which watches the client
		}{
			{name: "racing", mode: fasttimeout.Racing},
			{name: "cooperative", mode: fasttimeout.Cooperative},
			{name: "disarmed", mode: fasttimeout.Racing, disarm: true},
			{name: "inside another New", mode: fasttimeout.Racing, nested: true},
		} {
			t.Run(tc.name, func(t *testing.T) {
				t.Parallel()
				var calls atomic.Int64
				upstream := serve(t, echoBudget(&calls))
				errs := make(chan error, 1)
				proxy := proxyTo(upstream.client, errs)
				started := make(chan struct{}, 1)
				handler := fasttimeout.New(func(ctx *fasthttp.RequestCtx) {
					if tc.disarm {
						fasttimeout.Disarm(ctx)
					}
					c := fasttimeout.Context(ctx)
					started <- struct{}{}
					select {
					case <-c.Done(): // the hang-up
					case <-time.After(stressBound):
					}
					proxy(ctx) // a second upstream call, or a retry
				}, fasttimeout.Config{Timeout: time.Minute, Mode: tc.mode})
				if tc.nested {
					handler = fasttimeout.New(handler, fasttimeout.Config{Timeout: time.Minute})
				}
				gateway := startStressLoopback(t, handler)

				conn := sendRaw(t, gateway.addr, rawRequest("/"))
				receive(t, started, "the handler's start")
				require.NoError(t, conn.Close())
				err := receive(t, errs, "the proxy's error")
				assert.ErrorIs(t, err, fasttimeout.ErrClientGone)
				assert.ErrorIs(t, err, context.Canceled, "as the context's Err")
				assert.NotErrorIs(t, err, fasttimeout.ErrTimeout, "not a timeout: no 504")
				assert.Zero(t, calls.Load(), "upstream calls")
			})
		}
	})

	// Inside New, Do does not call the upstream once the server is shutting
	// down. Outside New there is no call to look at: Do is c.Do, shutdown
	// or not (its godoc once said that a shutdown still stopped it).
	t.Run("calls the upstream during a shutdown only outside New", func(t *testing.T) {
		t.Parallel()
		inside := func(h fasthttp.RequestHandler) fasthttp.RequestHandler {
			return fasttimeout.New(h, fasttimeout.Config{Timeout: time.Minute})
		}
		for _, tc := range []struct {
			name    string
			wrap    func(fasthttp.RequestHandler) fasthttp.RequestHandler
			request string
			calls   bool // the upstream is called, and Do returns its nil error
		}{
			{name: "with time left", wrap: inside, request: rawRequest("/")},
			// The request's deadline is a minute away: the shutdown, not a
			// timeout, ends its context, however little of the caller's
			// budget the outgoing request carries.
			{
				name: "with under a millisecond left for the upstream", wrap: inside,
				request: "GET / HTTP/1.1\r\nHost: hangup.test\r\ngrpc-timeout: 500u\r\n\r\n",
			},
			{name: "no New", wrap: func(h fasthttp.RequestHandler) fasthttp.RequestHandler { return h }, request: rawRequest("/"), calls: true},
			{name: "skipped by New", wrap: func(h fasthttp.RequestHandler) fasthttp.RequestHandler {
				return fasttimeout.New(h, fasttimeout.Config{Timeout: time.Minute, Skip: func(*fasthttp.RequestCtx) bool { return true }})
			}, request: rawRequest("/"), calls: true},
		} {
			t.Run(tc.name, func(t *testing.T) {
				t.Parallel()
				var calls atomic.Int64
				upstream := serve(t, echoBudget(&calls))
				errs := make(chan error, 1)
				proxy := proxyTo(upstream.client, errs)
				started := make(chan struct{}, 1)
				gateway := startStressLoopback(t, tc.wrap(func(ctx *fasthttp.RequestCtx) {
					c := fasttimeout.Context(ctx)
					started <- struct{}{}
					select {
					case <-c.Done(): // the shutdown
					case <-time.After(stressBound):
					}
					proxy(ctx)
				}))

				sendRaw(t, gateway.addr, tc.request)
				receive(t, started, "the handler's start")
				shutdown := make(chan error, 1)
				go func() { shutdown <- gateway.shutdown() }()
				err := receive(t, errs, "the proxy's error")
				if tc.calls {
					assert.NoError(t, err)
					assert.Equal(t, int64(1), calls.Load(), "upstream calls")
				} else {
					assert.ErrorIs(t, err, fasttimeout.ErrShutdown)
					assert.ErrorIs(t, err, context.Canceled, "as the context's Err")
					assert.NotErrorIs(t, err, fasttimeout.ErrTimeout)
					assert.Zero(t, calls.Load(), "upstream calls")
				}
				assert.NoError(t, receive(t, shutdown, "the end of the shutdown"))
			})
		}
	})

	t.Run("passes other upstream errors through unchanged", func(t *testing.T) {
		t.Parallel()
		errs := make(chan error, 1)
		broken := doerFunc(func(*fasthttp.Request, *fasthttp.Response, time.Time) error { return errBroken })
		gateway := serve(t, fasttimeout.New(proxyTo(broken, errs), fasttimeout.Config{Timeout: time.Minute}))

		resp := send(t, gateway)
		assert.Equal(t, fasthttp.StatusBadGateway, resp.StatusCode())
		err := receive(t, errs, "the error")
		assert.Same(t, errBroken, err)
	})

	t.Run("is a plain Do outside New and after Disarm", func(t *testing.T) {
		t.Parallel()
		var calls atomic.Int64
		upstream := serve(t, echoBudget(&calls))
		proxy := proxyTo(upstream.client, nil)
		bare := serve(t, proxy)
		disarmed := serve(t, fasttimeout.New(func(ctx *fasthttp.RequestCtx) {
			assert.True(t, fasttimeout.Disarm(ctx))
			proxy(ctx)
		}, fasttimeout.Config{Timeout: time.Minute}))

		for _, s := range []*testServer{bare, disarmed} {
			resp := send(t, s, "grpc-timeout", "3S")
			require.Equal(t, fasthttp.StatusOK, resp.StatusCode())
			assert.Nil(t, resp.Header.Peek("Got-"+fasttimeout.HeaderEnvoyExpectedTimeout))
			assert.Equal(t, "3S", string(resp.Header.Peek("Got-"+fasttimeout.HeaderGRPCTimeout)), "headers left as they are")
		}
	})
}

var errBroken = errors.New("connection refused")

// doerFunc is a Doer whose Do never runs.
type doerFunc func(req *fasthttp.Request, resp *fasthttp.Response, deadline time.Time) error

func (f doerFunc) Do(req *fasthttp.Request, resp *fasthttp.Response) error {
	return f(req, resp, time.Time{})
}

func (f doerFunc) DoDeadline(req *fasthttp.Request, resp *fasthttp.Response, deadline time.Time) error {
	return f(req, resp, deadline)
}

func TestDoDoesNotAllocate(t *testing.T) {
	upstream := nopDoer{}
	handler := fasttimeout.New(func(ctx *fasthttp.RequestCtx) {
		var req fasthttp.Request
		var resp fasthttp.Response
		req.Header.Set(fasttimeout.HeaderGRPCTimeout, "5S")
		req.Header.Set(fasttimeout.HeaderRequestTimeout, "5")
		_ = fasttimeout.Do(ctx, upstream, &req, &resp) // warm up the header's buffers
		allocs := testing.AllocsPerRun(100, func() { _ = fasttimeout.Do(ctx, upstream, &req, &resp) })
		assert.Zero(t, allocs)
	}, fasttimeout.Config{Timeout: time.Minute, Mode: fasttimeout.Cooperative})
	var ctx fasthttp.RequestCtx
	ctx.Init(new(fasthttp.Request), nil, nil)
	handler(&ctx)
}

type nopDoer struct{}

func (nopDoer) Do(*fasthttp.Request, *fasthttp.Response) error                    { return nil }
func (nopDoer) DoDeadline(*fasthttp.Request, *fasthttp.Response, time.Time) error { return nil }
