// Package fasttimeoutotel records what fasttimeout does to a request on the
// request's OpenTelemetry span: an event when it times out (or its server
// shuts down, or its client hangs up), an event when its handler finally
// returns after that, an event when it is refused with 503 without running,
// and the span's status.
//
// fasthttp has no standard way to carry a span from middleware to handler,
// so this package uses a user value: [Attach] (or [Middleware], which starts
// a server span and calls Attach) stores the context.Context holding the
// span under a key of this package, on the server goroutine, before
// fasttimeout.New hands the request to its handler; [Handler], used inside
// fasttimeout.New, reads it back on the handler's goroutine. No RequestCtx is
// read from any other goroutine.
//
//	handler := fasttimeoutotel.Middleware(
//		fasttimeout.New(fasttimeoutotel.Handler(app), fasttimeout.Config{}),
//		tracer)
//
// A span must still be open to record that a late handler returned, so the
// span ends when both the middleware's call and the handler have returned:
// for a request that times out with a handler that ignores its context,
// after the timeout response, once the late handler returns. The span's
// duration is then the work done, and its "fasttimeout.timeout" event marks
// the answer.
//
// It lives in its own module so that the library keeps fasthttp as its only
// dependency.
package fasttimeoutotel

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"reflect"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/fasttimeout/fasttimeout"
	"github.com/valyala/fasthttp"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
)

// Names of the span events and of their attributes. Durations are in
// seconds, as OpenTelemetry's semantic conventions measure them.
const (
	// EventTimeout is recorded when the request's deadline passes (cause
	// fasttimeout.ErrTimeout): the client gets the timeout response.
	EventTimeout = "fasttimeout.timeout"
	// EventShutdown is recorded when the server shuts down while the
	// handler runs (cause fasttimeout.ErrShutdown).
	EventShutdown = "fasttimeout.shutdown"
	// EventClientGone is recorded when the client hangs up while the handler
	// runs (cause fasttimeout.ErrClientGone), or while the request waits for
	// a slot (see fasttimeout.Stats.LeftWaiting).
	EventClientGone = "fasttimeout.client_gone"
	// EventCancelled is recorded when the request's context ends with any
	// other cause.
	EventCancelled = "fasttimeout.cancelled"
	// EventLateReturn is recorded when a handler returns after its context
	// ended with one of the causes above, or past its deadline before its
	// context ended (after EventTimeout, recorded then).
	EventLateReturn = "fasttimeout.late_return"
	// EventRejected is recorded when the middleware refuses the request
	// with 503 Service Unavailable without running its handler (see
	// fasttimeout.RejectReason), with AttrRejectReason.
	EventRejected = "fasttimeout.rejected"

	// AttrCause is the context.Cause of the request's end, as a string.
	AttrCause = attribute.Key("fasttimeout.cause")
	// AttrTimeout is the time the handler had when it started, in seconds.
	AttrTimeout = attribute.Key("fasttimeout.timeout")
	// AttrLateness is, in seconds, how long after the deadline (for a
	// timeout; after the context ended for the other causes) the event
	// happened.
	AttrLateness = attribute.Key("fasttimeout.lateness")
	// AttrRejectReason is why the request was refused:
	// fasttimeout.RejectedQueueFull, RejectedQueueTimeout or
	// RejectedLateHandlers.
	AttrRejectReason = attribute.Key("fasttimeout.reject_reason")
)

// contextKey is the user value key under which Attach stores a *request.
type contextKey struct{}

