// Command gateway is a small reverse proxy that shows fasttimeout in front
// of an upstream: it takes the caller's deadline (grpc-timeout,
// X-Envoy-Expected-Rq-Timeout-Ms, Request-Timeout), bounds each request,
// passes the time left on to the upstream, and answers 504 when the
// upstream does not answer in time.
//
// Usage:
//
//	gateway [-addr host:port] [-upstream host:port] [-margin duration] [-max-late n]
//	        [-max-conns n] [-max-body bytes] [-max-header-bytes bytes]
//	        [-trust-envoy-headers] [-adaptive=true|false]
//
// gateway -h lists the flags with their defaults: -addr 127.0.0.1:8081,
// -upstream 127.0.0.1:8080, -margin 5ms, -max-late 1000, -max-conns 512,
// -max-body 4194304 (4 MiB), -max-header-bytes 4096, -adaptive=true;
// -margin must be less than REQUEST_TIMEOUT, and -upstream must not be the
// gateway's own -addr.
//
// As a proxy it:
//   - dials the upstream at any of its addresses, IPv6 too ([::1]:8080),
//     as net.Dial does (fasthttp's client dials IPv4 only by default);
//   - waits for a free upstream connection (at most -max-conns) within the
//     request's budget, and answers 504 if the budget runs out first;
//   - checks a pooled upstream connection for a close by the upstream
//     while idle (a keep-alive timeout shorter than the gateway's 10 s, or
//     a restart) before it sends a request on it, and sends the request,
//     whatever its method, on the next one then (checked too), or on a new
//     one after a second closed one;
//   - sends an idempotent request (GET, HEAD, OPTIONS, TRACE, PUT, DELETE,
//     QUERY) once more, on a new connection, when the upstream closed the
//     connection without answering it, whether or not the check found
//     closed ones before; any other request gets 502 then, and no request
//     is retried otherwise;
//   - answers 504 with one body, {"detail":"Request processing time exceeded
//     limit"}, whether the deadline is seen by the middleware or by the
//     upstream call, 503 with Retry-After to a request that finds the
//     gateway shutting down before its upstream call, and 502 only when the
//     upstream fails;
//   - removes hop-by-hop headers both ways (RFC 9110 §7.6.1): those named in
//     Connection (but Content-Length, which frames the body), Connection
//     itself, Proxy-Connection, Keep-Alive, TE, Transfer-Encoding, Upgrade,
//     Proxy-Authenticate and Proxy-Authorization;
//   - answers with its own Server header ("fasttimeout-gateway") and Date,
//     not the upstream's, as nginx and Envoy do by default; the upstream's
//     other headers pass as they are (X-Accel-* too, which concern an nginx
//     in front, if any);
//   - forwards trailer fields both ways (a response's when the upstream
//     sends its body chunked, as the gateway then does too);
//   - forwards the path and query as received, not normalized (an encoded
//     slash, %2F, stays one);
//   - appends the caller's address to X-Forwarded-For, in one line;
//   - adds itself to Via, as a gateway must (RFC 9110 §7.6.3): the HTTP
//     version the caller spoke ("1.0" for an HTTP/1.0 request) and its
//     name, "1.1 fasttimeout-gateway", after the caller's entries, in one
//     line; its responses carry no Via of their own (a may);
//   - speaks HTTP/1.1 to the upstream, and gives a request without a host
//     (HTTP/1.0) the upstream's address as Host; it answers in its own
//     HTTP version, not an HTTP/1.0 upstream's (RFC 9110 §6.2);
//   - adds no Content-Type to a request or an upstream response that has
//     none, nor a User-Agent to a request;
//   - removes the caller's X-Envoy-* headers (Envoy's retry and timeout
//     controls), as Envoy does for external requests, unless
//     -trust-envoy-headers says the caller is trusted;
//   - answers 413 to a request body over -max-body bytes, 431 to a request
//     head (its first line and header fields) over -max-header-bytes, and
//     502 to an upstream response's head over it, as nginx does past
//     proxy_buffer_size (4 KiB by default, as this one's; each connection
//     holds a buffer of this size);
//   - streams the upstream's response to the client as it comes; the body
//     must arrive within the request's deadline, after which the
//     connection to the client is closed mid-body, and the client must take
//     it within REQUEST_TIMEOUT (the server's WriteTimeout): one that stops
//     reading would otherwise hold an upstream connection for good;
//   - admits requests by an adaptive concurrency limit
//     (Config.AdaptiveConcurrency), so that sent more than the upstream can
//     answer in time it keeps answering at that rate and refuses the excess
//     at once with 503 and Retry-After; -adaptive=false turns it off;
//   - keeps accepting through a flood of connections that exhausts its
//     descriptors (fasttimeout.RetryListener waits and retries accept).
//
// The request timeout comes from the environment variable REQUEST_TIMEOUT,
// in seconds ("5", "2.5") or as a Go duration ("500ms"); 5 s if unset. The
// middleware's counters are published with expvar at /debug/vars, under
// "fasttimeout". Counts are read in decimal ("010" is 10). Bad flags or
// environment print one line, pointing to -h, and exit with status 2.
// Once they are read, every line on stderr carries the time
// ("gateway: 2006/01/02 15:04:05 listening on ..."), those of a failure
// to listen or to serve too, which exit with status 1. A request or an
// upstream response whose head cannot be read is logged with the reason,
// not the head (its Authorization, Cookie or Set-Cookie).
//
// SIGINT or SIGTERM shuts the gateway down gracefully, waiting up to 10 s
// for open connections; a second one during that wait stops it at once.
// The exit status is 0 after a clean stop, 1 when the server failed or
// connections were still open when the wait ended, 2 on bad flags or
// environment, and 128 plus the number of the second signal (130 for
// SIGINT, 143 for SIGTERM) when it stopped at once.
package main

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"expvar"
	"flag"
	"fmt"
	"io"
	"iter"
	"log"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/expvarhandler"

	"github.com/fasttimeout/fasttimeout"
	"github.com/fasttimeout/fasttimeout/internal/signalstop"
)

