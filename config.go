package fasttimeout

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/valyala/fasthttp"
)

// Defaults used for the zero values of [Config] fields.
const (
	// DefaultTimeout bounds a request when Config.Timeout is zero.
	DefaultTimeout = 5 * time.Second
	// DefaultStatusCode is the status of the timeout response: 504 Gateway
	// Timeout, the code a proxy or load balancer uses for the same event.
	DefaultStatusCode = fasthttp.StatusGatewayTimeout
	// DefaultContentType is the content type of the timeout response,
	// when it has a body.
	DefaultContentType = "application/json"
	// DefaultBody is the body of the timeout response.
	DefaultBody = `{"detail":"Request processing time exceeded limit"}`
	// DefaultPrecision is how often a middleware's housekeeping goroutine
	// ticks while it watches the contexts of cooperative requests (see
	// Config.Precision).
	DefaultPrecision = time.Millisecond
	// ShedBody is the body of the 503 sent to a request refused without
	// running: while Config.MaxLateHandlers handlers are running past their
	// deadline, or by the concurrency limit (see Config.AdaptiveConcurrency
	// and Config.MaxConcurrency).
	ShedBody = `{"detail":"Server overloaded, retry later"}`
	// DefaultMaxConcurrency is the ceiling of the adaptive concurrency limit
	// when Config.MaxConcurrency is zero.
	DefaultMaxConcurrency = 1000
)

// Mode selects how a handler is bounded.
type Mode int

const (
	// Racing runs the handler on another goroutine and answers with the
	// timeout response at the deadline, whether or not the handler has
	// returned. It is the default.
	Racing Mode = iota
	// Cooperative runs the handler on the server goroutine and cancels its
	// context at the deadline. A handler that returns after the deadline has
	// its response replaced by the timeout response; a handler that ignores
	// its context is not bounded.
	Cooperative
)

// String returns "racing" or "cooperative", or "Mode(n)" for a value that
// is neither.
func (m Mode) String() string {
	switch m {
	case Racing:
		return "racing"
	case Cooperative:
		return "cooperative"
	}
	return fmt.Sprintf("Mode(%d)", int(m))
}

// MarshalText returns the name String returns, so that a Mode can be a flag
// (flag.TextVar) or a configuration value; for a Mode that is neither
// Racing nor Cooperative it returns an error.
func (m Mode) MarshalText() ([]byte, error) {
	if m != Racing && m != Cooperative {
		return nil, fmt.Errorf("fasttimeout: unknown %v", m)
	}
	return []byte(m.String()), nil
}

// UnmarshalText sets m from "racing" or "cooperative".
func (m *Mode) UnmarshalText(text []byte) error {
	switch string(text) {
	case "racing":
		*m = Racing
	case "cooperative":
		*m = Cooperative
	default:
		return fmt.Errorf("fasttimeout: mode must be racing or cooperative, got %q", text)
	}
	return nil
}

