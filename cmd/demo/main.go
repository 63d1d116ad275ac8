// Command demo is a small fasthttp server that shows what fasttimeout does
// to slow requests.
//
//	GET /                the greeting, {"message":"Hello, World!"}
//	GET /sleep/{n}       sleeps n seconds, ignoring its context (blocking work)
//	GET /async_sleep/{n} waits n seconds or until its context is done
//	                     (cooperative work)
//	GET /work/{ms}       hashes for about ms milliseconds of CPU ("1.6"),
//	                     stopping when its context is done (CPU-bound work
//	                     that honours its context); answers
//	                     {"cpu_ms":1.6,"hashes":...,"digest":"..."}
//	GET /debug/vars      expvar counters, not bounded by the timeout
//	GET /metrics         the same counters and histograms for Prometheus,
//	                     not bounded by the timeout
//
// Every route but /debug/vars and /metrics is bounded by fasttimeout.New with the timeout
// of REQUEST_TIMEOUT (default 5 s); a request that runs past it is answered
// with 504 and {"detail":"Request processing time exceeded limit"}.
//
// Admission by an adaptive concurrency limit (Config.AdaptiveConcurrency) is
// on by default, so that sent more /work than its CPU can do, the demo keeps
// answering at its capacity and refuses the excess with 503 and
// Retry-After; -adaptive=false turns it off. -max-concurrency sets
// Config.MaxConcurrency: the ceiling of the adaptive limit, or with
// -adaptive=false a fixed limit (0: the library's default ceiling, or no
// limit).
//
// SIGINT or SIGTERM shuts the demo down gracefully, waiting up to 10 s for
// open connections; a second one during that wait stops it at once. The
// exit status is 0 after a clean stop, 1 when the server failed or
// connections were still open when the wait ended, 2 on bad flags or
// environment, and 128 plus the number of the second signal (130 for
// SIGINT, 143 for SIGTERM) when it stopped at once.
//
// The listener is wrapped in fasttimeout.RetryListener: a flood of
// connections that exhausts the process's descriptors makes accept wait
// and retry, instead of ending the server.
//
// Usage:
//
//	cd cmd/demo && REQUEST_TIMEOUT=1 go run . -addr 127.0.0.1:8080 [-mode racing|cooperative]
//	        [-adaptive=true|false] [-max-concurrency n]
//
// The demo is a module of its own (its go.mod), so that the library's
// go.mod does not depend on the Prometheus client.
package main

import (
	"context"
	"errors"
	"expvar"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/fasttimeout/fasttimeout"
	"github.com/fasttimeout/fasttimeout/internal/signalstop"
	"github.com/valyala/fasthttp"
)

const (
	// timeoutEnv names the environment variable holding the request timeout.
	timeoutEnv = "REQUEST_TIMEOUT"
	// shutdownGrace bounds the wait for open connections on shutdown.
	shutdownGrace = 10 * time.Second
)

func main() {
	ctx := signalstop.Context(log.New(os.Stderr, "demo: ", log.LstdFlags))
	os.Exit(run(ctx, os.Args[1:], os.Stderr))
}

// options is the demo's configuration, from flags and environment.
type options struct {
	addr           string
	timeout        time.Duration
	mode           fasttimeout.Mode
	adaptive       bool // Config.AdaptiveConcurrency
	maxConcurrency int  // Config.MaxConcurrency
}

// parseOptions reads the flags in args and REQUEST_TIMEOUT. On -h it prints
// the usage to stderr and returns flag.ErrHelp; on bad input it returns an
// error whose message fits on one line.
func parseOptions(args []string, stderr io.Writer) (options, error) {
	opts := options{addr: ":8080", mode: fasttimeout.Racing, adaptive: true}
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.SetOutput(io.Discard) // errors are reported by run, on one line
	fs.StringVar(&opts.addr, "addr", opts.addr, "listen `address`, host:port")
	fs.Func("mode", "bounding `mode`: racing (the default; bounds any handler) or cooperative (only cancels the context)", func(s string) error {
		switch s {
		case "racing":
			opts.mode = fasttimeout.Racing
		case "cooperative":
			opts.mode = fasttimeout.Cooperative
		default:
			return fmt.Errorf("want racing or cooperative, got %q", s)
		}
		return nil
	})
	fs.BoolVar(&opts.adaptive, "adaptive", opts.adaptive, "admission by an adaptive concurrency limit: 503 and Retry-After for what the server cannot do in time (-adaptive=false: off)")
	fs.Func("max-concurrency", "`n` handlers running at once, late ones included: the ceiling of the adaptive limit, or with -adaptive=false a fixed limit (0, the default: the default ceiling, or no limit)", func(s string) (err error) {
		opts.maxConcurrency, err = parseDecimal(s)
		return err
	})
	fs.Usage = func() {} // called on every parse error; run prints one line instead
	usage := func() {
		fmt.Fprintf(stderr, `Usage: demo [-addr host:port] [-mode racing|cooperative] [-adaptive=true|false] [-max-concurrency n]

Serves GET /, /sleep/{n} (blocking), /async_sleep/{n} (cooperative),
/work/{ms} (CPU-bound, cooperative), /debug/vars and /metrics
(Prometheus), each request but the last two bounded by a timeout (504 past
it) and, unless -adaptive=false, admitted by an adaptive concurrency limit
(503 beyond it).

SIGINT or SIGTERM shuts it down, waiting up to %v for open connections;
a second one during that wait stops it at once.

Environment:
  %s  request timeout, seconds (5, 2.5) or a Go duration (500ms, 1m);
                   unset or empty means %v

Exit status:
  0        stopped, every connection closed within the wait (or -h)
  1        the server failed (could not listen, say), or connections were
           still open when the wait ended
  2        bad flag or environment
  130, 143 a second SIGINT (130) or SIGTERM (143) stopped it at once

Flags:
`, shutdownGrace, timeoutEnv, fasttimeout.DefaultTimeout)
		fs.SetOutput(stderr)
		fs.PrintDefaults()
		fs.SetOutput(io.Discard)
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			usage()
		}
		return opts, err
	}
	if fs.NArg() > 0 {
		return opts, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if opts.maxConcurrency < 0 {
		return opts, fmt.Errorf("-max-concurrency must not be negative, got %d", opts.maxConcurrency)
	}
	if _, port, err := net.SplitHostPort(opts.addr); err != nil {
		return opts, fmt.Errorf("-addr %q: want host:port", opts.addr)
	} else if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return opts, fmt.Errorf("-addr %q: want a port number from 0 to 65535", opts.addr)
	}
	timeout, err := fasttimeout.TimeoutFromEnv(timeoutEnv, fasttimeout.DefaultTimeout)
	if err != nil {
		return opts, err
	}
	opts.timeout = timeout
	return opts, nil
}

