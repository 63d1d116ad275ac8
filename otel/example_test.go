package fasttimeoutotel_test

import (
	"context"
	"fmt"
	"log"
	"net"
	"time"

	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/fasthttputil"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/fasttimeout/fasttimeout"
	fasttimeoutotel "github.com/fasttimeout/fasttimeout/otel"
)

// The span reaches the handler through a user value: Middleware (or your
// own tracing middleware calling Attach) puts it there on the server
// goroutine, and Handler, inside fasttimeout.New, reads it on the handler's
// goroutine. A handler that runs past its deadline leaves a timeout event
// and, when it returns, a late-return event on the request's span, which
// ends then.
func ExampleHandler() {
	recorder := tracetest.NewSpanRecorder()
	provider := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(recorder))
	defer func() { _ = provider.Shutdown(context.Background()) }()

	slow := func(ctx *fasthttp.RequestCtx) {
		<-fasttimeout.Context(ctx).Done() // gives up at the deadline
	}
	stats := new(fasttimeout.Stats)
	handler := fasttimeoutotel.Middleware(
		fasttimeout.New(fasttimeoutotel.Handler(slow), fasttimeout.Config{Timeout: 250 * time.Millisecond, Stats: stats}),
		provider.Tracer("example"))

	ln := fasthttputil.NewInmemoryListener()
	server := &fasthttp.Server{Handler: handler}
	go func() { _ = server.Serve(ln) }()
	client := &fasthttp.Client{Dial: func(string) (net.Conn, error) { return ln.Dial() }}
	status, _, err := client.Get(nil, "http://app/report")
	if err != nil {
		log.Fatal(err)
	}
	client.CloseIdleConnections()
	_ = server.Shutdown()
	// Shutdown does not wait for a handler that outlived its request's
	// answer: its span ends when it returns, and InFlight falls after that.
	for stats.Snapshot().InFlight > 0 {
		time.Sleep(time.Millisecond)
	}

	fmt.Println("status", status)
	for _, span := range recorder.Ended() {
		fmt.Println("span", span.Name(), span.Status().Code, span.Status().Description)
		for _, event := range span.Events() {
			fmt.Println("  event", event.Name)
		}
	}
	// Output:
	// status 504
	// span GET Error fasttimeout: request timed out
	//   event fasttimeout.timeout
	//   event fasttimeout.late_return
}