// Config configures [New]. The zero value is a working configuration: racing
// mode, a 5 s timeout and a 504 JSON timeout response. Configuration is read
// once, when New is called; changing a Config afterwards has no effect.
type Config struct {
	// Timeout bounds each request, measured from its arrival: fasthttp's
	// ctx.Time(), when the server had read the request, or, with
	// HonorQueueHeaders, the time the proxy in front first saw it. Time spent
	// waiting for a concurrency slot (see AdaptiveConcurrency) counts. Zero
	// means DefaultTimeout (5 s); a negative value panics in New.
	Timeout time.Duration

	// StatusCode is the status of the timeout response. Zero means
	// DefaultStatusCode (504 Gateway Timeout); values outside 200-599 panic
	// in New: a 1xx status is informational, and a client given one as the
	// answer would wait on for another. A 204, 205 or 304 response has no
	// body: with one of these, Body defaults to none, and a non-empty Body
	// panics in New (fasthttp would drop it, or for 205 send it, which RFC
	// 9110 forbids).
	StatusCode int

	// Body is the body of the timeout response. Nil means DefaultBody, or
	// none with a StatusCode of 204, 205 or 304; an empty non-nil slice
	// sends an empty body.
	Body []byte

	// ContentType is the Content-Type of the timeout response. Empty means
	// DefaultContentType ("application/json"), or none for a response with
	// no body (an empty Body, or a StatusCode of 204, 205 or 304); an
	// OnTimeout that gives such a response a body sets its type too. A value
	// with a control character other than a tab (a line break, say), which no
	// header value may hold, panics in New.
	ContentType string

	// Mode chooses racing (the zero value) or cooperative bounding.
	Mode Mode

	// Precision is the period of the middleware's housekeeping goroutine
	// while it watches the contexts of cooperative requests: it times such
	// a request out at its deadline, which ends the context (between the
	// deadline and about one Precision after it), and cancels the context
	// at server shutdown. Racing requests do not depend on it: each has a
	// timer for its deadline. With only racing requests in flight, and
	// cooperative ones whose deadline is off (Disarm) and whose hang-up
	// watch has started (see HangupDelay), the housekeeping goroutine
	// rests, waking every 100 ms to end their contexts at server shutdown
	// and retire idle workers. Smaller values time out closer to the
	// deadline and cost more CPU; values above 100 ms
	// tick every 100 ms, as a rest does. Zero means DefaultPrecision (1 ms);
	// values below 100 µs panic in New.
	Precision time.Duration

	// OnTimeout, if set, is called on the server goroutine when a request
	// times out, just before the timeout response is sent. resp holds the
	// configured timeout response and may be changed (a request ID header,
	// say). Context(ctx) is the request's context, done with cause
	// ErrTimeout (or ErrShutdown, if the server's shutdown ended it first:
	// a context ends once), but for a request that a New inside another
	// answers without running, its budget spent (see SpentBudget): there it
	// is the enclosing New's, which runs on. In racing mode the handler
	// may still be running and owns ctx: OnTimeout must not modify ctx, and
	// may read its request and user values (directly, or through
	// Context(ctx) and its Value) only if the handler (and OnLateReturn,
	// which may run meanwhile) does not change them after its deadline. If
	// OnTimeout panics, the panic goes up the server goroutine as a
	// handler's would; in racing mode the request is still answered with
	// resp as it stands, since the late handler keeps ctx.
	OnTimeout func(ctx *fasthttp.RequestCtx, resp *fasthttp.Response)

	// OnPanic, if set, receives a panic of a handler that has already timed
	// out, or whose client has hung up (see IgnoreHangups), with its value
	// and stack, on the goroutine that ran the handler. Nil logs both
	// through the server's logger (ctx.Logger()), except for a panic with
	// http.ErrAbortHandler, which aborts a response on purpose and which
	// net/http's server does not log either. A panic in time, before the
	// deadline and any hang-up, is never passed here: it is re-raised on the
	// server goroutine with its original value, as if the handler had not
	// been wrapped. OnPanic and OnLateReturn must not panic: in racing
	// mode they run on a worker goroutine of the middleware, where no
	// recover of the server's can catch it, and the process ends; in
	// cooperative mode the panic goes up the server goroutine.
	OnPanic func(ctx *fasthttp.RequestCtx, value any, stack []byte)

	// OnLateReturn, if set, is called when a late handler finally returns:
	// one that timed out, with how long after its deadline that was, or one
	// whose client hung up, with how long after the hang-up (never
	// negative). It runs on the handler's goroutine, which owns ctx again at
	// that point, but in racing mode not alone: OnTimeout or OnHangup for
	// the same request may still be running on the server goroutine, and
	// OnLateReturn must not change what they read of ctx.
	OnLateReturn func(ctx *fasthttp.RequestCtx, late time.Duration)

	// TimeoutFunc, if set, chooses the timeout of each request (by path,
	// say). A result of zero or less means Timeout. It runs on the server
	// goroutine before the handler and must be fast. If it panics, the
	// panic goes up the server goroutine as a handler's would, and counts
	// in Stats.Panics, as a call of runtime.Goexit does (see New).
	TimeoutFunc func(ctx *fasthttp.RequestCtx) time.Duration

	// Skip, if set, exempts the requests for which it returns true: their
	// handler runs directly, without deadline or context. It runs on the
	// server goroutine first, and panics as TimeoutFunc does.
	Skip func(ctx *fasthttp.RequestCtx) bool

	// HonorDeadlineHeaders makes the middleware take the caller's own
	// deadline into account: the smallest valid value among all lines of
	// grpc-timeout (gRPC wire format, e.g. "250m"),
	// X-Envoy-Expected-Rq-Timeout-Ms (0 there means no timeout) and
	// Request-Timeout (seconds; whole seconds are taken as rounded down, so
	// a finer header within the second above gives the budget). The
	// request's timeout becomes the smaller of its own and the caller's
	// budget less DeadlineMargin; a budget already spent is answered with
	// the timeout response at once, without running the handler, and
	// counted in Stats (SpentBudgets). Malformed values are ignored and
	// counted in Stats. Names are matched in any case, except on a server
	// with DisableHeaderNamesNormalizing, which keeps them as received:
	// there only the canonical form ("Grpc-Timeout") and lower case
	// ("grpc-timeout") are found. Off by default: only trust these headers
	// from callers you trust.
	HonorDeadlineHeaders bool

	// DeadlineMargin is taken off a caller's budget (see
	// HonorDeadlineHeaders) to leave time for the response to travel back;
	// without HonorDeadlineHeaders it is ignored. Zero means no margin;
	// negative values panic in New.
	DeadlineMargin time.Duration

	// MaxLateHandlers caps the handlers still running after their deadline
	// or their client's hang-up. While that many are running, new requests
	// are refused at once with 503 Service Unavailable, a Retry-After header
	// and a JSON body, so goroutines and memory stay bounded when handlers
	// pile up. In cooperative mode a handler that never asked for its
	// context (Context, Do) is found late only when it returns, so it counts
	// while it runs only if its client hung up; one that did counts from its
	// context's end at the deadline. Zero means no cap; negative values
	// panic in New.
	MaxLateHandlers int

	// RetryAfter is the Retry-After of the 503 sent while MaxLateHandlers
	// are running or to a request refused by the concurrency limit (see
	// AdaptiveConcurrency), rounded up to whole seconds. Zero means 1 s;
	// negative values panic in New.
	RetryAfter time.Duration

	// IgnoreHangups switches off the watch of clients for hang-ups. By
	// default, once a request has run HangupDelay (5 ms), its connection is
	// watched (unless its timeout is under 100 ms: the deadline ends such a
	// request soon anyway, and a storm of them watched at once would cost
	// the CPU their timeout answers need; one that Disarm or Extend keeps
	// running past that deadline is watched from then on), and if the
	// client closes or resets it while the handler runs (a load balancer
	// giving up on the request, say), the request's context is cancelled
	// with cause ErrClientGone and the handler is late from then on, as
	// after a timeout: counted in Stats.ClientGone and LateRunning, capped
	// by MaxLateHandlers, reported to OnLateReturn, its response going
	// nowhere. A client that half-closes its side after sending the
	// request counts as gone, as with net/http.
	//
	// Watching needs the connection's descriptor and epoll, so it works on
	// Linux only, for TCP and Unix connections, TLS ones and listener
	// wrappers that expose the connection through a NetConn method, or a Raw
	// one as go-proxyproto's does (or embed it, as fasthttp's MaxConnsPerIP
	// does); in-memory connections are not watched (and counted in
	// Stats.UnwatchedClients). In cooperative mode only requests whose
	// handler called Context or Do are watched: the others could neither
	// stop nor be kept from calling an upstream. Of nested News (one inside
	// another's handler), the outermost one that watches does so for the
	// request; one inside a New that ignores hang-ups watches as
	// cooperative mode does.
	IgnoreHangups bool

	// OnHangup, if set, is called when a request's client hung up while
	// its handler ran, with how long after the request's start that was:
	// in racing mode on the server goroutine as soon as the hang-up is seen
	// (the handler may still be running: as for OnTimeout, it must not
	// modify ctx, and reads it only if the handler and OnLateReturn leave
	// it alone), in cooperative mode when the handler returns. Context(ctx)
	// is the request's context, done with cause ErrClientGone. With
	// IgnoreHangups it is never called.
	OnHangup func(ctx *fasthttp.RequestCtx, after time.Duration)

	// AdaptiveConcurrency switches on admission by an adaptive concurrency
	// limit, so that a server sent more than it can do keeps answering at
	// its capacity instead of giving every request a thin slice of CPU until
	// all of them time out. The limit counts every handler still running,
	// late ones included, keeps a few slots beyond those late handlers and
	// long polls (see Disarm) hold (a handler on its caller's goroutine, in
	// cooperative mode or inside another New, is late from its deadline only
	// if it asked for its Context), and adapts from what the middleware
	// measures: it falls when the handlers' latency grows well past their
	// unloaded latency (or when requests time out while none finishes in
	// time, at most once a timeout), and grows while latency stays near it
	// and the limit is reached.
	// A request beyond the limit waits for a slot for at most a tenth of its
	// remaining budget, and not past MaxQueueAge; under overload the newest
	// waiter is served first, since the oldest's caller has probably given
	// up. A request that cannot start in time is refused at once with 503
	// Service Unavailable, Retry-After and ShedBody, without running its
	// handler, and counted in Stats (Rejected). When the process's CPU is
	// so saturated that requests wait in the Go scheduler's run queue
	// before they are even read (a wait that no limit on running handlers
	// can see), a share of new requests is refused the same way, steered by
	// the scheduler's latency against a twentieth of Timeout. Below the
	// limit admission costs a few atomic operations and no allocation. Off
	// by default; MaxConcurrency is its ceiling. See docs/overload.md.
	AdaptiveConcurrency bool

	// MaxConcurrency caps the handlers running at once, late ones included.
	// Without AdaptiveConcurrency it is a fixed limit (zero: no limit); with
	// it, the ceiling of the adaptive limit (zero: DefaultMaxConcurrency).
	// Requests beyond the limit wait and are refused as described under
	// AdaptiveConcurrency. Values above 2³²−1 count as 2³²−1 (in Stats
	// too); negative values panic in New.
	MaxConcurrency int

	// HonorQueueHeaders counts a request's age from the time the proxy in
	// front first saw it, read from X-Request-Start or X-Queue-Start (nginx's
	// "t=<seconds>.<millis>", Heroku's milliseconds, Apache's
	// "t=<microseconds>", the unit told by its magnitude; whole seconds
	// count from the end of their second) or from the epoch seconds in AWS
	// ALB's X-Amzn-Trace-Id (its Self field, which the ALB sets, else Root;
	// the end of that second, as the field has no finer unit). A valid
	// X-Request-Start or X-Queue-Start wins, the earliest of them if there
	// are several; X-Amzn-Trace-Id is used only without one, as it may be
	// the caller's, passed on through the proxy, with a Root that began its
	// whole trace (the earliest of several trace ids wins). A start in the
	// future (clock skew) counts as now; values more than an hour away, or
	// malformed, are ignored and counted in Stats (BadQueueHeaders), even
	// beside a valid one. Names are matched as for
	// HonorDeadlineHeaders: in any case, or on a server with
	// DisableHeaderNamesNormalizing in canonical form or lower case only.
	// Off by default: only trust these headers from proxies you run.
	HonorQueueHeaders bool

	// MaxQueueAge, if set, is the oldest a request may be when its handler
	// starts, counted from its arrival (see HonorQueueHeaders): its caller's
	// patience (a load balancer's timeout, say), past which running the
	// handler is work for nobody. A request older than that when it reaches
	// the middleware gets the timeout response at once, without running,
	// and counts in Stats as a spent budget, as Ruby's rack-timeout does
	// with its wait_timeout; so does one that grew older than that waiting
	// for a slot under the concurrency limit, and one that finds no slot
	// free less than 100 µs before it would, which is not queued. It bounds
	// only the time before the handler starts: from then on the request's
	// deadline bounds it (Timeout, or TimeoutFunc's, counted from the
	// arrival too), however long past MaxQueueAge that is; with a Timeout
	// no greater than MaxQueueAge, the deadline comes no later. Zero means
	// no such bound; negative values panic in New.
	MaxQueueAge time.Duration

	// Stats, if set, receives the middleware's counters. Several middlewares
	// may share one Stats; nested News (one inside another's handler)
	// sharing one each count the request they both see. Counting requests
	// costs a few atomic adds per request, so it is done only when Stats is
	// set.
	Stats *Stats
}

