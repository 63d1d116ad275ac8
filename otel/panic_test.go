package fasttimeoutotel_test

import (
	"context"
	"errors"
	"net"
	"runtime"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/fasthttputil"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/fasttimeout/fasttimeout"
	fasttimeoutotel "github.com/fasttimeout/fasttimeout/otel"
)

// panicValue is a named type, whose exception.type is its full name.
type panicValue struct{ reason string }

// A handler that panics before its deadline: fasttimeout lets the panic go
// on (racing mode re-raises it on the server goroutine), through
// Middleware, to a recover middleware outside it that answers 500. The span
// records the panic as OpenTelemetry's conventions record an exception (an
// "exception" event with exception.type and exception.message, error.type
// the exception's type, the status Error), once, and the panic reaches the
// recover middleware with its own value: a span ended with no status and
// no error.type would look as if nothing had happened. So too for a span of
// Attach's whose end is deferred, as its godoc shows it.
func TestMiddlewareRecordsAPanicInTime(t *testing.T) {
	t.Parallel()
	boom := errors.New("boom")
	tests := []struct {
		name     string
		mode     fasttimeout.Mode
		attach   bool // the span is Attach's, with defer end(), not Middleware's
		value    any
		wantType string
		wantMsg  string
	}{
		{name: "racing_an_error", value: boom, wantType: "*errors.errorString", wantMsg: "boom"},
		{name: "racing_a_string", value: "boom", wantType: "string", wantMsg: "boom"},
		{name: "racing_a_named_type", value: panicValue{"boom"},
			wantType: "github.com/fasttimeout/fasttimeout/otel_test.panicValue", wantMsg: "{boom}"},
		{name: "cooperative_an_error", mode: fasttimeout.Cooperative, value: boom, wantType: "*errors.errorString", wantMsg: "boom"},
		{name: "Attach_racing_an_error", attach: true, value: boom, wantType: "*errors.errorString", wantMsg: "boom"},
		{name: "Attach_cooperative_a_string", mode: fasttimeout.Cooperative, attach: true, value: "boom", wantType: "string", wantMsg: "boom"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ended := make(chan sdktrace.ReadOnlySpan, 10)
			provider := sdktrace.NewTracerProvider(
				sdktrace.WithSampler(sdktrace.AlwaysSample()),
				sdktrace.WithSpanProcessor(endSignal{ended}),
			)
			recovered := make(chan any, 1)
			// An hour: the panic is in time however loaded the machine.
			handler := fasttimeout.New(fasttimeoutotel.Handler(func(*fasthttp.RequestCtx) {
				panic(tc.value)
			}), fasttimeout.Config{Timeout: time.Hour, Mode: tc.mode})
			traced := fasttimeoutotel.Middleware(handler, provider.Tracer("test"))
			if tc.attach {
				traced = func(ctx *fasthttp.RequestCtx) {
					c, _ := provider.Tracer("test").Start(context.Background(), "GET")
					end := fasttimeoutotel.Attach(ctx, c)
					defer end()
					handler(ctx)
				}
			}
			server := &fasthttp.Server{Handler: func(ctx *fasthttp.RequestCtx) {
				defer func() {
					if v := recover(); v != nil {
						recovered <- v
						ctx.Error("internal server error", fasthttp.StatusInternalServerError)
					}
				}()
				traced(ctx)
			}}
			ln := fasthttputil.NewInmemoryListener()
			served := make(chan error, 1)
			go func() { served <- server.Serve(ln) }()
			client := &fasthttp.Client{
				Dial:                      func(string) (net.Conn, error) { return ln.Dial() },
				MaxIdemponentCallAttempts: 1,
			}
			t.Cleanup(func() {
				client.CloseIdleConnections()
				require.NoError(t, server.Shutdown())
				require.NoError(t, <-served)
				require.NoError(t, provider.Shutdown(context.Background()))
			})

			status, _, err := client.GetTimeout(nil, "http://app/", 10*time.Second)
			require.NoError(t, err)
			assert.Equal(t, fasthttp.StatusInternalServerError, status)
			select {
			case v := <-recovered:
				assert.Equal(t, tc.value, v, "the panic's value, passed on")
			default:
				t.Fatal("the recover middleware saw no panic")
			}

			var span sdktrace.ReadOnlySpan
			select {
			case span = <-ended:
			case <-time.After(10 * time.Second):
				t.Fatal("no span ended within 10 s")
			}
			require.Equal(t, []string{"exception"}, eventNames(span))
			a := attrs(span.Events()[0])
			assert.Equal(t, tc.wantType, a["exception.type"].AsString())
			assert.Equal(t, tc.wantMsg, a["exception.message"].AsString())
			assert.Equal(t, codes.Error, span.Status().Code)
			assert.Equal(t, "panic: "+tc.wantMsg, span.Status().Description)
			got := map[attribute.Key]attribute.Value{}
			for _, kv := range span.Attributes() {
				got[kv.Key] = kv.Value
			}
			assert.Equal(t, tc.wantType, got["error.type"].AsString())
			// No answer was sent by the time the span ended: the recover
			// middleware's 500 is its own, not the span's to state.
			_, ok := got["http.response.status_code"]
			assert.False(t, ok, "http.response.status_code set")
		})
	}
}

// A handler that calls runtime.Goexit in time ends its request without an
// answer, as a panic does, and its span must say so: status Error and a
// stable error.type. In cooperative mode the Goexit goes through Middleware
// as such (recover returns nil). Racing mode raises it again on the server
// goroutine as a panic of fasttimeout.ErrHandlerGoexit, which was recorded
// as any panic, error.type "*errors.errorString" and an exception event: it
// is recorded as the Goexit it stands for, and goes on as it came.
func TestMiddlewareRecordsAGoexit(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		mode      fasttimeout.Mode
		recovered any // by a recover middleware outside
	}{
		{name: "racing", mode: fasttimeout.Racing, recovered: fasttimeout.ErrHandlerGoexit},
		{name: "cooperative", mode: fasttimeout.Cooperative, recovered: nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ended := make(chan sdktrace.ReadOnlySpan, 10)
			provider := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(endSignal{ended}))
			// An hour: the Goexit is in time however loaded the machine.
			traced := fasttimeoutotel.Middleware(fasttimeout.New(fasttimeoutotel.Handler(func(*fasthttp.RequestCtx) {
				runtime.Goexit()
			}), fasttimeout.Config{Timeout: time.Hour, Mode: tc.mode}), provider.Tracer("test"))
			recovered := make(chan any, 1)
			addr, shutdown := serveTCP(t, func(ctx *fasthttp.RequestCtx) {
				defer func() { recovered <- recover() }() // racing mode's panic; nil as a Goexit goes by
				traced(ctx)
			})
			client := &fasthttp.Client{Dial: func(string) (net.Conn, error) { return net.Dial("tcp", addr) }, MaxIdemponentCallAttempts: 1}
			_, _, _ = client.GetTimeout(nil, "http://app/", 10*time.Second) // an empty 200 or a closed connection

			span := endedSpan(t, ended, tc.name)
			assert.Equal(t, codes.Error, span.Status().Code)
			assert.Equal(t, "runtime.Goexit", span.Status().Description)
			assert.Equal(t, "runtime.Goexit", spanAttrs(span)["error.type"].AsString())
			assert.Empty(t, eventNames(span), "no exception event")
			assert.Equal(t, tc.recovered, <-recovered)
			client.CloseIdleConnections()
			shutdown()
			require.NoError(t, provider.Shutdown(context.Background()))
		})
	}
}
