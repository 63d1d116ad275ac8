package fasttimeout_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"time"

	"github.com/fasttimeout/fasttimeout"
	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/fasthttputil"
)

// startExampleServer serves h on an in-memory listener and returns a client
// for it and a function that stops the server.
func startExampleServer(h fasthttp.RequestHandler) (*fasthttp.Client, func()) {
	ln := fasthttputil.NewInmemoryListener()
	server := &fasthttp.Server{Handler: h}
	go server.Serve(ln) //nolint:errcheck // Serve returns nil after Shutdown
	client := &fasthttp.Client{Dial: func(string) (net.Conn, error) { return ln.Dial() }}
	return client, func() {
		client.CloseIdleConnections()
		_ = server.Shutdown()
	}
}

func get(client *fasthttp.Client, url string) (int, string) {
	status, body, err := client.Get(nil, url)
	if err != nil {
		return 0, err.Error()
	}
	return status, string(body)
}

// A handler that takes longer than the timeout is answered with 504 at the
// deadline, even though it ignores its context.
func ExampleNew() {
	release := make(chan struct{})
	defer close(release)
	slow := func(ctx *fasthttp.RequestCtx) {
		<-release // blocking work that ignores its context
		ctx.SetBodyString("done")
	}
	client, stop := startExampleServer(fasttimeout.New(slow, fasttimeout.Config{
		Timeout: 50 * time.Millisecond,
	}))
	defer stop()

	fmt.Println(get(client, "http://example/report"))
	// Output: 504 {"detail":"Request processing time exceeded limit"}
}

// Cooperative mode runs the handler inline and only cancels its context:
// cheaper, for handlers that honour their context.
func ExampleNew_cooperative() {
	h := func(ctx *fasthttp.RequestCtx) {
		select {
		case <-time.After(time.Second): // work that watches its context
			ctx.SetBodyString("done")
		case <-fasttimeout.Context(ctx).Done():
		}
	}
	client, stop := startExampleServer(fasttimeout.New(h, fasttimeout.Config{
		Timeout:     50 * time.Millisecond,
		Mode:        fasttimeout.Cooperative,
		StatusCode:  fasthttp.StatusServiceUnavailable,
		Body:        []byte("try again later"),
		ContentType: "text/plain",
	}))
	defer stop()

	fmt.Println(get(client, "http://example/"))
	// Output: 503 try again later
}

// MaxConcurrency bounds how many handlers run at once (AdaptiveConcurrency
// makes the bound follow the handlers' latency). A request beyond it waits
// for a slot for a tenth of its budget, then gets 503 with Retry-After
// without running; RejectReason tells a middleware around New why.
func ExampleConfig_maxConcurrency() {
	started, release := make(chan struct{}), make(chan struct{})
	h := func(ctx *fasthttp.RequestCtx) {
		if string(ctx.Path()) == "/report" {
			close(started)
			<-release // holds the only slot
		}
		ctx.SetBodyString("done")
	}
	limited := fasttimeout.New(h, fasttimeout.Config{Timeout: 2 * time.Second, MaxConcurrency: 1})
	client, stop := startExampleServer(func(ctx *fasthttp.RequestCtx) {
		limited(ctx)
		if reason := fasttimeout.RejectReason(ctx); reason != "" {
			fmt.Println("refused:", reason)
		}
	})
	defer stop()

	report := make(chan struct{})
	go func() {
		get(client, "http://example/report")
		close(report)
	}()
	<-started
	req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	req.SetRequestURI("http://example/status")
	if err := client.Do(req, resp); err != nil {
		fmt.Println(err)
	}
	fmt.Println(resp.StatusCode(), string(resp.Header.Peek("Retry-After")))
	close(release)
	<-report
	// Output:
	// refused: queue_timeout
	// 503 1
}

// Extend gives a request more time from inside its handler, for a step
// known to be slow that the timeout was not set for; Remaining says how
// much is left.
func ExampleExtend() {
	release := make(chan struct{})
	defer close(release)
	h := func(ctx *fasthttp.RequestCtx) {
		if string(ctx.QueryArgs().Peek("format")) == "pdf" {
			fasttimeout.Extend(ctx, time.Hour) // rendering a PDF takes long
			left, _ := fasttimeout.Remaining(ctx)
			ctx.SetBodyString(fmt.Sprintf("rendered, %v left", left.Round(time.Minute)))
			return
		}
		<-release // slow work that ignores its context
	}
	client, stop := startExampleServer(fasttimeout.New(h, fasttimeout.Config{
		Timeout: time.Second,
	}))
	defer stop()

	fmt.Println(get(client, "http://example/report?format=pdf"))
	fmt.Println(get(client, "http://example/report"))
	// Output:
	// 200 rendered, 1h0m0s left
	// 504 {"detail":"Request processing time exceeded limit"}
}

// Context gives the handler a context.Context with the request's deadline,
// to pass to database drivers and HTTP clients; it says why it ended.
func ExampleContext() {
	why := make(chan string, 1)
	h := func(ctx *fasthttp.RequestCtx) {
		c := fasttimeout.Context(ctx)
		_, hasDeadline := c.Deadline()
		<-c.Done() // a query that takes too long, say
		switch cause := context.Cause(c); {
		case errors.Is(cause, fasttimeout.ErrTimeout):
			why <- fmt.Sprintf("deadline %v: timed out (%v)", hasDeadline, c.Err())
		case errors.Is(cause, fasttimeout.ErrShutdown):
			why <- "server shutting down"
		}
	}
	client, stop := startExampleServer(fasttimeout.New(h, fasttimeout.Config{Timeout: 250 * time.Millisecond}))
	defer stop()

	status, _ := get(client, "http://example/")
	fmt.Println(status)
	fmt.Println(<-why)
	// Output:
	// 504
	// deadline true: timed out (context deadline exceeded)
}

// TimeoutFromEnv reads seconds or a Go duration from the environment.
func ExampleTimeoutFromEnv() {
	os.Setenv("EXAMPLE_REQUEST_TIMEOUT", "2.5")
	d, err := fasttimeout.TimeoutFromEnv("EXAMPLE_REQUEST_TIMEOUT", 5*time.Second)
	fmt.Println(d, err)

	os.Setenv("EXAMPLE_REQUEST_TIMEOUT", "soon")
	_, err = fasttimeout.TimeoutFromEnv("EXAMPLE_REQUEST_TIMEOUT", 5*time.Second)
	fmt.Println(err)
	// Output:
	// 2.5s <nil>
	// fasttimeout: EXAMPLE_REQUEST_TIMEOUT="soon": want seconds (5, 2.5) or a Go duration (500ms, 1m)
}

// Stats counts what the middleware did; *Stats is an expvar.Var.
func ExampleStats() {
	stats := new(fasttimeout.Stats)
	client, stop := startExampleServer(fasttimeout.New(func(ctx *fasthttp.RequestCtx) {
		ctx.SetBodyString("ok")
	}, fasttimeout.Config{Stats: stats}))
	defer stop()

	// expvar.Publish("fasttimeout", stats) would serve it at /debug/vars.
	get(client, "http://example/")
	fmt.Println(stats.Snapshot().Requests, stats.Snapshot().Timeouts)
	// Output: 1 0
}