// request is one request's span, held open by the middleware's call (until
// its end function) and by Handler (until the handler has returned and its
// events are recorded); the last one to let go ends the span.
type request struct {
	span    trace.Span
	holds   atomic.Int32
	handled atomic.Bool // Handler holds the span, or let go of it having seen the request end: the end is its to record

	// The context of a handler that returned in time, and the time it
	// had, set by Handler before it lets go and read by Attach's end once
	// the middleware's call has returned, or by whoever lets go of a span
	// answered at the deadline or the hang-up last. It ends with ErrTimeout or
	// ErrClientGone if what ran after Handler inside fasttimeout.New took
	// the request past its deadline or outlived its client: in cooperative
	// mode the middleware then answers in the response itself, with no
	// timeout response for end to find.
	inTime  context.Context
	timeout time.Duration

	// answered is the status the middleware answered with at the deadline
	// or the client's hang-up, set by Attach's end; 0 if it did not.
	answered atomic.Int64

	// failed is set by the record of the request's end, which sets the
	// span's status to Error with fasttimeout's cause: Middleware must not
	// overwrite it, and no second end is recorded (see record).
	failed atomic.Bool

	// endEvent is the event of the end recorded, set by the record that set
	// failed; status the status code Middleware recorded (0 under Attach
	// alone). Both are read by the last release (see errorTypeOfEnd).
	endEvent string
	status   int
}

// Attach makes the span of c (trace.SpanFromContext) the request's span for
// [Handler]. Call it on the server goroutine before the request reaches
// fasttimeout.New, and call the returned end on the same goroutine once that
// call has returned, in place of span.End: it records EventRejected if the
// middleware refused the request (the handler, and so [Handler], never ran;
// inside nested fasttimeout.News, an inner one's refusal too, as
// fasttimeout.RejectReason reports it),
// EventTimeout or EventClientGone if it answered so after Handler's next
// had returned in time (what ran after it inside fasttimeout.New took the
// request past its deadline, or outlived its client), and the span ends
// then, or when a late handler returns.
//
// A request whose client hung up while it waited for a slot, which the
// middleware (inside nested fasttimeout.News, an inner one) answered with
// fasttimeout.StatusClientClosedRequest without running the handler, gets
// EventClientGone from end too, with AttrTimeout and AttrLateness 0. End
// learns why from fasttimeout.Context(ctx), done then with cause
// ErrClientGone, asked for only for a 499: not if a middleware around
// fasttimeout.New asked for that context before, as it then ends only at
// shutdown.
//
// On a starved process a racing handler may start only after the
// middleware has answered at its deadline or at its client's hang-up. End
// then records that answer itself (EventTimeout, or EventClientGone for a
// StatusClientClosedRequest answer, which is why Config.StatusCode should
// not be 499), with AttrTimeout and AttrLateness 0 as
// the handler's deadline is its RequestCtx's to read, and ends the span:
// the handler, when it starts, runs without recording.
//
// Deferred (defer end()), end also records a panic going through as
// [Middleware] does, and lets it go on with its value. Called from a
// deferred function of yours it cannot see the panic (recover sees it only
// when called by the deferred function itself): record it there as you see
// fit.
func Attach(ctx *fasthttp.RequestCtx, c context.Context) (end func()) {
	r := attach(ctx, c)
	return func() { r.finish(ctx, recover()) } // recover called by the deferred function itself
}

// attach makes the span of c the request's span, and returns the request.
func attach(ctx *fasthttp.RequestCtx, c context.Context) *request {
	r := &request{span: trace.SpanFromContext(c)}
	r.holds.Store(1)
	ctx.SetUserValue(contextKey{}, r)
	return r
}

// finish records the panic v going through the middleware's call, if v is
// not nil, does what Attach's end does and lets the panic go on. The panic
// of fasttimeout.ErrHandlerGoexit is a racing handler's runtime.Goexit,
// raised again on the server goroutine: it is recorded as a Goexit.
func (r *request) finish(ctx *fasthttp.RequestCtx, v any) {
	switch {
	case v == nil:
	case v == any(fasttimeout.ErrHandlerGoexit):
		r.recordGoexit()
	default:
		r.recordPanic(v)
	}
	r.end(ctx)
	if v != nil {
		panic(v) // on the panicking stack: the crash shows where it began
	}
}

