package fasttimeout

import (
	"cmp"
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
	// Timeout, as a proxy or load balancer answers the same event.
	DefaultStatusCode = fasthttp.StatusGatewayTimeout
	// DefaultContentType is the content type of a timeout response with a body.
	DefaultContentType = "application/json"
	// DefaultBody is the body of the timeout response.
	DefaultBody = `{"detail":"Request processing time exceeded limit"}`
	// DefaultPrecision is the default Config.Precision.
	DefaultPrecision = time.Millisecond
	// ShedBody is the body of the 503 sent to a request refused without
	// running, by Config.MaxLateHandlers or the concurrency limit (see
	// Config.AdaptiveConcurrency and Config.MaxConcurrency).
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

// modeNames are the Modes' names, by value, for String and UnmarshalText.
var modeNames = [...]string{Racing: "racing", Cooperative: "cooperative"}

// String returns "racing", "cooperative", or "Mode(n)" for any other value.
func (m Mode) String() string {
	if m < 0 || int(m) >= len(modeNames) {
		return fmt.Sprintf("Mode(%d)", int(m))
	}
	return modeNames[m]
}

// MarshalText returns String's name, so that a Mode can be a flag
// (flag.TextVar) or a configuration value; it fails for an unknown Mode.
func (m Mode) MarshalText() ([]byte, error) {
	if m != Racing && m != Cooperative {
		return nil, fmt.Errorf("fasttimeout: unknown %v", m)
	}
	return []byte(m.String()), nil
}

// UnmarshalText sets m from "racing" or "cooperative".
func (m *Mode) UnmarshalText(text []byte) error {
	for mode, name := range modeNames {
		if string(text) == name {
			*m = Mode(mode)
			return nil
		}
	}
	return fmt.Errorf("fasttimeout: mode must be racing or cooperative, got %q", text)
}

// Config configures [New]. The zero value works: racing mode, a 5 s timeout
// and a 504 JSON timeout response. New reads it once; later changes have no
// effect.
type Config struct {
	// Timeout bounds each request, measured from its arrival: fasthttp's
	// ctx.Time(), or with HonorQueueHeaders when the proxy in front first
	// saw it. Time spent waiting for a concurrency slot counts. Zero means
	// DefaultTimeout (5 s); a negative value, or one under 1 ms (a unit
	// mistake: Timeout: 5 is 5 ns), panics in New.
	Timeout time.Duration

	// StatusCode is the status of the timeout response. Zero means
	// DefaultStatusCode (504); values outside 200-599 panic in New (a client
	// given a 1xx would wait for another answer). A 204, 205 or 304 has no
	// body: Body then defaults to none, and a non-empty Body panics in New.
	StatusCode int

	// Body is the body of the timeout response. Nil means DefaultBody, or
	// none with a StatusCode of 204, 205 or 304; an empty non-nil slice
	// sends an empty body.
	Body []byte

	// ContentType is the Content-Type of the timeout response. Empty means
	// DefaultContentType, or none for a response with no body (an OnTimeout
	// that adds a body sets its type too). A value with a control character
	// other than a tab, which no header value may hold, panics in New.
	ContentType string

	// Mode chooses racing (the zero value) or cooperative bounding.
	Mode Mode

	// Precision is the tick of the middleware's housekeeping goroutine while
	// it watches cooperative requests: their contexts end between the
	// deadline and about one Precision after it, and at server shutdown.
	// Racing requests have a timer each and do not depend on it. With
	// nothing to watch (only racing requests, or cooperative ones that are
	// disarmed and hang-up-watched), it rests, waking every 100 ms for
	// shutdown and to retire idle workers. Smaller values time out closer to
	// the deadline and cost more CPU; values above 100 ms tick every 100 ms.
	// Zero means DefaultPrecision (1 ms); values below 100 µs panic in New.
	Precision time.Duration

	// OnTimeout, if set, is called on the server goroutine when a request
	// times out, just before the timeout response; resp holds it and may be
	// changed (a request ID header, say). Context(ctx) is done with cause
	// ErrTimeout (or ErrShutdown if shutdown ended it first), except for a
	// request a nested New answers without running, its budget spent (see
	// SpentBudget): there it is the enclosing New's, which runs on. In
	// racing mode the handler may still be running and owns ctx: OnTimeout
	// must not modify ctx, and may read its request and user values only if
	// neither the handler nor OnLateReturn changes them after the deadline.
	// A panic in OnTimeout goes up the server goroutine as a handler's
	// would; in racing mode the request is still answered with resp.
	OnTimeout func(ctx *fasthttp.RequestCtx, resp *fasthttp.Response)

	// OnPanic, if set, receives the value and stack of a panic of a handler
	// that has already timed out or whose client has hung up, on the
	// handler's goroutine (ErrHandlerGoexit and no stack for a
	// runtime.Goexit). Nil logs both with ctx.Logger(), except
	// http.ErrAbortHandler, which net/http does not log either. A panic
	// before the deadline and any hang-up is re-raised on the server
	// goroutine with its original value instead. OnPanic and OnLateReturn
	// must not panic: in racing mode they run on a worker goroutine, where
	// no recover can catch it and the process ends; in cooperative mode the
	// panic goes up the server goroutine.
	OnPanic func(ctx *fasthttp.RequestCtx, value any, stack []byte)

	// OnLateReturn, if set, is called when a late handler returns, with how
	// long after its deadline, or after its client's hang-up, that was
	// (never negative). It runs on the handler's goroutine, which owns ctx
	// again, but in racing mode OnTimeout or OnHangup may still be running
	// on the server goroutine: it must not change what they read of ctx.
	OnLateReturn func(ctx *fasthttp.RequestCtx, late time.Duration)

	// TimeoutFunc, if set, chooses each request's timeout (by path, say); a
	// result of zero or less means Timeout. It runs on the server goroutine
	// before the handler and must be fast. A panic in it goes up the server
	// goroutine as a handler's would and counts in Stats.Panics, as a
	// runtime.Goexit does (see New).
	TimeoutFunc func(ctx *fasthttp.RequestCtx) time.Duration

	// Skip, if set, exempts the requests for which it returns true: their
	// handler runs directly, without deadline or context. It runs on the
	// server goroutine first, and panics as TimeoutFunc does.
	Skip func(ctx *fasthttp.RequestCtx) bool

	// HonorDeadlineHeaders takes the caller's deadline into account: the
	// smallest valid value among all lines of grpc-timeout (gRPC wire
	// format, "250m"), X-Envoy-Expected-Rq-Timeout-Ms (0 means no timeout)
	// and Request-Timeout (seconds; whole seconds count as rounded down, so
	// a finer header within the second above gives the budget). The timeout
	// becomes the smaller of its own and that budget less DeadlineMargin; a
	// budget already spent gets the timeout response at once, without
	// running the handler (Stats.SpentBudgets). Malformed values are ignored
	// and counted in Stats. Names match in any case, but on a server with
	// DisableHeaderNamesNormalizing only in canonical form ("Grpc-Timeout")
	// or lower case. Off by default: trust these headers only from callers
	// you trust.
	HonorDeadlineHeaders bool

	// DeadlineMargin is taken off a caller's budget (see
	// HonorDeadlineHeaders) to leave time for the response to travel back;
	// ignored without HonorDeadlineHeaders. Zero means no margin; negative
	// values panic in New.
	DeadlineMargin time.Duration

	// MaxLateHandlers caps the handlers still running after their deadline
	// or their client's hang-up: while that many run, new requests get 503
	// Service Unavailable at once, with Retry-After and a JSON body, so
	// goroutines and memory stay bounded. In cooperative mode a handler
	// that asked for its context (Context, Do) counts from the context's end
	// at the deadline or its client's hang-up; one that did not is found
	// late only when it returns (its client is not watched either), so it
	// never counts while it runs. Zero means no cap; negative values panic
	// in New.
	MaxLateHandlers int

	// RetryAfter is the Retry-After of the 503 sent by MaxLateHandlers or the
	// concurrency limit (see AdaptiveConcurrency), rounded up to whole
	// seconds. Zero means 1 s; negative values panic in New.
	RetryAfter time.Duration

	// IgnoreHangups switches off the watch of clients for hang-ups. By
	// default a request's connection is watched once it has run HangupDelay
	// (5 ms), unless its timeout is under 100 ms (its deadline ends it soon,
	// and a storm of them watched at once would cost the CPU their timeout
	// answers need; one kept past that deadline by Disarm or Extend is
	// watched from then on). If the client closes or resets the connection
	// while the handler runs, or half-closes it after sending (as net/http
	// counts it), the context is cancelled with cause ErrClientGone and the
	// handler is late, as after a timeout: counted in Stats.ClientGone and
	// LateRunning, capped by MaxLateHandlers, reported to OnLateReturn, its
	// response going nowhere. A request that waited for a slot under the
	// concurrency limit has its connection looked at once as it gets it:
	// if the client is gone, it gets 499 without running, counted in
	// ClientGone and LeftWaiting, neither a latency nor a timeout to the
	// adaptive limit.
	//
	// Watching needs epoll and the connection's descriptor: Linux only, for
	// TCP, Unix and TLS connections, and wrappers that expose theirs through
	// a NetConn or Raw method (go-proxyproto) or embed it (MaxConnsPerIP);
	// not in-memory ones (Stats.UnwatchedClients). In cooperative mode only
	// handlers that called Context or Do are watched: the others could
	// neither stop nor be kept from calling an upstream. Of nested News, the
	// outermost that watches does so; one inside a New that ignores
	// hang-ups watches as cooperative mode does.
	IgnoreHangups bool

	// OnHangup, if set, is called when a request's client hung up while its
	// handler ran, with how long after the request's start: in racing mode
	// on the server goroutine as soon as the hang-up is seen (the handler
	// may still run: ctx is off limits as for OnTimeout), in cooperative
	// mode when the handler returns, and for a request found gone as it got
	// its slot under the concurrency limit (see IgnoreHangups), which never
	// ran. Context(ctx) is done with cause ErrClientGone; for one that never
	// ran, not inside another New (it is the enclosing New's) nor if it was
	// asked for before (see Context). Never called with IgnoreHangups.
	OnHangup func(ctx *fasthttp.RequestCtx, after time.Duration)

	// AdaptiveConcurrency admits requests under an adaptive concurrency
	// limit, so that a server sent more than it can do answers at its
	// capacity instead of giving every request a thin slice of CPU until all
	// time out. The limit counts every running handler, late ones included
	// (as MaxLateHandlers counts them), keeps a few slots beyond those late
	// handlers and long polls (see Disarm) hold, falls when the latency of
	// handlers that return in time (not by a panic) grows well past its
	// unloaded level (or, with no handler in time, when requests time
	// out), and grows while latency stays near it and the limit is reached. A request beyond the limit waits for a slot at most
	// a tenth of its remaining budget and not past MaxQueueAge, newest first
	// under overload; one that cannot start in time gets 503 at once, with
	// Retry-After and ShedBody, without running (Stats.Rejected). When the
	// CPU is so saturated that requests wait in the Go scheduler's run queue
	// before they are read, a share of new requests is refused the same
	// way, steered by that wait against a twentieth of Timeout. One whose
	// client hung up while it waited does not run either (see
	// IgnoreHangups). Below the limit admission costs a few atomic
	// operations and no allocation. Off by default; MaxConcurrency is the
	// ceiling. See docs/overload.md.
	AdaptiveConcurrency bool

	// MaxConcurrency caps the handlers running at once, late ones included:
	// without AdaptiveConcurrency a fixed limit (zero: none), with it the
	// adaptive limit's ceiling (zero: DefaultMaxConcurrency). Requests
	// beyond it wait or are refused as under AdaptiveConcurrency. Values
	// above 2³²−1 count as 2³²−1 (in Stats too); negative values panic in New.
	MaxConcurrency int

	// HonorQueueHeaders counts a request's age from when the proxy in front
	// first saw it: the earliest valid X-Request-Start or X-Queue-Start
	// (nginx's "t=<seconds>.<millis>", Heroku's milliseconds, Apache's
	// "t=<microseconds>", the unit told by its magnitude), else the epoch
	// seconds of AWS ALB's X-Amzn-Trace-Id (Self, else Root; the earliest of
	// several), second as it may be the caller's, its Root the start of a
	// whole trace. Whole seconds count from their end; a start in the future
	// (clock skew) counts as now; values over an hour away, or malformed,
	// are ignored and counted in Stats (BadQueueHeaders), even beside a
	// valid one. Names match as for HonorDeadlineHeaders. Off by default:
	// trust these headers only from proxies you run.
	HonorQueueHeaders bool

	// MaxQueueAge, if set, is the oldest a request may be when its handler
	// starts, counted from its arrival (see HonorQueueHeaders): its caller's
	// patience (a load balancer's timeout, say), past which the work is for
	// nobody. A request older than that on arrival gets the timeout response
	// at once, without running, and counts in Stats as a spent budget (as
	// rack-timeout's wait_timeout does); so does one that grows that old
	// waiting for a concurrency slot, or that finds no slot free less than
	// 100 µs before it would (it is not queued). Once the handler starts,
	// only its deadline bounds it (Timeout or TimeoutFunc's, from arrival
	// too). Zero means no bound; negative values panic in New.
	MaxQueueAge time.Duration

	// Stats, if set, receives the middleware's counters. Several middlewares
	// may share one; nested News sharing one each count the request. Counting
	// requests costs a few atomic adds each, so it is done only when Stats is
	// set.
	Stats *Stats
}

// settings is a Config with its defaults filled in, and what follows from
// it, built once by New.
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
	mustNotBeNegative("Timeout", cfg.Timeout)
	cfg.Timeout = cmp.Or(cfg.Timeout, DefaultTimeout)
	if cfg.Timeout < minTimeout {
		panic(fmt.Sprintf("fasttimeout: Config.Timeout must be at least %v, as TimeoutFromEnv's, got %v (a bare number counts nanoseconds)",
			minTimeout, cfg.Timeout))
	}
	cfg.StatusCode = cmp.Or(cfg.StatusCode, DefaultStatusCode)
	if cfg.StatusCode < 200 || cfg.StatusCode > 599 {
		panic(fmt.Sprintf("fasttimeout: Config.StatusCode must be a final HTTP status (200-599), got %d", cfg.StatusCode))
	}
	switch {
	case cfg.Body == nil && !hasNoBody(cfg.StatusCode):
		cfg.Body = []byte(DefaultBody)
	case len(cfg.Body) > 0 && hasNoBody(cfg.StatusCode):
		panic(fmt.Sprintf("fasttimeout: Config.StatusCode %d has no body, so Config.Body must be empty, got %d bytes",
			cfg.StatusCode, len(cfg.Body)))
	default:
		// A copy: the caller may reuse its slice. An unset Body of a status
		// without one becomes empty.
		cfg.Body = append([]byte{}, cfg.Body...)
	}
	if i := strings.IndexFunc(cfg.ContentType, isControl); i >= 0 {
		// fasthttp would send line breaks as spaces and other control
		// characters as they are, which clients reject.
		panic(fmt.Sprintf("fasttimeout: Config.ContentType must not hold a control character (%q at byte %d), got %q",
			cfg.ContentType[i], i, cfg.ContentType))
	}
	// No body, no type: writeTimeoutResponse then clears Content-Type.
	if cfg.ContentType == "" && len(cfg.Body) > 0 {
		cfg.ContentType = DefaultContentType
	}
	if cfg.Mode != Racing && cfg.Mode != Cooperative {
		panic(fmt.Sprintf("fasttimeout: Config.Mode must be Racing or Cooperative, got %v", cfg.Mode))
	}
	cfg.Precision = cmp.Or(cfg.Precision, DefaultPrecision)
	if cfg.Precision < minPrecision {
		panic(fmt.Sprintf("fasttimeout: Config.Precision must be at least %v, got %v", minPrecision, cfg.Precision))
	}
	mustNotBeNegative("DeadlineMargin", cfg.DeadlineMargin)
	mustNotBeNegative("MaxLateHandlers", cfg.MaxLateHandlers)
	mustNotBeNegative("MaxConcurrency", cfg.MaxConcurrency)
	if cfg.MaxConcurrency == 0 && cfg.AdaptiveConcurrency {
		cfg.MaxConcurrency = DefaultMaxConcurrency
	}
	mustNotBeNegative("MaxQueueAge", cfg.MaxQueueAge)
	mustNotBeNegative("RetryAfter", cfg.RetryAfter)
	cfg.RetryAfter = cmp.Or(cfg.RetryAfter, time.Second)
	// Rounded up without the overflow of adding a second less a nanosecond
	// first.
	retryAfter := int64(cfg.RetryAfter / time.Second)
	if cfg.RetryAfter%time.Second > 0 {
		retryAfter++
	}
	s := settings{
		Config:           cfg,
		stats:            cfg.Stats,
		retryAfterHeader: strconv.FormatInt(retryAfter, 10),
		countRequests:    cfg.Stats != nil,
		watchHangups:     hangupSupported && !cfg.IgnoreHangups,
	}
	if s.stats == nil {
		s.stats = new(Stats)
	}
	return s
}

