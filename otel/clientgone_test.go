package fasttimeoutotel_test

import (
	"context"
	"net"
	"runtime"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/valyala/fasthttp"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/fasttimeout/fasttimeout"
	fasttimeoutotel "github.com/fasttimeout/fasttimeout/otel"
)

// serveTCP serves handler over a real TCP connection (the only kind whose
// hang-up can be seen), and returns its address and a function that shuts it
// down and waits for Serve.
func serveTCP(t *testing.T, handler fasthttp.RequestHandler) (addr string, shutdown func()) {
	t.Helper()
	server := &fasthttp.Server{Handler: handler}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	served := make(chan error, 1)
	go func() { served <- server.Serve(ln) }()
	return ln.Addr().String(), func() {
		require.NoError(t, server.Shutdown())
		require.NoError(t, <-served)
	}
}

// hangUp sends a request to addr and closes the connection once entered
// says that its handler runs.
func hangUp(t *testing.T, addr string, entered <-chan struct{}) {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	_, err = conn.Write([]byte("GET /wait HTTP/1.1\r\nHost: app\r\n\r\n"))
	require.NoError(t, err)
	<-entered
	require.NoError(t, conn.Close())
}

// endedSpan waits for the span sent on ended.
func endedSpan(t *testing.T, ended <-chan sdktrace.ReadOnlySpan, what string) sdktrace.ReadOnlySpan {
	t.Helper()
	select {
	case span := <-ended:
		return span
	case <-time.After(10 * time.Second):
		t.Fatalf("no span ended within 10 s of the hang-up: %s", what)
		return nil
	}
}

// spanAttrs returns the span's attributes by key.
func spanAttrs(span sdktrace.ReadOnlySpan) map[attribute.Key]attribute.Value {
	m := map[attribute.Key]attribute.Value{}
	for _, kv := range span.Attributes() {
		m[kv.Key] = kv.Value
	}
	return m
}

// A client that hangs up gives the span a client-gone event, then the late
// return of the handler, which honours its context. The request failed, if
// with a 4xx: the span says why in error.type.
func TestHandlerRecordsClientGone(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("hang-ups are watched on Linux only")
	}
	t.Parallel()
	ended := make(chan sdktrace.ReadOnlySpan, 1)
	provider := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(endSignal{ended}))
	entered := make(chan struct{}, 1)
	app := func(ctx *fasthttp.RequestCtx) {
		done := fasttimeout.Context(ctx).Done()
		entered <- struct{}{}
		<-done
	}
	for _, mode := range []fasttimeout.Mode{fasttimeout.Racing, fasttimeout.Cooperative} {
		addr, shutdown := serveTCP(t, fasttimeoutotel.Middleware(
			fasttimeout.New(fasttimeoutotel.Handler(app), fasttimeout.Config{Timeout: time.Minute, Mode: mode}),
			provider.Tracer("test")))
		hangUp(t, addr, entered)
		span := endedSpan(t, ended, mode.String())
		assert.Equal(t, []string{fasttimeoutotel.EventClientGone, fasttimeoutotel.EventLateReturn}, eventNames(span), mode)
		assert.Equal(t, codes.Error, span.Status().Code)
		assert.Equal(t, fasttimeout.ErrClientGone.Error(), attrs(span.Events()[0])[fasttimeoutotel.AttrCause].AsString())
		assert.Equal(t, fasttimeoutotel.EventClientGone, spanAttrs(span)["error.type"].AsString(), mode)
		shutdown()
	}
	require.NoError(t, provider.Shutdown(context.Background()))
}

// On a starved process a racing handler may start only after its client
// hung up and the middleware answered: the span gets the hang-up all the
// same, and ends without waiting for the handler.
func TestAttachRecordsClientGoneBeforeTheHandlerStarts(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("hang-ups are watched on Linux only")
	}
	t.Parallel()
	ended := make(chan sdktrace.ReadOnlySpan, 1)
	provider := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(endSignal{ended}))
	inner := fasttimeoutotel.Handler(func(*fasthttp.RequestCtx) {})
	entered, start, returned := make(chan struct{}), make(chan struct{}), make(chan struct{})
	addr, shutdown := serveTCP(t, fasttimeoutotel.Middleware(
		fasttimeout.New(func(ctx *fasthttp.RequestCtx) {
			close(entered)
			<-start // the worker starts the traced handler only now
			inner(ctx)
			close(returned)
		}, fasttimeout.Config{Timeout: time.Minute}),
		provider.Tracer("test")))
	hangUp(t, addr, entered)
	span := endedSpan(t, ended, "racing")
	assert.Equal(t, []string{fasttimeoutotel.EventClientGone}, eventNames(span))
	assert.Equal(t, codes.Error, span.Status().Code)
	assert.Equal(t, fasttimeout.ErrClientGone.Error(), attrs(span.Events()[0])[fasttimeoutotel.AttrCause].AsString())
	assert.Equal(t, fasttimeoutotel.EventClientGone, spanAttrs(span)["error.type"].AsString())
	close(start)
	<-returned
	select {
	case span := <-ended:
		t.Fatalf("span %q ended twice", span.Name())
	default:
	}
	shutdown()
	require.NoError(t, provider.Shutdown(context.Background()))
}

// Handler's next returns in time, and the client hangs up while what runs
// after it inside fasttimeout.New still works: the span gets the hang-up,
// whichever mode answered it. In cooperative mode, which answers in the
// response rather than with a timeout response, it ended with no event.
func TestMiddlewareRecordsClientGoneAfterHandlerReturned(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("hang-ups are watched on Linux only")
	}
	t.Parallel()
	ended := make(chan sdktrace.ReadOnlySpan, 1)
	provider := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(endSignal{ended}))
	inner := fasttimeoutotel.Handler(func(ctx *fasthttp.RequestCtx) { ctx.SetBodyString("ok") })
	entered := make(chan struct{}, 1)
	for _, mode := range []fasttimeout.Mode{fasttimeout.Racing, fasttimeout.Cooperative} {
		addr, shutdown := serveTCP(t, fasttimeoutotel.Middleware(
			fasttimeout.New(func(ctx *fasthttp.RequestCtx) {
				inner(ctx)
				done := fasttimeout.Context(ctx).Done()
				entered <- struct{}{}
				<-done // work after Handler, until the client leaves
			}, fasttimeout.Config{Timeout: time.Minute, Mode: mode}),
			provider.Tracer("test")))
		hangUp(t, addr, entered)
		span := endedSpan(t, ended, mode.String())
		require.Equal(t, []string{fasttimeoutotel.EventClientGone}, eventNames(span), mode)
		assert.Equal(t, codes.Error, span.Status().Code, mode)
		assert.Equal(t, fasttimeoutotel.EventClientGone, spanAttrs(span)["error.type"].AsString(), mode)
		// The minute Handler's next had when it started (racing mode
		// recorded 0, as for a handler that never started).
		timeout := attrs(span.Events()[0])[fasttimeoutotel.AttrTimeout].AsFloat64()
		assert.Greater(t, timeout, 0.0, mode)
		assert.LessOrEqual(t, timeout, time.Minute.Seconds(), mode)
		shutdown()
	}
	require.NoError(t, provider.Shutdown(context.Background()))
}