// end is Attach's end, but for the panic.
func (r *request) end(ctx *fasthttp.RequestCtx) {
	// A request answered with a timeout response now belongs to its late
	// handler, which may still change its RequestCtx: only the response
	// the middleware sent is read.
	if resp := ctx.LastTimeoutErrorResponse(); resp != nil {
		r.endAnswered(resp.StatusCode())
		return
	}
	r.recordRejection(ctx)
	r.recordEndAfterReturn()
	r.recordLeftWaiting(ctx)
	r.release()
}

// recordEndAfterReturn records the timeout, or the client's hang-up, that
// the middleware answered after Handler's next returned in time, seen in
// the context Handler had (see request.inTime).
func (r *request) recordEndAfterReturn() {
	c := r.inTime
	if c == nil || !r.span.IsRecording() {
		return
	}
	if cause := context.Cause(c); errors.Is(cause, fasttimeout.ErrTimeout) || errors.Is(cause, fasttimeout.ErrClientGone) {
		r.record(endOf(c, time.Now()), r.timeout)
	}
}

// recordLeftWaiting records the hang-up of a client that left while its
// request waited for a slot, which the middleware answered with
// StatusClientClosedRequest without running the handler (so that Handler
// never saw it), as Handler records a hang-up while the handler runs.
// Nothing but fasttimeout.Context, done with cause ErrClientGone for such a
// request, says why; it is asked only for a 499 with nothing recorded yet,
// at no cost to other requests.
func (r *request) recordLeftWaiting(ctx *fasthttp.RequestCtx) {
	if r.failed.Load() || ctx.Response.StatusCode() != fasttimeout.StatusClientClosedRequest || !r.span.IsRecording() {
		return
	}
	if c := fasttimeout.Context(ctx); errors.Is(context.Cause(c), fasttimeout.ErrClientGone) {
		r.record(endOf(c, time.Now()), 0)
	}
}

// endAnswered lets go of the span of a request the middleware answered with
// status at its deadline or its client's hang-up. Whoever lets go last
// records the answer, unless Handler recorded why (see release).
func (r *request) endAnswered(status int) {
	r.answered.Store(int64(status))
	r.release()
}

// recordRejection records on the span what the middleware answered without
// running the handler (so that Handler never saw it): a refusal, with the
// span's status set to Error as for a timeout (the client got a 503), or a
// budget spent before the handler could start (fasttimeout.SpentBudget: on
// arrival, or waiting for a slot), as a timeout at once.
func (r *request) recordRejection(ctx *fasthttp.RequestCtx) {
	if !r.span.IsRecording() {
		return
	}
	if fasttimeout.SpentBudget(ctx) {
		r.record(timedOut(context.Background(), time.Now()), 0)
		return
	}
	reason := fasttimeout.RejectReason(ctx)
	if reason == "" {
		return
	}
	r.span.AddEvent(EventRejected, trace.WithAttributes(AttrRejectReason.String(reason)))
	r.span.SetStatus(codes.Error, "fasttimeout: request refused: "+reason)
}

// hold keeps the span open; it fails once the span has ended.
func (r *request) hold() bool {
	for {
		n := r.holds.Load()
		if n == 0 {
			return false
		}
		if r.holds.CompareAndSwap(n, n+1) {
			return true
		}
	}
}

// release lets go of the span, and ends it if it was the last hold. The
// answer at the deadline or the hang-up is recorded then, not by end as it
// lets go: Handler, having found next back in time just before the timer
// went off, may still hold the span, and then records nothing itself.
func (r *request) release() {
	if r.holds.Add(-1) != 0 {
		return
	}
	if status := r.answered.Load(); status != 0 && !r.handled.Load() && r.span.IsRecording() {
		cause := fasttimeout.ErrTimeout
		if status == fasttimeout.StatusClientClosedRequest {
			cause = fasttimeout.ErrClientGone
		}
		// A Handler whose next returned in time left its context and the
		// time it had, as cooperative mode records them (see
		// recordEndAfterReturn); one that never started, nothing.
		c, timeout := context.Background(), time.Duration(0)
		if r.inTime != nil {
			c, timeout = r.inTime, r.timeout
		}
		r.record(endBy(c, cause, time.Now()), timeout)
	}
	r.errorTypeOfEnd()
	r.span.End()
}

