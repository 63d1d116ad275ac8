package fasttimeout_test

import (
	"context"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/fasttimeout/fasttimeout"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/valyala/fasthttp"
)

// observed is what a handler saw of its context.
type observed struct {
	deadline   time.Time
	hasDL      bool
	err        error
	cause      error
	value      any
	same       bool
	beforeDone error

	childCause   error // of a context derived from it
	afterFuncRan bool  // a context.AfterFunc on it ran
}

func TestContext_inside_New(t *testing.T) {
	t.Parallel()
	for _, mode := range allModes {
		t.Run(mode.String()+"/done_is_closed_at_the_deadline", func(t *testing.T) {
			t.Parallel()
			seen := make(chan observed, 1)
			h := fasttimeout.New(func(ctx *fasthttp.RequestCtx) {
				ctx.SetUserValue("user", "ada")
				c := fasttimeout.Context(ctx)
				var o observed
				o.deadline, o.hasDL = c.Deadline()
				o.beforeDone = c.Err()
				o.value = c.Value("user")
				o.same = c == fasttimeout.Context(ctx)
				select {
				case <-c.Done():
				case <-time.After(waitTimeout):
				}
				o.err, o.cause = c.Err(), context.Cause(c)
				seen <- o
			}, fasttimeout.Config{Mode: mode, Timeout: actInTime}) // a context looked at before the deadline
			s := serve(t, h)

			before := time.Now()
			resp := do(t, s, "GET", "/")
			o := receive(t, seen, "the handler's report")
			assert.Equal(t, fasthttp.StatusGatewayTimeout, resp.StatusCode())
			require.True(t, o.hasDL)
			assert.WithinRange(t, o.deadline, before.Add(actInTime), time.Now().Add(actInTime))
			assert.NoError(t, o.beforeDone)
			assert.Equal(t, "ada", o.value)
			assert.True(t, o.same, "one context per request")
			assert.ErrorIs(t, o.err, context.DeadlineExceeded)
			assert.ErrorIs(t, o.cause, fasttimeout.ErrTimeout)
		})

		t.Run(mode.String()+"/cancelled_when_the_handler_returns", func(t *testing.T) {
			t.Parallel()
			kept := make(chan context.Context, 1)
			s := serve(t, fasttimeout.New(func(ctx *fasthttp.RequestCtx) {
				c := fasttimeout.Context(ctx)
				ctx.SetUserValue("user", "ada")
				assert.Equal(t, "ada", c.Value("user"))
				kept <- c
			}, fasttimeout.Config{Mode: mode}))
			assert.Equal(t, 200, do(t, s, "GET", "/").StatusCode())
			c := receive(t, kept, "the handler's context")
			receive(t, c.Done(), "cancellation of the context after the handler returned")
			assert.ErrorIs(t, c.Err(), context.Canceled)
			assert.ErrorIs(t, context.Cause(c), context.Canceled)
			assert.Nil(t, c.Value("user"), "the RequestCtx may be reused: values are gone")
		})

		t.Run(mode.String()+"/derived_contexts_inherit_the_cause", func(t *testing.T) {
			t.Parallel()
			seen := make(chan observed, 2)
			afterFunc := make(chan struct{})
			h := fasttimeout.New(func(ctx *fasthttp.RequestCtx) {
				parent := fasttimeout.Context(ctx)
				child, cancel := context.WithTimeout(parent, time.Hour)
				defer cancel()
				context.AfterFunc(parent, func() { close(afterFunc) })
				dl, ok := child.Deadline()
				<-child.Done()
				seen <- observed{err: child.Err(), cause: context.Cause(child), deadline: dl, hasDL: ok}
			}, fasttimeout.Config{Mode: mode, Timeout: actInTime}) // the handler must run
			s := serve(t, h)
			before := time.Now()
			do(t, s, "GET", "/")
			o := receive(t, seen, "the handler's look at its derived context")
			assert.ErrorIs(t, o.err, context.DeadlineExceeded)
			assert.ErrorIs(t, o.cause, fasttimeout.ErrTimeout)
			assert.True(t, o.hasDL)
			assert.WithinRange(t, o.deadline, before.Add(actInTime), time.Now().Add(actInTime),
				"the child keeps the request's earlier deadline")
			receive(t, afterFunc, "run of context.AfterFunc's function")
		})
	}
}