// settings is a Config with its defaults filled in, built once by New, and
// what follows from it.
type settings struct {
	Config
	stats            *Stats // Config.Stats, or a private one: timeouts and late handlers are always counted
	retryAfterHeader string // RetryAfter in whole seconds, as the header wants it
	countRequests    bool   // Config.Stats is set
	watchHangups     bool   // the platform can watch for hang-ups and Config.IgnoreHangups is off
}

// minPrecision is the least Config.Precision that New accepts.
const minPrecision = 100 * time.Microsecond

// resolve checks cfg and fills in its defaults. It panics on a
// configuration that cannot work, naming the field and the value.
func (cfg Config) resolve() settings {
	switch {
	case cfg.Timeout < 0:
		panic(fmt.Sprintf("fasttimeout: Config.Timeout must not be negative, got %v", cfg.Timeout))
	case cfg.Timeout == 0:
		cfg.Timeout = DefaultTimeout
	}
	switch {
	case cfg.StatusCode == 0:
		cfg.StatusCode = DefaultStatusCode
	case cfg.StatusCode < 200 || cfg.StatusCode > 599:
		panic(fmt.Sprintf("fasttimeout: Config.StatusCode must be a final HTTP status (200-599), got %d", cfg.StatusCode))
	}
	switch {
	case cfg.Body == nil && hasNoBody(cfg.StatusCode):
		cfg.Body = []byte{}
	case cfg.Body == nil:
		cfg.Body = []byte(DefaultBody)
	case len(cfg.Body) > 0 && hasNoBody(cfg.StatusCode):
		panic(fmt.Sprintf("fasttimeout: Config.StatusCode %d has no body, so Config.Body must be empty, got %d bytes",
			cfg.StatusCode, len(cfg.Body)))
	default:
		cfg.Body = append([]byte{}, cfg.Body...) // the caller may reuse its slice
	}
	if cfg.ContentType == "" {
		// A response with no body has no type to claim: writeTimeoutResponse
		// then clears the Content-Type, and fasthttp sends none.
		if len(cfg.Body) > 0 {
			cfg.ContentType = DefaultContentType
		}
	} else if i := strings.IndexFunc(cfg.ContentType, isControl); i >= 0 {
		// fasthttp would send it with its line breaks turned to spaces, or
		// the other control characters as they are, which clients reject.
		panic(fmt.Sprintf("fasttimeout: Config.ContentType must not hold a control character (%q at byte %d), got %q",
			cfg.ContentType[i], i, cfg.ContentType))
	}
	if cfg.Mode != Racing && cfg.Mode != Cooperative {
		panic(fmt.Sprintf("fasttimeout: Config.Mode must be Racing or Cooperative, got %v", cfg.Mode))
	}
	switch {
	case cfg.Precision == 0:
		cfg.Precision = DefaultPrecision
	case cfg.Precision < minPrecision:
		panic(fmt.Sprintf("fasttimeout: Config.Precision must be at least %v, got %v", minPrecision, cfg.Precision))
	}
	if cfg.DeadlineMargin < 0 {
		panic(fmt.Sprintf("fasttimeout: Config.DeadlineMargin must not be negative, got %v", cfg.DeadlineMargin))
	}
	if cfg.MaxLateHandlers < 0 {
		panic(fmt.Sprintf("fasttimeout: Config.MaxLateHandlers must not be negative, got %d", cfg.MaxLateHandlers))
	}
	switch {
	case cfg.MaxConcurrency < 0:
		panic(fmt.Sprintf("fasttimeout: Config.MaxConcurrency must not be negative, got %d", cfg.MaxConcurrency))
	case cfg.MaxConcurrency == 0 && cfg.AdaptiveConcurrency:
		cfg.MaxConcurrency = DefaultMaxConcurrency
	}
	if cfg.MaxQueueAge < 0 {
		panic(fmt.Sprintf("fasttimeout: Config.MaxQueueAge must not be negative, got %v", cfg.MaxQueueAge))
	}
	switch {
	case cfg.RetryAfter < 0:
		panic(fmt.Sprintf("fasttimeout: Config.RetryAfter must not be negative, got %v", cfg.RetryAfter))
	case cfg.RetryAfter == 0:
		cfg.RetryAfter = time.Second
	}
	s := settings{
		Config:           cfg,
		stats:            cfg.Stats,
		retryAfterHeader: strconv.FormatInt(ceilSeconds(cfg.RetryAfter), 10),
		countRequests:    cfg.Stats != nil,
		watchHangups:     hangupSupported && !cfg.IgnoreHangups,
	}
	if s.stats == nil {
		s.stats = new(Stats)
	}
	return s
}

