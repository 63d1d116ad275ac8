package fasttimeoutotel_test

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/fasthttputil"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/fasttimeout/fasttimeout"
	fasttimeoutotel "github.com/fasttimeout/fasttimeout/otel"
)

// Handler's next returns in time, but what runs after it inside
// fasttimeout.New (a middleware between New and Handler: compression,
// logging) takes the request past its deadline, and the client gets the
// timeout response. Handler, back in time, recorded nothing, and Attach's end
// left the span to it: the span of a 504 ended with no event and status
// Unset.
func TestMiddlewareRecordsATimeoutAfterHandlerReturned(t *testing.T) {
	for _, mode := range []fasttimeout.Mode{fasttimeout.Racing, fasttimeout.Cooperative} {
		t.Run(mode.String(), func(t *testing.T) { testTimeoutAfterHandlerReturned(t, mode) })
	}
}

func testTimeoutAfterHandlerReturned(t *testing.T, mode fasttimeout.Mode) {
	t.Parallel()
	ended := make(chan sdktrace.ReadOnlySpan, 1)
	provider := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(endSignal{ended}))
	inner := fasttimeoutotel.Handler(func(ctx *fasthttp.RequestCtx) { ctx.SetBodyString("ok") })
	handler := fasttimeout.New(func(ctx *fasthttp.RequestCtx) {
		inner(ctx)
		<-fasttimeout.Context(ctx).Done() // work after Handler, past the deadline
	}, fasttimeout.Config{
		// Time enough, on a loaded machine, for Handler's next to return
		// before the deadline, as this test needs.
		Timeout: time.Second, Mode: mode,
	})
	ln := fasthttputil.NewInmemoryListener()
	server := &fasthttp.Server{Handler: fasttimeoutotel.Middleware(handler, provider.Tracer("test"))}
	served := make(chan error, 1)
	go func() { served <- server.Serve(ln) }()
	client := &fasthttp.Client{Dial: func(string) (net.Conn, error) { return ln.Dial() }, MaxIdemponentCallAttempts: 1}

	status, _, err := client.GetTimeout(nil, "http://app/", 10*time.Second)
	require.NoError(t, err)
	require.Equal(t, fasthttp.StatusGatewayTimeout, status)
	span := endedSpan(t, ended, "a timeout after Handler returned")
	require.Equal(t, []string{fasttimeoutotel.EventTimeout}, eventNames(span))
	assert.Equal(t, codes.Error, span.Status().Code)
	// The time Handler's next had when it started, as Handler records it:
	// racing mode recorded 0, as for a handler that never started.
	timeout := attrs(span.Events()[0])[fasttimeoutotel.AttrTimeout].AsFloat64()
	assert.Greater(t, timeout, 0.0)
	assert.LessOrEqual(t, timeout, time.Second.Seconds())

	client.CloseIdleConnections()
	require.NoError(t, server.Shutdown())
	require.NoError(t, <-served)
	require.NoError(t, provider.Shutdown(context.Background()))
}
