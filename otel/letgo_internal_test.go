package fasttimeoutotel

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
)

// spanEnded sends each span on ended when it ends.
type spanEnded struct{ ended chan sdktrace.ReadOnlySpan }

func (s spanEnded) OnStart(context.Context, sdktrace.ReadWriteSpan) {}
func (s spanEnded) OnEnd(span sdktrace.ReadOnlySpan)                { s.ended <- span }
func (s spanEnded) Shutdown(context.Context) error                  { return nil }
func (s spanEnded) ForceFlush(context.Context) error                { return nil }

// Handler's next returns in time, and the deadline passes before Handler
// lets go of the span (a preempted goroutine): the timer times the call
// out, the middleware answers with the timeout response and Attach's end
// runs while Handler still holds the span. Handler, having seen next back
// in time, recorded nothing, and end left the span to it: the span of a
// 504 ended with no event and status Unset. Here Handler is held between
// the two until end has run. Not parallel: it sets the package's test hook.
func TestAttachRecordsATimeoutWhileHandlerLetsGo(t *testing.T) {
	ended := make(chan sdktrace.ReadOnlySpan, 1)
	provider := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spanEnded{ended}))
	tracer := provider.Tracer("test")
	held, answered := make(chan struct{}), make(chan struct{})
	hook := func(ctx *fasthttp.RequestCtx) {
		if string(ctx.Path()) != "/let-go" {
			return
		}
		close(held)
		<-answered // end has run, the timeout response sent
	}
	testHookInTime.Store(&hook)
	defer testHookInTime.Store(nil)

	// Time enough, on a loaded machine, for next to return in time.
	h := fasttimeout.New(Handler(func(ctx *fasthttp.RequestCtx) { ctx.SetBodyString("ok") }),
		fasttimeout.Config{Timeout: time.Second})
	ln := fasthttputil.NewInmemoryListener()
	server := &fasthttp.Server{Handler: func(ctx *fasthttp.RequestCtx) {
		c, _ := tracer.Start(context.Background(), "GET")
		end := Attach(ctx, c)
		h(ctx)
		end()
		if string(ctx.Path()) == "/let-go" {
			close(answered)
		}
	}}
	served := make(chan error, 1)
	go func() { served <- server.Serve(ln) }()
	client := &fasthttp.Client{Dial: func(string) (net.Conn, error) { return ln.Dial() }, MaxIdemponentCallAttempts: 1}

	status, _, err := client.GetTimeout(nil, "http://app/let-go", 10*time.Second)
	require.NoError(t, err)
	require.Equal(t, fasthttp.StatusGatewayTimeout, status)
	var span sdktrace.ReadOnlySpan
	select {
	case span = <-ended:
	case <-time.After(10 * time.Second):
		t.Fatal("no span ended within 10 s of the answer")
	}
	select {
	case <-held:
	default:
		t.Fatal("next did not return in time")
	}
	var events []string
	for _, e := range span.Events() {
		events = append(events, e.Name)
	}
	assert.Equal(t, []string{EventTimeout}, events)
	assert.Equal(t, codes.Error, span.Status().Code)

	client.CloseIdleConnections()
	require.NoError(t, server.Shutdown())
	require.NoError(t, <-served)
	require.NoError(t, provider.Shutdown(context.Background()))
}
