// Command gateway is a tiny reverse proxy that shows fasttimeout in front
// of an upstream: it takes the caller's deadline (grpc-timeout,
// X-Envoy-Expected-Rq-Timeout-Ms, Request-Timeout), bounds each request,
// passes the time left on to the upstream, and answers 504 when the
// upstream does not answer in time.
//
// Usage:
//
//	gateway [-addr 127.0.0.1:8081] [-upstream 127.0.0.1:8080] [-margin 5ms] [-max-late 1000]
//
// The request timeout comes from the environment variable REQUEST_TIMEOUT,
// in seconds ("5", "2.5") or as a Go duration ("500ms"); 5 s if unset. The
// middleware's counters are published with expvar at /debug/vars, under
// "fasttimeout". Bad flags or environment print one line and exit with
// status 2.
package main

import (
	"context"
	"errors"
	"expvar"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/expvarhandler"

	"github.com/fasttimeout/fasttimeout"
)

// stats are the counters of the process's gateway, published with expvar.
var stats = new(fasttimeout.Stats)

func init() { expvar.Publish("fasttimeout", stats) }

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stderr, nil))
}

// options are the gateway's settings, from flags and environment.
type options struct {
	addr     string
	upstream string
	timeout  time.Duration
	margin   time.Duration
	maxLate  int
}

// parseOptions reads the flags in args and REQUEST_TIMEOUT.
func parseOptions(args []string, stderr io.Writer) (options, error) {
	var o options
	fs := flag.NewFlagSet("gateway", flag.ContinueOnError)
	fs.SetOutput(io.Discard) // errors are reported in one line by run
	fs.StringVar(&o.addr, "addr", "127.0.0.1:8081", "listen on this `host:port`")
	fs.StringVar(&o.upstream, "upstream", "127.0.0.1:8080", "forward to this `host:port`")
	fs.DurationVar(&o.margin, "margin", 5*time.Millisecond, "taken off a caller's deadline to leave time for the answer")
	fs.IntVar(&o.maxLate, "max-late", 1000, "answer 503 while this many handlers run past their deadline (0: no cap)")
	fs.Usage = func() {} // flag calls it on every error; -h is handled below
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(stderr, "usage: gateway [flags]   (REQUEST_TIMEOUT=5s: the request timeout)")
			fs.SetOutput(stderr)
			fs.PrintDefaults()
		}
		return o, err
	}
	switch {
	case fs.NArg() > 0:
		return o, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	case o.margin < 0:
		return o, fmt.Errorf("-margin must not be negative, got %v", o.margin)
	case o.maxLate < 0:
		return o, fmt.Errorf("-max-late must not be negative, got %d", o.maxLate)
	}
	for name, hostport := range map[string]string{"-addr": o.addr, "-upstream": o.upstream} {
		if _, _, err := net.SplitHostPort(hostport); err != nil {
			return o, fmt.Errorf("%s wants host:port, got %q", name, hostport)
		}
	}
	var err error
	o.timeout, err = fasttimeout.TimeoutFromEnv("REQUEST_TIMEOUT", fasttimeout.DefaultTimeout)
	return o, err
}

// run serves the gateway until ctx is done and returns the exit status.
// listening, if not nil, is told the address once the gateway listens.
func run(ctx context.Context, args []string, stderr io.Writer, listening func(net.Addr)) int {
	o, err := parseOptions(args, stderr)
	switch {
	case errors.Is(err, flag.ErrHelp):
		return 0
	case err != nil:
		fmt.Fprintln(stderr, "gateway:", err)
		return 2
	}
	ln, err := net.Listen("tcp", o.addr)
	if err != nil {
		fmt.Fprintln(stderr, "gateway:", err)
		return 1
	}
	server := &fasthttp.Server{
		Handler:     newGateway(o, stats),
		Name:        "fasttimeout-gateway",
		ReadTimeout: time.Minute,
		IdleTimeout: time.Minute,
	}
	if listening != nil {
		listening(ln.Addr())
	}
	served := make(chan error, 1)
	go func() { served <- server.Serve(ln) }()
	select {
	case err = <-served:
	case <-ctx.Done():
		err = server.Shutdown()
	}
	if err != nil {
		fmt.Fprintln(stderr, "gateway:", err)
		return 1
	}
	return 0
}

// newGateway returns the gateway's handler: /debug/vars shows the
// counters, everything else goes to the upstream, bounded by fasttimeout.
func newGateway(o options, stats *fasttimeout.Stats) fasthttp.RequestHandler {
	upstream := &fasthttp.HostClient{
		Addr:                      o.upstream,
		MaxIdemponentCallAttempts: 1, // a retry would only eat the caller's budget
	}
	proxy := fasttimeout.New(forwardTo(upstream), fasttimeout.Config{
		Timeout:              o.timeout,
		HonorDeadlineHeaders: true,
		DeadlineMargin:       o.margin,
		MaxLateHandlers:      o.maxLate,
		Stats:                stats,
	})
	return func(ctx *fasthttp.RequestCtx) {
		if string(ctx.Path()) == "/debug/vars" {
			expvarhandler.ExpvarHandler(ctx)
			return
		}
		proxy(ctx)
	}
}

// hopByHop are the headers that concern one connection, not the request.
var hopByHop = []string{
	fasthttp.HeaderConnection, "Keep-Alive", fasthttp.HeaderProxyAuthenticate,
	fasthttp.HeaderProxyAuthorization, fasthttp.HeaderTE, fasthttp.HeaderTrailer,
	fasthttp.HeaderTransferEncoding, fasthttp.HeaderUpgrade,
}

// forwardTo sends each request to upstream with the time it has left, and
// its answer back: 504 if the time ran out, 502 if the upstream failed.
func forwardTo(upstream fasttimeout.Doer) fasthttp.RequestHandler {
	return func(ctx *fasthttp.RequestCtx) {
		req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
		defer fasthttp.ReleaseRequest(req)
		defer fasthttp.ReleaseResponse(resp)
		ctx.Request.CopyTo(req)
		for _, h := range hopByHop {
			req.Header.Del(h)
		}
		req.Header.Add(fasthttp.HeaderXForwardedFor, ctx.RemoteIP().String())

		err := fasttimeout.Do(ctx, upstream, req, resp)
		switch {
		case errors.Is(err, fasttimeout.ErrTimeout):
			ctx.Error(`{"detail":"Upstream did not answer in time"}`, fasthttp.StatusGatewayTimeout)
			ctx.SetContentType("application/json")
		case err != nil:
			ctx.Logger().Printf("upstream: %v", err)
			ctx.Error(`{"detail":"Upstream unavailable"}`, fasthttp.StatusBadGateway)
			ctx.SetContentType("application/json")
		default:
			for _, h := range hopByHop {
				resp.Header.Del(h)
			}
			resp.CopyTo(&ctx.Response)
		}
	}
}