// errorTypeOfEnd sets error.type, which the conventions require of a span
// that ended with an error, to the event of the end recorded, if Middleware
// answered with a status under 500: one of 500 or more is error.type
// already (see setStatusCode), but a timeout answered with a 408 or a 200
// (Config.StatusCode), or a shutdown answered with a 200, has the status
// Error and would have no error.type. Called by the last release, after
// every record and Middleware's status code.
func (r *request) errorTypeOfEnd() {
	if r.endEvent != "" && r.status != 0 && r.status < fasthttp.StatusInternalServerError {
		r.span.SetAttributes(semconv.ErrorTypeKey.String(r.endEvent))
	}
}

// Middleware starts a server span for each request, with tracer, attaches
// it (see [Attach]) and ends it as Attach's end does. Use it outside
// fasttimeout.New, and [Handler] inside. It starts a new trace for each
// request: a service that propagates traces between services extracts the
// caller's context in its own middleware and calls Attach.
//
// The span follows OpenTelemetry's HTTP semantic conventions: it is named
// after the request's method, or "HTTP" for a method other than the ten the
// conventions know (RFC 9110's eight, PATCH and QUERY, in capitals), whose
// http.request.method is then _OTHER and http.request.method_original the
// method the client sent, as the conventions ask, so that clients cannot
// make up span names; it has url.path, url.query if any (the values of
// sensitive keys, such as sig and X-Amz-Signature, REDACTED as the
// conventions ask), url.scheme (as the server received the request),
// server.address and server.port (of the Host header, else of the local
// address), client.address (the connection's peer, not X-Forwarded-For,
// which anyone can send), user_agent.original if any, and
// http.response.status_code, that of the timeout response for a request
// answered at its deadline. A 5xx answer sets error.type to
// its status code ("504") and the status to Error, with fasttimeout's cause
// as description when the answer is fasttimeout's; under 500 (a timeout
// answered with a Config.StatusCode of 408, say), an end fasttimeout recorded
// sets error.type to its event's name. A panic that goes through
// it (one in time: fasttimeout passes a late one to Config.OnPanic) is
// recorded as an "exception" event with exception.type and
// exception.message, error.type the exception's type and the status Error,
// and goes on with its value, to a recover middleware outside or the crash;
// the span has no http.response.status_code then, none having been sent. A
// runtime.Goexit going through it (a cooperative handler's), or the panic
// of fasttimeout.ErrHandlerGoexit with which racing mode raises a handler's
// Goexit again on the server goroutine, sets error.type "runtime.Goexit"
// and the status Error, with no "exception" event; the panic goes on.
func Middleware(next fasthttp.RequestHandler, tracer trace.Tracer) fasthttp.RequestHandler {
	return func(ctx *fasthttp.RequestCtx) {
		name, attrs := methodAttributes(ctx.Method())
		scheme := "http"
		if ctx.IsTLS() {
			scheme = "https"
		}
		attrs = append(attrs, semconv.URLPath(string(ctx.Path())), semconv.URLScheme(scheme))
		attrs = appendRequestAttributes(attrs, ctx)
		c, _ := tracer.Start(context.Background(), name,
			trace.WithSpanKind(trace.SpanKindServer), trace.WithAttributes(attrs...))
		r := attach(ctx, c)
		returned := false
		defer func() {
			// recover must be called here, by the deferred function itself.
			// nil before next returned is runtime.Goexit going on
			// (fasttimeout.New turns a panic(nil) under GODEBUG=panicnil=1
			// into one or the other), which leaves the request unanswered
			// as a panic does.
			v := recover()
			if v == nil && !returned {
				r.recordGoexit()
			}
			r.finish(ctx, v)
		}()
		next(ctx)
		returned = true
		r.recordStatusCode(ctx)
	}
}