// stats are the counters of the process's gateway, published with expvar.
var stats = new(fasttimeout.Stats)

func init() { expvar.Publish("fasttimeout", stats) }

func main() {
	ctx := signalstop.Context(log.New(os.Stderr, "gateway: ", log.LstdFlags))
	os.Exit(run(ctx, os.Args[1:], os.Stderr, nil))
}

// options are the gateway's settings, from flags and environment.
type options struct {
	addr       string
	upstream   string
	timeout    time.Duration
	margin     time.Duration
	maxLate    int
	maxConns   int
	maxBody    int
	maxHeader  int // the server's and the upstream client's ReadBufferSize
	trustEnvoy bool
	adaptive   bool // Config.AdaptiveConcurrency
}

// Bounds of -max-header-bytes. fasthttp reads a head whole into a buffer
// of that size, allocated for each connection: its default, 4 KiB, is
// nginx's proxy_buffer_size on most systems; 1 KiB is Envoy's least for
// max_request_headers_kb; 1 MiB is net/http's DefaultMaxHeaderBytes.
const (
	defaultMaxHeader = 4096
	minMaxHeader     = 1024
	maxMaxHeader     = 1 << 20
)

// timeoutEnv names the environment variable of the request timeout.
const timeoutEnv = "REQUEST_TIMEOUT"

