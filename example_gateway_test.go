package fasttimeout_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/fasttimeout/fasttimeout"
)

// printGatewayGet sends GET path with the given header pairs and prints the answer.
func printGatewayGet(client *fasthttp.Client, path string, kv ...string) {
	req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	req.SetRequestURI("http://example.com" + path)
	for i := 0; i < len(kv); i += 2 {
		req.Header.Set(kv[i], kv[i+1])
	}
	if err := client.DoTimeout(req, resp, 10*time.Second); err != nil {
		fmt.Println("error:", err)
		return
	}
	fmt.Println(resp.StatusCode(), string(resp.Body()))
}

// A server behind Envoy or called by gRPC clients takes the caller's
// deadline into account: the timeout is the smaller of its own and the
// caller's, less a margin, and a spent budget is answered at once.
func ExampleConfig_callerDeadline() {
	handler := func(ctx *fasthttp.RequestCtx) {
		left, _ := fasttimeout.Remaining(ctx)
		fmt.Fprintf(ctx, "at most 200ms left: %v", left <= 200*time.Millisecond)
	}
	client, stop := startExampleServer(fasttimeout.New(handler, fasttimeout.Config{
		Timeout:              5 * time.Second,
		HonorDeadlineHeaders: true,
		DeadlineMargin:       50 * time.Millisecond,
	}))
	defer stop()

	printGatewayGet(client, "/", "grpc-timeout", "250m")                    // 250 ms less the margin
	printGatewayGet(client, "/", "X-Envoy-Expected-Rq-Timeout-Ms", "30")    // less than the margin: spent
	printGatewayGet(client, "/", "Request-Timeout", "in a while, whatever") // malformed: ignored
	// Output:
	// 200 at most 200ms left: true
	// 504 {"detail":"Request processing time exceeded limit"}
	// 200 at most 200ms left: false
}

// A gateway passes what is left of the request's time on to its upstream.
func ExampleDo() {
	upstream, stopUpstream := startExampleServer(func(ctx *fasthttp.RequestCtx) {
		budget := ctx.Request.Header.Peek(fasttimeout.HeaderEnvoyExpectedTimeout)
		fmt.Fprintf(ctx, "upstream got a budget: %v", len(budget) > 0)
	})
	defer stopUpstream()

	gateway := func(ctx *fasthttp.RequestCtx) {
		req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
		defer fasthttp.ReleaseRequest(req)
		defer fasthttp.ReleaseResponse(resp)
		req.SetRequestURI("http://upstream/")
		err := fasttimeout.Do(ctx, upstream, req, resp)
		switch {
		case errors.Is(err, fasttimeout.ErrTimeout):
			ctx.SetStatusCode(fasthttp.StatusGatewayTimeout)
		case err != nil:
			ctx.SetStatusCode(fasthttp.StatusBadGateway)
		default:
			ctx.SetBody(resp.Body())
		}
	}
	client, stop := startExampleServer(fasttimeout.New(gateway, fasttimeout.Config{Timeout: time.Second}))
	defer stop()

	printGatewayGet(client, "/")
	// Output:
	// 200 upstream got a budget: true
}

// A net/http handler converted with NetHTTPHandler sees the request's
// deadline in r.Context(), and stops when it passes.
func ExampleNetHTTPHandler() {
	report := make(chan string, 1)
	slow := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, hasDeadline := r.Context().Deadline()
		select {
		case <-r.Context().Done():
			report <- fmt.Sprintf("net/http handler had a deadline: %v, stopped: %v", hasDeadline, context.Cause(r.Context()))
		case <-time.After(10 * time.Second):
		}
	})
	client, stop := startExampleServer(fasttimeout.New(fasttimeout.NetHTTPHandler(slow), fasttimeout.Config{Timeout: 250 * time.Millisecond}))
	defer stop()

	printGatewayGet(client, "/")
	fmt.Println(<-report)
	// Output:
	// 504 {"detail":"Request processing time exceeded limit"}
	// net/http handler had a deadline: true, stopped: fasttimeout: request timed out
}

// A handler that works past its timeout on purpose, here one slow to start
// an event stream, switches its deadline off first. The stream writer itself
// runs after the handler has returned, outside any deadline.
func ExampleDisarm_streaming() {
	handler := func(ctx *fasthttp.RequestCtx) {
		if string(ctx.Path()) == "/events" {
			fasttimeout.Disarm(ctx)
		}
		ctx.SetBodyStreamWriter(func(w *bufio.Writer) {
			for i := range 3 {
				fmt.Fprintf(w, "event %d;", i)
				_ = w.Flush()
			}
		})
		<-time.After(1200 * time.Millisecond) // slow to start, past the timeout
	}
	// A second: Disarm must come before the deadline, even on a busy machine.
	client, stop := startExampleServer(fasttimeout.New(handler, fasttimeout.Config{Timeout: time.Second}))
	defer stop()

	printGatewayGet(client, "/events")
	printGatewayGet(client, "/other")
	// Output:
	// 200 event 0;event 1;event 2;
	// 504 {"detail":"Request processing time exceeded limit"}
}