// recordPanic records the panic v that goes through the middleware, one
// in time (fasttimeout passes a late handler's to Config.OnPanic), as the
// conventions record an exception: an "exception" event with
// exception.type and exception.message, error.type the exception's type
// (no response was sent), and the status Error. Without a stack trace: in
// racing mode the stack is where fasttimeout raised the panic again on the
// server goroutine, not the handler's.
func (r *request) recordPanic(v any) {
	if !r.span.IsRecording() {
		return
	}
	typ, msg := typeName(v), fmt.Sprint(v)
	r.span.AddEvent(semconv.ExceptionEventName, trace.WithAttributes(
		semconv.ExceptionType(typ),
		semconv.ExceptionMessage(msg)))
	r.span.SetAttributes(semconv.ErrorTypeKey.String(typ))
	r.span.SetStatus(codes.Error, "panic: "+msg)
}

// recordGoexit records a runtime.Goexit that goes through the middleware
// (a handler's, in time): error.type "runtime.Goexit" and the status Error,
// without an "exception" event, as it is none.
func (r *request) recordGoexit() {
	if !r.span.IsRecording() {
		return
	}
	r.span.SetAttributes(semconv.ErrorTypeKey.String("runtime.Goexit"))
	r.span.SetStatus(codes.Error, "runtime.Goexit")
}

// typeName is the fully qualified name of v's type, as the conventions
// name an exception's type: "net/http.MaxBytesError", or "*errors.errorString"
// and "string" for a type without a name or of no package.
func typeName(v any) string {
	t := reflect.TypeOf(v)
	if t.Name() == "" || t.PkgPath() == "" {
		return t.String()
	}
	return t.PkgPath() + "." + t.Name()
}

// methodAttributes returns the span name and method attributes of a
// request with method: the method itself if the conventions know it, "HTTP"
// and _OTHER otherwise (the conventions' http.request.method).
func methodAttributes(method []byte) (name string, attrs []attribute.KeyValue) {
	attrs = make([]attribute.KeyValue, 0, 9) // room for the caller's url.* and the request's
	switch string(method) {
	case fasthttp.MethodGet, fasthttp.MethodHead, fasthttp.MethodPost, fasthttp.MethodPut,
		fasthttp.MethodPatch, fasthttp.MethodDelete, fasthttp.MethodConnect,
		fasthttp.MethodOptions, fasthttp.MethodTrace,
		"QUERY": // semconv.HTTPRequestMethodQuery: the conventions know it too
		name = string(method)
		return name, append(attrs, semconv.HTTPRequestMethodKey.String(name))
	}
	return "HTTP", append(attrs,
		semconv.HTTPRequestMethodOther,
		semconv.HTTPRequestMethodOriginal(string(method)))
}

// appendRequestAttributes appends to attrs the request's url.query,
// server.address and server.port (of the request target's host, as the Host
// header or an absolute-form target gives it, else of the local address),
// client.address and user_agent.original, each one it has.
func appendRequestAttributes(attrs []attribute.KeyValue, ctx *fasthttp.RequestCtx) []attribute.KeyValue {
	if query := ctx.URI().QueryString(); len(query) > 0 {
		attrs = append(attrs, semconv.URLQuery(redactedQuery(query)))
	}
	if host := string(ctx.Host()); host != "" {
		// A port follows the last colon, unless it is an IPv6 address's.
		if i := strings.LastIndexByte(host, ':'); i > strings.LastIndexByte(host, ']') {
			if port, err := strconv.Atoi(host[i+1:]); err == nil {
				attrs = append(attrs, semconv.ServerPort(port))
			}
			host = host[:i]
		}
		attrs = append(attrs, semconv.ServerAddress(strings.Trim(host, "[]")))
	} else if local, ok := ctx.LocalAddr().(*net.TCPAddr); ok {
		attrs = append(attrs, semconv.ServerAddress(local.IP.String()), semconv.ServerPort(local.Port))
	}
	if peer, ok := ctx.RemoteAddr().(*net.TCPAddr); ok {
		attrs = append(attrs, semconv.ClientAddress(peer.IP.String()))
	}
	if agent := ctx.UserAgent(); len(agent) > 0 {
		attrs = append(attrs, semconv.UserAgentOriginal(string(agent)))
	}
	return attrs
}