// hasNoBody reports whether a response of status code has no body: fasthttp
// drops the body of a 204 or a 304, and RFC 9110 §15.3.6 forbids one in a
// 205, which fasthttp would send.
func hasNoBody(code int) bool {
	return code == fasthttp.StatusNoContent || code == fasthttp.StatusResetContent || code == fasthttp.StatusNotModified
}

// isControl reports whether r is a control character that a header value
// must not hold (RFC 9110 §5.5: a tab is allowed).
func isControl(r rune) bool { return r < ' ' && r != '\t' || r == 0x7f }

// ceilSeconds returns d in whole seconds, rounded up, without the overflow
// of adding a second less a nanosecond first.
func ceilSeconds(d time.Duration) int64 {
	s := int64(d / time.Second)
	if d%time.Second > 0 {
		s++
	}
	return s
}

// writeTimeoutResponse fills resp with the configured timeout response. An
// empty ContentType clears any that resp had.
func (s *settings) writeTimeoutResponse(resp *fasthttp.Response) {
	resp.SetStatusCode(s.StatusCode)
	resp.Header.SetContentType(s.ContentType)
	resp.SetBody(s.Body)
}

// writeShedResponse fills resp with the 503 sent while too many handlers run
// late, or to a request refused by the concurrency limit.
func (s *settings) writeShedResponse(resp *fasthttp.Response) {
	resp.SetStatusCode(fasthttp.StatusServiceUnavailable)
	resp.Header.Set(fasthttp.HeaderRetryAfter, s.retryAfterHeader)
	resp.Header.SetContentType(DefaultContentType)
	resp.SetBodyString(ShedBody)
}