// parseDecimal parses a count given as a flag: decimal digits only, unlike
// flag.Int, which reads Go's literals and takes "010" for 8, "0x10" for
// 16, "1_000" for 1000.
func parseDecimal(s string) (int, error) {
	n, err := strconv.ParseInt(s, 10, strconv.IntSize)
	switch {
	case errors.Is(err, strconv.ErrRange):
		return 0, errors.New("out of range")
	case err != nil || strings.HasPrefix(s, "+"): // ParseInt takes a sign
		return 0, errors.New("want a decimal number")
	}
	return int(n), nil
}

// admission describes the admission of requests that opts configure.
func (o options) admission() string {
	switch {
	case o.adaptive && o.maxConcurrency > 0:
		return fmt.Sprintf("adaptive concurrency limit up to %d", o.maxConcurrency)
	case o.adaptive:
		return fmt.Sprintf("adaptive concurrency limit up to %d", fasttimeout.DefaultMaxConcurrency)
	case o.maxConcurrency > 0:
		return fmt.Sprintf("concurrency limit %d", o.maxConcurrency)
	default:
		return "no concurrency limit"
	}
}

// run serves until ctx is done, then shuts down gracefully. It returns the
// process's exit code: 0 after a clean shutdown, 2 on bad flags or
// environment, 1 when the server fails or connections are still open when
// the shutdown's grace ends.
func run(ctx context.Context, args []string, stderr io.Writer) int {
	opts, err := parseOptions(args, stderr)
	switch {
	case errors.Is(err, flag.ErrHelp):
		return 0
	case err != nil:
		// Every bad flag or environment value: -h tells the forms taken.
		fmt.Fprintf(stderr, "demo: %v (see demo -h)\n", err)
		return 2
	}
	logger := log.New(stderr, "demo: ", log.LstdFlags)

	stats := publishedStats()

	ln, err := net.Listen("tcp", opts.addr)
	if err != nil {
		logger.Print(err)
		return 1
	}
	handler, flushLogs := newHandler(stats, opts, logger)
	// atExit writes what the logs hold for the period under way, and how
	// many handlers still run past their deadline (racing mode's blocking
	// ones, which ignore their context): they end with the process, which
	// would otherwise say nothing of them. Counted before the flush, so
	// that one returning meanwhile is in one line or both, never in none.
	atExit := func() {
		running := stats.Snapshot().LateRunning
		flushLogs()
		if running > 0 {
			logger.Printf("late handlers: %d still running at exit (after their deadline or client's hang-up), their work abandoned", running)
		}
	}
	server := newServer(handler, logger)
	logger.Printf("listening on %s, REQUEST_TIMEOUT %v, %v mode, %s", ln.Addr(), opts.timeout, opts.mode, opts.admission())

	served := make(chan error, 1)
	retrying := fasttimeout.RetryListener(ln, logger)
	go func() { served <- server.Serve(retrying) }()
	select {
	case err := <-served:
		atExit()
		logger.Printf("server failed: %v", err)
		return 1
	case <-ctx.Done():
	}

	logger.Printf("shutting down, waiting up to %v for open connections", shutdownGrace)
	shutdownCtx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
	defer cancel()
	err = server.ShutdownWithContext(shutdownCtx)
	// Shutdown closes only the listeners Serve has registered: after a
	// signal that came before the Serve goroutine ran, Serve would start
	// then and serve on, and the wait below would never end. Closing the
	// listener ourselves makes that Serve return nil too.
	_ = retrying.Close()
	// The handlers that returned late, and the clients that hung up, in
	// the last period: its lines would come after the process has ended.
	// And the handlers that have not returned.
	atExit()
	if err != nil {
		logger.Printf("shutdown: %v", err)
		return 1
	}
	if err := <-served; err != nil {
		logger.Printf("server failed: %v", err)
		return 1
	}
	logger.Print("stopped")
	return 0
}

// publishedStats is the Stats published as expvar "fasttimeout"; expvar
// allows one publication per name and process, and tests call run more
// than once.
var publishedStats = sync.OnceValue(func() *fasttimeout.Stats {
	stats := new(fasttimeout.Stats)
	expvar.Publish("fasttimeout", stats)
	return stats
})

// newServer returns the demo's server with timeouts that keep idle or stuck
// connections from piling up.
func newServer(h fasthttp.RequestHandler, logger *log.Logger) *fasthttp.Server {
	return &fasthttp.Server{
		Handler:      h,
		Name:         "fasttimeout-demo",
		ReadTimeout:  10 * time.Second, // reading one request
		WriteTimeout: 10 * time.Second, // writing one response
		IdleTimeout:  60 * time.Second, // keep-alive between requests
		Logger:       logger,
	}
}