// redactedQuery returns the query string query as url.query records it:
// with the value of each key of sensitiveQueryKey replaced by "REDACTED", as
// the HTTP conventions ask, the key kept as sent. An empty value, or a key
// without one, has nothing to hide and is left as it is. A query without
// such a value, most of them, costs only its conversion to a string.
func redactedQuery(query []byte) string {
	var b strings.Builder // grown at the first value to redact
	copied := 0           // query[:copied] is in b
	for start := 0; start < len(query); {
		end := len(query)
		if i := bytes.IndexByte(query[start:], '&'); i >= 0 {
			end = start + i
		}
		// The value, if any, follows the first '=' of the pair.
		if eq := bytes.IndexByte(query[start:end], '='); eq >= 0 && start+eq+1 < end && sensitiveQueryKey(query[start:start+eq]) {
			if copied == 0 {
				b.Grow(len(query) + len(redacted))
			}
			b.Write(query[copied : start+eq+1])
			b.WriteString(redacted)
			copied = end
		}
		start = end + 1
	}
	if copied == 0 {
		return string(query)
	}
	b.Write(query[copied:])
	return b.String()
}

// redacted replaces a sensitive value in url.query.
const redacted = "REDACTED"

// sensitiveQueryKey reports whether the query key key, as sent, names a
// value url.query must not show: one the HTTP conventions list
// (X-Amz-Signature, X-Amz-Credential, X-Amz-Security-Token, sig,
// X-Goog-Signature), or AWSAccessKeyId and Signature, which they listed
// before and AWS's presigned URLs of signature version 2 still carry. The
// key is decoded as fasthttp decodes it for the handler ("%73ig" and
// "si%67" are sig to it, so to a leak too), and matched case-sensitively,
// as the conventions ask.
func sensitiveQueryKey(key []byte) bool {
	var name [len("X-Amz-Security-Token")]byte // the longest: a longer key is none of them
	n := 0
	for i := 0; i < len(key); i++ {
		if n == len(name) {
			return false
		}
		c := key[i]
		switch {
		case c == '+':
			c = ' '
		case c == '%' && i+2 < len(key) && isHex(key[i+1]) && isHex(key[i+2]):
			c = unhex(key[i+1])<<4 | unhex(key[i+2])
			i += 2
		}
		name[n] = c
		n++
	}
	switch string(name[:n]) {
	case "X-Amz-Signature", "X-Amz-Credential", "X-Amz-Security-Token", "sig", "X-Goog-Signature",
		"AWSAccessKeyId", "Signature":
		return true
	}
	return false
}

// isHex reports whether c is a hexadecimal digit.
func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

// unhex is the value of the hexadecimal digit c.
func unhex(c byte) byte {
	switch {
	case c <= '9':
		return c - '0'
	case c >= 'a':
		return c - 'a' + 10
	}
	return c - 'A' + 10
}

// recordStatusCode records the status the request was answered with, once
// the call of fasttimeout.New has returned, and sets the span's status to
// Error for a 5xx: unless fasttimeout set it with its cause, or will.
func (r *request) recordStatusCode(ctx *fasthttp.RequestCtx) {
	if !r.span.IsRecording() {
		return
	}
	// A request answered at its deadline or its client's hang-up belongs
	// to its late handler: only the response the middleware sent is read,
	// and whoever lets go of the span last records the cause.
	if resp := ctx.LastTimeoutErrorResponse(); resp != nil {
		r.setStatusCode(resp.StatusCode())
		return
	}
	status := ctx.Response.StatusCode()
	r.setStatusCode(status)
	// A refusal or a spent budget is recorded by end, after this, with its
	// description; a cause Handler saw (a cooperative timeout, a shutdown)
	// was recorded before next returned.
	if status >= fasthttp.StatusInternalServerError && !r.failed.Load() {
		r.span.SetStatus(codes.Error, "")
	}
}