func TestContext_late_handler_sees_its_context_done_already(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	seen := make(chan observed, 1)
	h := fasttimeout.New(func(ctx *fasthttp.RequestCtx) {
		ctx.SetUserValue("user", "ada")
		<-release
		c := fasttimeout.Context(ctx) // first call after the deadline
		seen <- observed{err: c.Err(), cause: context.Cause(c), value: c.Value("user")}
	}, fasttimeout.Config{Timeout: actInTime}) // the handler must run
	s := serve(t, h)
	assert.Equal(t, fasthttp.StatusGatewayTimeout, do(t, s, "GET", "/").StatusCode())
	close(release)
	o := receive(t, seen, "the late handler's look at its context")
	assert.ErrorIs(t, o.err, context.DeadlineExceeded)
	assert.ErrorIs(t, o.cause, fasttimeout.ErrTimeout)
	assert.Equal(t, "ada", o.value, "the late handler still owns its RequestCtx")
}

func TestContext_outside_New(t *testing.T) {
	t.Parallel()
	t.Run("no_deadline_and_cancelled_on_shutdown", func(t *testing.T) {
		t.Parallel()
		started := make(chan struct{})
		seen := make(chan observed, 1)
		s := serve(t, func(ctx *fasthttp.RequestCtx) {
			ctx.SetUserValue("user", "ada")
			c := fasttimeout.Context(ctx)
			// Contexts derived from it end with it: the standard
			// library relies on its AfterFunc.
			child, cancel := context.WithCancel(c)
			defer cancel()
			ran := make(chan struct{})
			stop := context.AfterFunc(c, func() { close(ran) })
			defer stop()
			var o observed
			_, o.hasDL = c.Deadline()
			o.value = c.Value("user")
			close(started)
			select {
			case <-c.Done():
			case <-time.After(waitTimeout):
			}
			o.err = c.Err()
			o.cause = context.Cause(c)
			select {
			case <-child.Done():
				o.childCause = context.Cause(child)
			case <-time.After(waitTimeout):
			}
			select {
			case <-ran:
				o.afterFuncRan = true
			case <-time.After(waitTimeout):
			}
			seen <- o
		})
		go func() {
			req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
			req.SetRequestURI("http://test/")
			_ = s.client.DoTimeout(req, resp, waitTimeout)
		}()
		receive(t, started, "the handler's start")
		s.shutdown(t)
		o := receive(t, seen, "the handler's report")
		assert.False(t, o.hasDL)
		assert.Equal(t, "ada", o.value)
		assert.ErrorIs(t, o.err, context.Canceled)
		assert.ErrorIs(t, o.cause, fasttimeout.ErrShutdown)
		assert.ErrorIs(t, o.childCause, fasttimeout.ErrShutdown, "a derived context ends with it")
		assert.True(t, o.afterFuncRan, "context.AfterFunc runs at shutdown")
	})
	t.Run("zero_RequestCtx_does_not_panic", func(t *testing.T) {
		t.Parallel()
		var ctx fasthttp.RequestCtx
		c := fasttimeout.Context(&ctx)
		_, ok := c.Deadline()
		assert.False(t, ok)
		assert.Nil(t, c.Done(), "never cancelled")
		assert.NoError(t, c.Err())
		assert.Nil(t, c.Value("missing"))
		stop := context.AfterFunc(c, func() { t.Error("a context that is never cancelled ran its AfterFunc") })
		assert.True(t, stop(), "stop prevents the call")
		assert.False(t, stop(), "only once")
	})
	// fasthttp serves a connection's next request with the same RequestCtx:
	// a goroutine that kept the first request's context must not read the
	// second's values.
	t.Run("Value_ends_with_the_request", func(t *testing.T) {
		t.Parallel()
		type seen struct {
			ctx   *fasthttp.RequestCtx
			value any  // the first request's context's Value("user")
			same  bool // the first request's calls of Context agreed
		}
		var kept context.Context // the first request's, kept past its end
		seens := make(chan seen, 1)
		s := serve(t, func(ctx *fasthttp.RequestCtx) {
			if string(ctx.Path()) == "/first" {
				ctx.SetUserValue("user", "ada")
				kept = fasttimeout.Context(ctx)
				seens <- seen{ctx, kept.Value("user"), kept == fasttimeout.Context(ctx)}
				return
			}
			ctx.SetUserValue("user", "bob")
			seens <- seen{ctx: ctx, value: kept.Value("user")}
		})
		status, _, _ := s.get(t, "/first")
		require.Equal(t, fasthttp.StatusOK, status)
		first := receive(t, seens, "the first request")
		assert.Equal(t, "ada", first.value, "while the request runs")
		assert.True(t, first.same, "every call within the request returns the same context")
		status, _, _ = s.get(t, "/second")
		require.Equal(t, fasthttp.StatusOK, status)
		second := receive(t, seens, "the second request")
		require.Same(t, first.ctx, second.ctx, "fasthttp reused the RequestCtx")
		assert.Nil(t, second.value, "the first request's context reads nothing of the second")
		assert.NoError(t, kept.Err(), "cancelled only by shutdown")
	})
	t.Run("nil_RequestCtx_gives_Background", func(t *testing.T) {
		t.Parallel()
		assert.Equal(t, context.Background(), fasttimeout.Context(nil))
	})
}