// mustNotBeNegative panics, naming the Config field and its value v, if v
// is negative.
func mustNotBeNegative[T int | time.Duration](field string, v T) {
	if v < 0 {
		panic(fmt.Sprintf("fasttimeout: Config.%s must not be negative, got %v", field, v))
	}
}

// hasNoBody reports whether a response of status code has no body: fasthttp
// drops a 204's or 304's, and would send a 205's, which RFC 9110 §15.3.6
// forbids.
func hasNoBody(code int) bool {
	return code == fasthttp.StatusNoContent || code == fasthttp.StatusResetContent || code == fasthttp.StatusNotModified
}

// isControl reports whether r is a control character that a header value
// must not hold (RFC 9110 §5.5: a tab is allowed).
func isControl(r rune) bool { return r < ' ' && r != '\t' || r == 0x7f }

// writeTimeoutResponse fills resp with the configured timeout response. An
// empty ContentType clears any that resp had.
func (s *settings) writeTimeoutResponse(resp *fasthttp.Response) {
	resp.SetStatusCode(s.StatusCode)
	resp.Header.SetContentType(s.ContentType)
	resp.SetBody(s.Body)
}

// writeShedResponse fills resp with the 503 of MaxLateHandlers and the
// concurrency limit.
func (s *settings) writeShedResponse(resp *fasthttp.Response) {
	resp.SetStatusCode(fasthttp.StatusServiceUnavailable)
	resp.Header.Set(fasthttp.HeaderRetryAfter, s.retryAfterHeader)
	resp.Header.SetContentType(DefaultContentType)
	resp.SetBodyString(ShedBody)
}