// parseOptions reads the flags in args and REQUEST_TIMEOUT. On -h it prints
// the usage to stderr and returns flag.ErrHelp.
func parseOptions(args []string, stderr io.Writer) (options, error) {
	var o options
	fs := flag.NewFlagSet("gateway", flag.ContinueOnError)
	fs.SetOutput(io.Discard) // errors are reported in one line by run
	fs.StringVar(&o.addr, "addr", "127.0.0.1:8081", "listen on this `host:port` (port 0: any free one)")
	fs.StringVar(&o.upstream, "upstream", "127.0.0.1:8080", "forward to this `host:port` (a numeric port; not the gateway's own -addr)")
	fs.DurationVar(&o.margin, "margin", 5*time.Millisecond, "taken off a caller's deadline to leave time for the answer, a Go `duration` (5ms, 0.5s), less than REQUEST_TIMEOUT")
	o.maxLate, o.maxConns, o.maxBody, o.maxHeader = 1000, fasthttp.DefaultMaxConnsPerHost, fasthttp.DefaultMaxRequestBodySize, defaultMaxHeader
	fs.Var((*decimal)(&o.maxLate), "max-late", "answer 503 while `n` handlers run past their deadline (0: no cap)")
	fs.Var((*decimal)(&o.maxConns), "max-conns", "at most `n` upstream connections; a request waits for one within its budget (504 if none comes in time)")
	fs.Var((*decimal)(&o.maxBody), "max-body", "answer 413 to a request body over this many `bytes` (4194304: 4 MiB)")
	fs.Var((*decimal)(&o.maxHeader), "max-header-bytes", "answer 431 to a request head over this many `bytes`, 502 to an upstream response's, first line included; each open connection holds a buffer this size (1024 to 1048576)")
	fs.BoolVar(&o.trustEnvoy, "trust-envoy-headers", false, "the caller is trusted (an Envoy of your own): forward its X-Envoy-* headers")
	fs.BoolVar(&o.adaptive, "adaptive", true, "admission by an adaptive concurrency limit: 503 and Retry-After for what cannot be answered in time (-adaptive=false: off)")
	fs.Usage = func() {} // flag calls it on every error; -h is handled below
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprintf(stderr, `Usage: gateway [-addr host:port] [-upstream host:port] [-margin duration] [-max-late n]
               [-max-conns n] [-max-body bytes] [-max-header-bytes bytes]
               [-trust-envoy-headers] [-adaptive=true|false]

Forwards each request to the upstream with the time it has left, taking
the caller's deadline from grpc-timeout, X-Envoy-Expected-Rq-Timeout-Ms or
Request-Timeout (less -margin): 504 past it, 502 if the upstream fails,
and, unless -adaptive=false, 503 beyond an adaptive concurrency limit.
Counters at /debug/vars.

SIGINT or SIGTERM shuts it down, waiting up to %v for open connections;
a second one during that wait stops it at once.

Environment:
  %s  request timeout, seconds (5, 2.5) or a Go duration (500ms, 1m);
                   unset or empty means %v; a client has as long to read its answer

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
	case o.maxConns <= 0:
		return o, fmt.Errorf("-max-conns must be positive, got %d", o.maxConns)
	case o.maxBody <= 0:
		return o, fmt.Errorf("-max-body must be positive, got %d", o.maxBody)
	case o.maxHeader < minMaxHeader || o.maxHeader > maxMaxHeader:
		return o, fmt.Errorf("-max-header-bytes must be from %d to %d, got %d", minMaxHeader, maxMaxHeader, o.maxHeader)
	}
	// In the order of the flags, so that with both wrong the error is the
	// same from run to run (a map's order is random).
	for _, f := range [...]struct{ name, hostport string }{{"-addr", o.addr}, {"-upstream", o.upstream}} {
		name, hostport := f.name, f.hostport
		host, port, err := net.SplitHostPort(hostport)
		if err != nil {
			return o, fmt.Errorf("%s wants host:port, got %q", name, hostport)
		}
		// fasthttp's client takes an upstream without a host (":8080") for
		// one without a port, dials ":8080:80", and fails every request
		// with 502; net.Dial would have dialled the local system.
		if name == "-upstream" && host == "" {
			return o, fmt.Errorf("-upstream wants a host before its port (127.0.0.1%s, say), got %q", hostport, hostport)
		}
		// A bad port must fail here, with status 2: fasthttp dials numeric
		// ports only, so the upstream's would make every request a 502,
		// and the listener's would fail only at listen, with status 1.
		lowest := uint64(0) // -addr: any free port
		if name == "-upstream" {
			lowest = 1
		}
		if n, err := strconv.ParseUint(port, 10, 16); err != nil || n < lowest {
			return o, fmt.Errorf("%s wants a port number from %d to 65535, got %q", name, lowest, hostport)
		}
	}
	// A name in -addr (localhost) is compared as the address Listen will
	// take for it, which ResolveTCPAddr gives: "-addr localhost:8080" with
	// the default -upstream 127.0.0.1:8080 is a loop. One that does not
	// resolve is left to Listen to report.
	listenAddr, resolved := o.addr, ""
	if host, _, _ := net.SplitHostPort(o.addr); host != "" && net.ParseIP(host) == nil {
		if a, err := net.ResolveTCPAddr("tcp", o.addr); err == nil {
			listenAddr, resolved = a.String(), " ("+a.String()+")"
		}
	}
	if forwardsToItself(listenAddr, o.upstream) {
		return o, fmt.Errorf("-upstream %s is the gateway's own -addr %s%s: each request would come back to it", o.upstream, o.addr, resolved)
	}
	var err error
	o.timeout, err = fasttimeout.TimeoutFromEnv(timeoutEnv, fasttimeout.DefaultTimeout)
	if err != nil {
		return o, err
	}
	// The margin is time for the answer to travel back. One of the
	// timeout or more would spend at once the budget of every caller
	// that has no more time than the gateway gives itself: 504 without
	// calling the upstream, for each request that carries a deadline.
	if o.margin >= o.timeout {
		return o, fmt.Errorf("-margin must be less than %s (%v), got %v", timeoutEnv, o.timeout, o.margin)
	}
	return o, nil
}

// forwardsToItself tells whether upstream, a valid host:port, is addr, the
// gateway's own: the same port (not 0) and the same host, a loopback or
// unspecified one (localhost too) while the gateway listens on every
// address, or localhost while it listens on a loopback address (fasthttp
// dials a name's addresses in turn, so some connections come back even if
// another server has the other family's loopback). Such a gateway sends
// each request back to itself, turn after turn, an upstream connection held
// at each, until the request's time runs out: a 504 for every request.
// Other names are not resolved (parseOptions resolves a name in -addr,
// as Listen does, before it calls this).
func forwardsToItself(addr, upstream string) bool {
	host, port, _ := net.SplitHostPort(addr)
	upHost, upPort, _ := net.SplitHostPort(upstream)
	p, _ := strconv.ParseUint(port, 10, 16)
	upP, _ := strconv.ParseUint(upPort, 10, 16)
	if p == 0 || p != upP {
		return false
	}
	ip, upIP := net.ParseIP(host), net.ParseIP(upHost)
	switch {
	case strings.EqualFold(host, upHost), ip != nil && ip.Equal(upIP):
		return true
	case host == "" || ip.IsUnspecified():
		return strings.EqualFold(upHost, "localhost") || upIP.IsLoopback() || upIP.IsUnspecified()
	}
	return ip.IsLoopback() && strings.EqualFold(upHost, "localhost")
}

// decimal is a count given as a flag: decimal digits only, unlike
// flag.Int, which reads Go's literals and takes "010" for 8, "0x10" for
// 16, "1_000" for 1000. (The demo, a module of its own, has its own copy.)
type decimal int

func (d *decimal) Set(s string) error {
	n, err := strconv.ParseInt(s, 10, strconv.IntSize)
	switch {
	case errors.Is(err, strconv.ErrRange):
		return errors.New("out of range")
	case err != nil || strings.HasPrefix(s, "+"): // ParseInt takes a sign
		return errors.New("want a decimal number")
	}
	*d = decimal(n)
	return nil
}

func (d *decimal) String() string { return strconv.Itoa(int(*d)) }

// shutdownGrace bounds how long the gateway waits, once told to stop, for
// the connections that are answering.
const shutdownGrace = 10 * time.Second

// run serves the gateway until ctx is done and returns the exit status,
// once Serve has returned (within shutdownGrace).
// listening, if not nil, is told the address once the gateway listens.
func run(ctx context.Context, args []string, stderr io.Writer, listening func(net.Addr)) int {
	o, err := parseOptions(args, stderr)
	switch {
	case errors.Is(err, flag.ErrHelp):
		return 0
	case err != nil:
		// Every bad flag or environment value: -h tells the forms taken.
		fmt.Fprintf(stderr, "gateway: %v (see gateway -h)\n", err)
		return 2
	}
	// One logger for every line from here on, with the time, the fatal
	// ones too: the gateway's, the server's (its own lines, and the
	// handler's through ctx.Logger(), "upstream: ..." among them) and the
	// listener's; fasthttp's default one writes to os.Stderr without the
	// prefix. A bad flag's line, above, is a command's usage error.
	logger := log.New(stderr, "gateway: ", log.LstdFlags)
	ln, err := net.Listen("tcp", o.addr)
	if err != nil {
		logger.Print(err)
		return 1
	}
	server := &fasthttp.Server{
		Handler:            newGateway(o, stats),
		Logger:             logger,
		ErrorHandler:       answerBadRequest,
		Name:               serverName,
		ReadTimeout:        time.Minute,
		WriteTimeout:       o.timeout, // a client that stops reading gives the upstream connection back
		IdleTimeout:        time.Minute,
		MaxRequestBodySize: o.maxBody,
		ReadBufferSize:     o.maxHeader, // the most of a request's head: 431 beyond
		// fasthttp would quote a head it cannot read in the log line,
		// the caller's Authorization and Cookie among it.
		SecureErrorLogMessage: true,
	}
	// One line for the operator, and for scripts that start it on port 0.
	admission := "adaptive concurrency limit"
	if !o.adaptive {
		admission = "no concurrency limit"
	}
	logger.Printf("listening on %s, upstream %s, REQUEST_TIMEOUT %v, %s", ln.Addr(), o.upstream, o.timeout, admission)
	if listening != nil {
		listening(ln.Addr())
	}
	served := make(chan error, 1)
	retrying := fasttimeout.RetryListener(ln, logger)
	go func() { served <- server.Serve(retrying) }()
	select {
	case err = <-served:
	case <-ctx.Done():
		logger.Printf("shutting down, waiting up to %v for open connections", shutdownGrace)
		// Responses being written end within WriteTimeout; the grace
		// bounds the wait whatever happens.
		shutdownCtx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
		defer cancel()
		err = server.ShutdownWithContext(shutdownCtx)
		// Shutdown closes only the listeners Serve has registered: after a
		// signal that came before the Serve goroutine ran, Serve would start
		// then and serve on. Closing the listener ourselves ends it too.
		_ = retrying.Close()
		// Wait for Serve, which returns once its listener is closed: the
		// gateway has stopped when run returns (a Serve that started after
		// the signal ran on past it), and an error of Serve's is not lost.
		select {
		case serveErr := <-served:
			err = cmp.Or(err, serveErr)
		case <-shutdownCtx.Done():
			err = cmp.Or(err, shutdownCtx.Err())
		}
	}
	if err != nil {
		logger.Print(err)
		return 1
	}
	return 0
}

// answerBadRequest answers a request the server could not read, as
// fasthttp does by default, but with 413 for a body over the limit (RFC
// 9110 §15.5.14) instead of 400. fasthttp closes the connection afterwards.
func answerBadRequest(ctx *fasthttp.RequestCtx, err error) {
	var small *fasthttp.ErrSmallBuffer
	var netErr net.Error
	switch {
	case errors.Is(err, fasthttp.ErrBodyTooLarge):
		answerJSON(ctx, fasthttp.StatusRequestEntityTooLarge, `{"detail":"Request body too large"}`)
	case errors.As(err, &small):
		answerJSON(ctx, fasthttp.StatusRequestHeaderFieldsTooLarge, `{"detail":"Request header too large"}`)
	case errors.As(err, &netErr) && netErr.Timeout():
		answerJSON(ctx, fasthttp.StatusRequestTimeout, `{"detail":"Request not received in time"}`)
	default:
		answerJSON(ctx, fasthttp.StatusBadRequest, `{"detail":"Malformed request"}`)
	}
}

func answerJSON(ctx *fasthttp.RequestCtx, status int, body string) {
	ctx.Response.Reset()
	ctx.SetStatusCode(status)
	ctx.SetContentType(fasttimeout.DefaultContentType)
	ctx.SetBodyString(body)
}

// newGateway returns the gateway's handler: /debug/vars shows the
// counters, everything else goes to the upstream, bounded by fasttimeout.
func newGateway(o options, stats *fasttimeout.Stats) fasthttp.RequestHandler {
	// No ReadTimeout or WriteTimeout: each call's deadline is the
	// request's (Do), so that a 504 says the request's time ran out.
	upstream := &fasthttp.HostClient{
		Addr: o.upstream,
		// Every address of the host, IPv6 too, as net.Dial would: fasthttp
		// dials IPv4 only by default, which made an upstream at [::1]:8080,
		// or a name that resolves to IPv6 only, a 502 for every request.
		// Each connection is checked for a close by the upstream before it
		// is used again (see idleCheckedConn).
		DialTimeout: dialUpstream,
		// The caller's User-Agent or none, as net/http's ReverseProxy
		// sends: not "fasthttp", which the upstream would take for the
		// caller's.
		NoDefaultUserAgentHeader: true,
		// No retry, which would only eat the caller's budget, but those
		// of resendIfClosedIdle: two tries the peek stops (nothing sent),
		// and two sends of an idempotent request.
		MaxIdemponentCallAttempts: 4,
		MaxConns:                  o.maxConns,
		// Wait for a free connection rather than fail at once (502 would
		// claim the upstream misbehaved): the request's deadline, never
		// longer than o.timeout, cuts the wait short with a timeout (504).
		MaxConnWaitTimeout: o.timeout,
		StreamResponseBody: true,
		// The path as received (RFC 9110 §7.7): normalized, an encoded
		// slash (%2F) reached the upstream as a separator, "//" as "/".
		DisablePathNormalizing: true,
		// The most of a response's head: 502 beyond, as from nginx past
		// proxy_buffer_size.
		ReadBufferSize: o.maxHeader,
		// The log line of a response head it cannot read says why, without
		// quoting it (the upstream's Set-Cookie, say).
		SecureErrorLogMessage: true,
	}
	upstream.RetryIfErr = resendIfClosedIdle(upstream)
	proxy := fasttimeout.New(forwardTo(upstream, o.upstream, o.trustEnvoy), fasttimeout.Config{
		Timeout:              o.timeout,
		HonorDeadlineHeaders: true,
		DeadlineMargin:       o.margin,
		MaxLateHandlers:      o.maxLate,
		AdaptiveConcurrency:  o.adaptive,
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

// resendIfClosedIdle is upstream's RetryIfErr: a request that found its
// connection closed by the upstream is sent again, on another connection.
// The connection was most likely one the upstream closed while it sat idle
// in the pool, its keep-alive timeout being shorter than the client's 10 s
// (Node's is 5 s), or the upstream having restarted. A request not written
// because the close was found first (errIdleConnUnusable) is sent again
// whatever its method, on the next pooled connection: fasthttp has closed
// the one that failed, and each other is checked in turn, but a second
// closed one says the upstream restarted, so the rest are dropped and the
// next try dials. One written and then left without an answer (the close
// came as it went out, or a reset) is sent once more, on a new connection,
// only if its method is idempotent (RFC 9110 §9.2.2 allows that after a
// connection failure; QUERY is too, RFC 10008, and fasthttp's own retry
// takes it so): any other gets 502, as the upstream may have acted on it.
// The tries stopped before a write do not count against that one
// resend: a restart's closes can reach the gateway one after another, the
// peek finding the first and the next crossing the request. The retry
// keeps the request's deadline.
func resendIfClosedIdle(upstream *fasthttp.HostClient) fasthttp.RetryIfErrFunc {
	return func(req *fasthttp.Request, attempts int, err error) (resetTimeout, retry bool) {
		if errors.Is(err, errIdleConnUnusable) {
			if attempts > 1 {
				upstream.CloseIdleConnections()
			}
			return false, true
		}
		// fasthttp reports a connection closed before any answer as io.EOF
		// here, and as ErrConnectionClosed once it gives up.
		closed := err == io.EOF || errors.Is(err, fasthttp.ErrConnectionClosed) ||
			errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
		if !closed || req.UserValue(lostOnce{}) != nil {
			return false, false
		}
		// A close the peek could not see (nor any, where there is no
		// peek): the other idle connections may be closed too.
		upstream.CloseIdleConnections()
		switch string(req.Header.Method()) {
		case fasthttp.MethodGet, fasthttp.MethodHead, fasthttp.MethodOptions, fasthttp.MethodTrace,
			fasthttp.MethodPut, fasthttp.MethodDelete, fasthttp.MethodQuery:
			req.SetUserValue(lostOnce{}, true)
			return false, true
		}
		return false, false
	}
}

// lostOnce is the key of the user value that marks a request the upstream
// has left without an answer once: resendIfClosedIdle does not resend it
// again. Releasing the request clears it.
type lostOnce struct{}

// hopByHop are the headers that concern one connection, not the request
// (RFC 9110 §7.6.1, and the older Keep-Alive and Proxy-Connection), besides
// those a Connection header names. Trailer is not one of them: it announces
// the trailer fields, which the gateway forwards, and makes fasthttp's
// client send a request that has them chunked.
var hopByHop = []string{
	fasthttp.HeaderConnection, "Proxy-Connection", "Keep-Alive", fasthttp.HeaderProxyAuthenticate,
	fasthttp.HeaderProxyAuthorization, fasthttp.HeaderTE, fasthttp.HeaderTransferEncoding,
	fasthttp.HeaderUpgrade,
}

// header is what request and response headers share.
type header interface {
	PeekAll(key string) [][]byte
	Del(key string)
	All() iter.Seq2[[]byte, []byte]
}

// removeHopByHop removes the headers named in Connection, then the
// hop-by-hop ones. Content-Length stays even if named: it frames the body
// the gateway forwards (fasthttp would take its removal for a length of
// 0), and the gateway's server and client write it afresh for the message
// they send.
func removeHopByHop(h header) {
	var named []string
	for _, v := range h.PeekAll(fasthttp.HeaderConnection) {
		for name := range strings.SplitSeq(string(v), ",") {
			if name = strings.TrimSpace(name); name != "" && !strings.EqualFold(name, fasthttp.HeaderContentLength) {
				named = append(named, name)
			}
		}
	}
	for _, name := range named {
		h.Del(name)
	}
	for _, name := range hopByHop {
		h.Del(name)
	}
}

// removeEnvoyHeaders removes every X-Envoy-* header: Envoy strips them from
// external requests, since they steer its retries and timeouts.
func removeEnvoyHeaders(h header) {
	var names []string
	for k := range h.All() {
		if len(k) >= len(envoyPrefix) && strings.EqualFold(string(k[:len(envoyPrefix)]), envoyPrefix) {
			names = append(names, string(k))
		}
	}
	for _, name := range names {
		h.Del(name)
	}
}

const envoyPrefix = "X-Envoy-"

// forwardTo sends each request to upstream with the time it has left, and
// streams its answer back; it answers with the timeout response if the
// time ran out, and 502 if the upstream failed. A request without a host
// (HTTP/1.0 allows that) is sent with host, the upstream's address. The
// caller's X-Envoy-* headers are forwarded only if trustEnvoy.
func forwardTo(upstream fasttimeout.Doer, host string, trustEnvoy bool) fasthttp.RequestHandler {
	return func(ctx *fasthttp.RequestCtx) {
		req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
		defer fasthttp.ReleaseRequest(req)
		ctx.Request.CopyTo(req)
		// After the copy, which copies the flag: a body sent without
		// Content-Type goes on without one, not as application/octet-stream.
		req.Header.SetNoDefaultContentType(true)
		removeHopByHop(&req.Header)
		// HTTP/1.1 upstream whatever the caller spoke, as net/http's
		// ReverseProxy does: an HTTP/1.0 request would close its upstream
		// connection after each answer.
		req.Header.SetProtocol("HTTP/1.1")
		req.Header.ResetConnectionClose() // the caller's connection, not ours
		if len(req.URI().Host()) == 0 {
			req.URI().SetHost(host) // fasthttp's client refuses a request without one
		}
		if !trustEnvoy {
			removeEnvoyHeaders(&req.Header)
		}
		setForwardedFor(&req.Header, ctx.RemoteIP())
		addVia(&req.Header, ctx.Request.Header.Protocol())

		err := fasttimeout.Do(ctx, upstream, req, resp)
		switch {
		case errors.Is(err, fasttimeout.ErrTimeout):
			// The middleware's own timeout response: the client cannot tell
			// which saw the deadline first.
			answerJSON(ctx, fasthttp.StatusGatewayTimeout, fasttimeout.DefaultBody)
		case errors.Is(err, fasttimeout.ErrClientGone):
			// Do did not call the upstream: nobody is left to answer (the
			// middleware has answered 499), and the upstream did no wrong.
			ctx.SetStatusCode(fasttimeout.StatusClientClosedRequest)
		case errors.Is(err, fasttimeout.ErrShutdown):
			// Do did not call the upstream: the gateway is stopping, as the
			// middleware refuses a request still waiting for a slot then.
			answerJSON(ctx, fasthttp.StatusServiceUnavailable, `{"detail":"Server shutting down, retry later"}`)
			ctx.Response.Header.Set(fasthttp.HeaderRetryAfter, "1")
		case err != nil:
			ctx.Logger().Printf("upstream: %v", upstreamFailure(err))
			answerJSON(ctx, fasthttp.StatusBadGateway, `{"detail":"Upstream unavailable"}`)
		default:
			removeHopByHop(&resp.Header)
			resp.Header.ResetConnectionClose()
			// The gateway's own Server, as nginx (proxy_hide_header's
			// default) and Envoy (server_header_transformation) answer: the
			// client talks to the gateway, and its 504s say so already; the
			// upstream's software and version are not the client's business.
			// Date is the gateway's anyway: fasthttp's server writes its own.
			resp.Header.Del(fasthttp.HeaderServer)
			// The gateway's own HTTP version, not the upstream's (RFC 9110
			// §6.2): an HTTP/1.0 one on a body the server sends chunked
			// made an HTTP/1.1 client read the chunks as the body.
			resp.Header.SetProtocol(nil)
			if resp.BodyStream() == nil {
				resp.CopyTo(&ctx.Response)
				// After the copy, which copies the flag: fasthttp would
				// otherwise add text/plain to a response the upstream sent
				// without Content-Type, and clients would take it for text.
				ctx.Response.Header.SetNoDefaultContentType(true)
				break
			}
			resp.Header.CopyTo(&ctx.Response.Header)
			ctx.Response.Header.SetNoDefaultContentType(true) // as above
			size := resp.Header.ContentLength()
			if size < 0 {
				size = -1 // chunked, whatever the upstream used
			}
			// The server writes the stream after the handler returns, and
			// closes it then (or when it drops the response), which
			// releases resp and its upstream connection.
			ctx.Response.SetBodyStream(&upstreamBody{resp: resp, trailer: &ctx.Response.Header}, size)
			return
		}
		fasthttp.ReleaseResponse(resp)
	}
}

// upstreamFailure says why the upstream call failed, for the log line of a
// 502: fasthttp's own words for a response head over the client's read
// buffer ask to "increase readbuffersize", which the operator knows as
// -max-header-bytes.
func upstreamFailure(err error) string {
	var small *fasthttp.ErrSmallBuffer
	if errors.As(err, &small) {
		return "response head over -max-header-bytes"
	}
	return err.Error()
}

// setForwardedFor appends ip to h's X-Forwarded-For chain, joining the
// caller's lines into one as net/http's ReverseProxy and nginx do: most
// readers (fasthttp's Peek among them) see only the first line, and would
// miss the gateway's entry, the one a trusted hop adds, for the caller's.
func setForwardedFor(h *fasthttp.RequestHeader, ip net.IP) {
	appendToList(h, fasthttp.HeaderXForwardedFor, ip.String())
}

// serverName is the gateway's name in its Server header and its pseudonym
// in Via.
const serverName = "fasttimeout-gateway"

// addVia appends the gateway's entry to h's Via (RFC 9110 §7.6.3, a MUST
// for a gateway's inbound requests): the version of the protocol the
// caller's request came in (proto, "HTTP/1.0" say; HTTP is left unnamed),
// not HTTP/1.1, in which it goes on, and the gateway's pseudonym, after the
// entries of the hops before it, in one line as X-Forwarded-For.
func addVia(h *fasthttp.RequestHeader, proto []byte) {
	version, found := strings.CutPrefix(string(proto), "HTTP/")
	if !found || version == "" {
		version = "1.1" // fasthttp's server reads HTTP/d.d only
	}
	appendToList(h, fasthttp.HeaderVia, version+" "+serverName)
}

// appendToList appends member to h's comma-separated list key, joining the
// caller's lines into one (RFC 9110 §5.3 makes them one list, in order).
func appendToList(h *fasthttp.RequestHeader, key, member string) {
	var list []byte
	for _, v := range h.PeekAll(key) {
		if v = bytes.TrimSpace(v); len(v) > 0 {
			list = append(append(list, v...), ", "...)
		}
	}
	h.SetBytesV(key, append(list, member...))
}

// upstreamBody is an upstream response's body stream, forwarded to the
// client; closing it releases the response.
type upstreamBody struct {
	resp *fasthttp.Response
	// trailer is the client's response header, which gets the upstream's
	// trailer fields at the end of the body: fasthttp reads them then, and
	// its server writes them after the last chunk it reads from here.
	trailer *fasthttp.ResponseHeader
}

func (b *upstreamBody) Read(p []byte) (int, error) {
	n, err := b.resp.BodyStream().Read(p)
	if err == io.EOF {
		copyTrailer(&b.resp.Header, b.trailer)
	}
	return n, err
}

// copyTrailer sets dst's trailer fields to src's, announcing in dst those
// src received without announcing. It replaces rather than adds, so that a
// second call (a second read at the end of the body) changes nothing.
func copyTrailer(src, dst *fasthttp.ResponseHeader) {
	for _, key := range src.PeekTrailerKeys() {
		name := string(key)
		_ = dst.AddTrailer(name) // src's parse has refused the forbidden names
		dst.Del(name)
		for _, v := range src.PeekAllTrailer(name) {
			dst.AddBytesV(name, v)
		}
	}
}

func (b *upstreamBody) Close() error {
	err := b.resp.CloseBodyStream()
	fasthttp.ReleaseResponse(b.resp)
	return err
}
