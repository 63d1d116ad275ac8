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
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/fasttimeout/fasttimeout"
	fasttimeoutotel "github.com/fasttimeout/fasttimeout/otel"
)

// A client that hangs up over a real TCP connection (the only kind whose
// hang-up can be seen) gives the span a client-gone event, then the late
// return of the handler, which honours its context.
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
		server := &fasthttp.Server{Handler: fasttimeoutotel.Middleware(
			fasttimeout.New(fasttimeoutotel.Handler(app), fasttimeout.Config{Timeout: time.Minute, Mode: mode}),
			provider.Tracer("test"))}
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		served := make(chan error, 1)
		go func() { served <- server.Serve(ln) }()

		conn, err := net.Dial("tcp", ln.Addr().String())
		require.NoError(t, err)
		_, err = conn.Write([]byte("GET /wait HTTP/1.1\r\nHost: app\r\n\r\n"))
		require.NoError(t, err)
		<-entered
		require.NoError(t, conn.Close())

		var span sdktrace.ReadOnlySpan
		select {
		case span = <-ended:
		case <-time.After(10 * time.Second):
			t.Fatalf("%v: no span ended within 10 s of the hang-up", mode)
		}
		assert.Equal(t, []string{fasttimeoutotel.EventClientGone, fasttimeoutotel.EventLateReturn}, eventNames(span), mode)
		assert.Equal(t, codes.Error, span.Status().Code)
		assert.Equal(t, fasttimeout.ErrClientGone.Error(), attrs(span.Events()[0])[fasttimeoutotel.AttrCause].AsString())
		require.NoError(t, server.Shutdown())
		require.NoError(t, <-served)
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
	entered, start := make(chan struct{}), make(chan struct{})
	returned := make(chan struct{})
	server := &fasthttp.Server{Handler: fasttimeoutotel.Middleware(
		fasttimeout.New(func(ctx *fasthttp.RequestCtx) {
			close(entered)
			<-start // the worker starts the traced handler only now
			inner(ctx)
			close(returned)
		}, fasttimeout.Config{Timeout: time.Minute}),
		provider.Tracer("test"))}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	served := make(chan error, 1)
	go func() { served <- server.Serve(ln) }()

	conn, err := net.Dial("tcp", ln.Addr().String())
	require.NoError(t, err)
	_, err = conn.Write([]byte("GET / HTTP/1.1\r\nHost: app\r\n\r\n"))
	require.NoError(t, err)
	<-entered
	require.NoError(t, conn.Close())

	var span sdktrace.ReadOnlySpan
	select {
	case span = <-ended:
	case <-time.After(10 * time.Second):
		t.Fatal("no span ended within 10 s of the hang-up")
	}
	assert.Equal(t, []string{fasttimeoutotel.EventClientGone}, eventNames(span))
	assert.Equal(t, codes.Error, span.Status().Code)
	assert.Equal(t, fasttimeout.ErrClientGone.Error(), attrs(span.Events()[0])[fasttimeoutotel.AttrCause].AsString())
	close(start)
	<-returned
	select {
	case span := <-ended:
		t.Fatalf("span %q ended twice", span.Name())
	default:
	}
	require.NoError(t, server.Shutdown())
	require.NoError(t, <-served)
	require.NoError(t, provider.Shutdown(context.Background()))
}