// setStatusCode sets http.response.status_code to status and, for a 5xx,
// error.type to status as a string: the conventions require error.type of
// a request that ended with an error, which a 5xx answer is on the server
// side, and name the status code as its value then.
func (r *request) setStatusCode(status int) {
	r.status = status // read by the last release, after Middleware's
	if status < fasthttp.StatusInternalServerError {
		r.span.SetAttributes(semconv.HTTPResponseStatusCode(status))
		return
	}
	r.span.SetAttributes(semconv.HTTPResponseStatusCode(status), semconv.ErrorTypeKey.String(strconv.Itoa(status)))
}

// Context returns fasttimeout.Context(ctx) carrying the request's span, for
// the handler's own child spans; without an attached span of a trace (a
// tracer without an SDK starts spans of none) it returns
// fasttimeout.Context(ctx). Call it from the handler only. The span rides
// on a context.WithValue, which hides fasttimeout's AfterFunc: each context
// derived from it with a cancel (WithCancel, WithTimeout) takes a goroutine
// until it ends, where one derived from fasttimeout.Context(ctx) takes none.
func Context(ctx *fasthttp.RequestCtx) context.Context {
	c := fasttimeout.Context(ctx)
	// A span sampled out still carries its trace, for child spans to be
	// sampled out with it; a span of no trace carries nothing.
	if r, _ := ctx.UserValue(contextKey{}).(*request); r != nil && r.span.SpanContext().IsValid() {
		return trace.ContextWithSpan(c, r.span)
	}
	return c
}

// Handler returns next recording on the request's span (see [Attach]) the
// end of its context and a return after it. Use it inside fasttimeout.New:
// it runs on the handler's goroutine. A request without an attached,
// recording span runs next as it is, at no cost.
//
// When the request's context ends while next runs, an event named after the
// cause (EventTimeout, EventShutdown, EventClientGone or EventCancelled)
// is recorded with AttrCause, AttrTimeout and AttrLateness, and the span's
// status is set to Error with the cause as description (for a hang-up,
// error.type to EventClientGone's name too: its 499 is no error code for a
// server span). When next returns after that, EventLateReturn is recorded
// with the same attributes, its lateness measured at the return. A next
// that returns past its deadline before the context has ended (a timer or
// a cooperative tick not run yet) gets EventTimeout and EventLateReturn at
// its return, as the middleware answers it with the timeout response.
// Inside nested fasttimeout.News, each with its Handler, the request's end
// and the return after it are recorded once, by the first Handler whose
// context ended.
func Handler(next fasthttp.RequestHandler) fasthttp.RequestHandler {
	return func(ctx *fasthttp.RequestCtx) {
		r, _ := ctx.UserValue(contextKey{}).(*request)
		if r == nil || !r.span.IsRecording() || !r.hold() {
			next(ctx)
			return
		}
		r.handled.Store(true)
		defer r.release()
		c := fasttimeout.Context(ctx)
		timeout, _ := fasttimeout.Remaining(ctx) // the handler has just started
		var (
			ended endOfContext
			first bool // this Handler recorded the end, and records the return
		)
		recorded := make(chan struct{})
		stop := context.AfterFunc(c, func() {
			defer close(recorded)
			ended, first = r.record(endOf(c, time.Now()), timeout)
		})
		defer func() { // after next returns, or panics
			if stop() {
				// The function did not start: the context is still running,
				// or it ended and next returned before the function's
				// goroutine was scheduled.
				if c.Err() == nil {
					left, bounded := fasttimeout.Remaining(ctx)
					if !bounded || left > 0 {
						// Returned in time, recording nothing: if what
						// runs after it inside fasttimeout.New takes the
						// request past its deadline, Attach's end records
						// the timeout answer.
						r.inTime, r.timeout = c, timeout
						r.handled.Store(false)
						if hook := testHookInTime.Load(); hook != nil {
							(*hook)(ctx)
						}
						return
					}
					// Returned past the deadline, before the context
					// was cancelled: the middleware finds it late and
					// answers with the timeout response all the same.
					ended, first = r.record(timedOut(c, time.Now()), timeout)
				} else {
					ended, first = r.record(endOf(c, time.Now()), timeout)
				}
			} else {
				<-recorded
			}
			if first {
				r.span.AddEvent(EventLateReturn, trace.WithAttributes(ended.attributes(timeout, time.Now())...))
			}
		}()
		next(ctx)
	}
}