// A goroutine of the handler may read its context's values while the
// handler returns: the middleware then changes the RequestCtx's user values,
// and fasthttp reuses it, so Value must stop reading it first.
func TestContext_Value_while_the_request_ends(t *testing.T) {
	t.Parallel()
	for _, mode := range allModes {
		t.Run(mode.String(), func(t *testing.T) {
			t.Parallel()
			var wg sync.WaitGroup
			s := serve(t, fasttimeout.New(func(ctx *fasthttp.RequestCtx) {
				ctx.SetUserValue("user", "ada")
				c := fasttimeout.Context(ctx)
				started := make(chan struct{})
				wg.Add(1)
				go func() {
					defer wg.Done()
					close(started)
					for {
						v := c.Value("user") // a logger or a tracer, say
						select {
						case <-c.Done():
							assert.Nil(t, c.Value("user"), "no value once the request is over")
							return
						default: // the request may be ending
							assert.Contains(t, []any{"ada", nil}, v)
						}
					}
				}()
				<-started
			}, fasttimeout.Config{Mode: mode}))
			for range 50 {
				assert.Equal(t, fasthttp.StatusOK, do(t, s, "GET", "/").StatusCode())
			}
			wg.Wait()
		})
	}
}

// A goroutine that keeps the context Context made outside New may read its
// Value while fasthttp resets the request for the next one: Value must stop
// reading the RequestCtx before fasthttp clears any user value, including
// those set before the context was made (a router's, say).
func TestContext_outside_Value_while_fasthttp_resets_the_request(t *testing.T) {
	t.Parallel()
	var wg sync.WaitGroup
	s := serve(t, func(ctx *fasthttp.RequestCtx) {
		ctx.SetUserValue("user", "ada") // before the context
		c := fasttimeout.Context(ctx)
		started := make(chan struct{})
		wg.Add(1)
		go func() {
			defer wg.Done()
			close(started)
			for {
				v := c.Value("user") // a logger or a tracer, after the handler has returned
				if v == nil {
					return
				}
				assert.Equal(t, "ada", v)
				runtime.Gosched()
			}
		}()
		<-started
	})
	for range 50 {
		assert.Equal(t, fasthttp.StatusOK, do(t, s, "GET", "/").StatusCode())
	}
	wg.Wait()
}

// TestContext_cooperative_Precision_above_100ms_ticks_every_100ms: the
// housekeeper that ends cooperative contexts ticks at most every 100 ms,
// whatever the Precision (see Config.Precision): with an hour's, a context
// still ends at its deadline, with cause ErrTimeout, not an hour later.
func TestContext_cooperative_Precision_above_100ms_ticks_every_100ms(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	cause := make(chan error, 1)
	s := serve(t, fasttimeout.New(func(ctx *fasthttp.RequestCtx) {
		c := fasttimeout.Context(ctx)
		select {
		case <-c.Done():
			cause <- context.Cause(c)
		case <-release: // the test's end: the context never ended
			cause <- nil
		}
	}, fasttimeout.Config{Mode: fasttimeout.Cooperative, Timeout: actInTime, Precision: time.Hour})) // the handler must run
	t.Cleanup(func() { close(release) }) // before the server's shutdown, which waits for the handler
	// The client's own bound (waitTimeout) fails the test if the context
	// waits for an hour's tick.
	resp := do(t, s, "GET", "/")
	assert.Equal(t, fasthttp.StatusGatewayTimeout, resp.StatusCode())
	assert.ErrorIs(t, receive(t, cause, "the handler's report"), fasttimeout.ErrTimeout)
}