// testHookInTime, set only by tests, runs in Handler once next has
// returned in time, before Handler lets go of the span.
var testHookInTime atomic.Pointer[func(*fasthttp.RequestCtx)]

// record records on the span the end e of a request's context, for a
// handler that had timeout when it started, and returns e and true; or
// false, recording nothing, if the request's end is on the span already.
// A request ends once, but the Handlers inside nested fasttimeout.News each
// see that end in their own context (an outer deadline, a hang-up): the
// first to see it records it, and its return.
func (r *request) record(e endOfContext, timeout time.Duration) (endOfContext, bool) {
	if !r.failed.CompareAndSwap(false, true) {
		return e, false
	}
	r.endEvent = e.event // read by the last release, which waits for this record
	r.span.AddEvent(e.event, trace.WithAttributes(e.attributes(timeout, e.at)...))
	r.span.SetStatus(codes.Error, e.cause.Error())
	if e.event == EventClientGone {
		// The conventions want error.type of a request cancelled before
		// its answer, although a 499 is no error code for a server span.
		r.span.SetAttributes(semconv.ErrorTypeKey.String(EventClientGone))
	}
	return e, true
}

// timedOut is the end of a request that timed out, seen at t, whether or
// not its context c has ended yet: its lateness counts from c's deadline,
// if it has one.
func timedOut(c context.Context, t time.Time) endOfContext {
	e := endOfContext{event: EventTimeout, cause: fasttimeout.ErrTimeout, at: t, since: t}
	if deadline, ok := c.Deadline(); ok {
		e.since = deadline
	}
	return e
}

// endOfContext is how a request's context ended.
type endOfContext struct {
	event string
	cause error
	at    time.Time // when the end was recorded
	since time.Time // lateness is measured from this: the deadline for a timeout
}

// endOf names why c, done, ended; t is when that was seen.
func endOf(c context.Context, t time.Time) endOfContext {
	return endBy(c, context.Cause(c), t)
}

// endBy is the end of c with cause, seen at t; a timeout's lateness counts
// from c's deadline, if it has one.
func endBy(c context.Context, cause error, t time.Time) endOfContext {
	e := endOfContext{cause: cause, at: t, since: t}
	switch {
	case errors.Is(e.cause, fasttimeout.ErrTimeout):
		cause := e.cause
		e = timedOut(c, t)
		e.cause = cause
	case errors.Is(e.cause, fasttimeout.ErrShutdown):
		e.event = EventShutdown
	case errors.Is(e.cause, fasttimeout.ErrClientGone):
		e.event = EventClientGone
	default:
		e.event = EventCancelled
	}
	return e
}

// attributes returns the attributes of an event at t.
func (e endOfContext) attributes(timeout time.Duration, t time.Time) []attribute.KeyValue {
	return []attribute.KeyValue{
		AttrCause.String(e.cause.Error()),
		AttrTimeout.Float64(timeout.Seconds()),
		AttrLateness.Float64(max(t.Sub(e.since), 0).Seconds()),
	}
}
