package fasttimeout

import (
	"context"
	"strconv"
	"time"

	"github.com/valyala/fasthttp"
)

// Doer sends an HTTP request to an upstream: the client [Do] calls.
// *fasthttp.Client, *fasthttp.HostClient, *fasthttp.LBClient and
// *fasthttp.PipelineClient implement it; a wrapper of one (for metrics,
// say) must keep the contract of each method below, which Do relies on.
type Doer interface {
	// Do sends req and fills resp with the upstream's answer, bounded only
	// by the client's own timeouts, if any; [Do] calls it, with req as
	// given, for a request that has no deadline. It returns once the call
	// is over: req and resp are then the caller's again, but for a
	// response body the client streams (StreamResponseBody), which holds
	// the connection until the caller closes it. After an error, resp
	// holds no answer to forward.
	Do(req *fasthttp.Request, resp *fasthttp.Response) error
	// DoDeadline is Do bounded by deadline: if no answer has come by then,
	// it returns fasthttp.ErrTimeout, or the error the deadline caused (a
	// wait for a free connection or a dial cut short), at deadline or
	// soon after. [Do] calls it with the time the request has left and
	// takes any error returned at or after deadline for that time having
	// run out ([ErrTimeout]). So an implementation must not stretch
	// deadline (a retry that resets the timeout does: see Do) nor end a
	// call for it before it has passed; a timeout of its own that comes
	// earlier (a ReadTimeout shorter than the time left) is its error,
	// which Do returns unchanged.
	DoDeadline(req *fasthttp.Request, resp *fasthttp.Response, deadline time.Time) error
}

// minUpstreamBudget is the least time worth an upstream call: the budget
// headers count whole milliseconds, and less than one is no time at all.
const minUpstreamBudget = time.Millisecond

// Do sends req with c on behalf of the request ctx, giving the upstream no
// more time than ctx has left (see [Remaining]) and no more than req's own
// deadline headers already claim, and fills resp.
//
// If ctx has a deadline, the upstream's budget is the smaller of the time
// left and the smallest valid value of the grpc-timeout,
// X-Envoy-Expected-Rq-Timeout-Ms and Request-Timeout headers already on req
// (copied from the incoming request, typically): a copied caller's deadline
// is never stretched to the server's own. A carried header is taken as it
// is, not less the time the handler has taken: with
// Config.HonorDeadlineHeaders the request's deadline already counts that
// time, and bounds the upstream's budget. Do calls c.DoDeadline with that
// budget and tells the upstream of it:
//
//   - X-Envoy-Expected-Rq-Timeout-Ms, always: whole milliseconds, rounded
//     down, the header Envoy sets for the same purpose, which a server
//     wrapped by [New] with Config.HonorDeadlineHeaders takes into account;
//   - grpc-timeout, if req has one: rewritten to whole milliseconds ("250m");
//   - Request-Timeout, if req has one: rewritten to whole seconds, rounded
//     down (its only definition, draft-thomson-hybi-http-timeout-00, counts
//     whole seconds), and removed when less than a second is left, since 0
//     would claim the time is spent.
//
// Other headers of req are left as they are. On a req that keeps header
// names as received (DisableNormalizing), a deadline header is found, read
// and rewritten in its canonical form or in lower case only: a
// "GRPC-Timeout" goes upstream as it is, and bounds nothing.
//
// If less than a millisecond is left, Do returns an error matching
// [ErrTimeout] (errors.Is) without calling the upstream. An error of c that
// comes once the upstream's budget has run out (fasthttp.ErrTimeout at the
// deadline, a wait for a free connection or a dial cut short by it)
// matches ErrTimeout too, and still matches the original error. Other
// errors of c are returned unchanged, a timeout of c's own that ends the
// call before the budget does among them (a HostClient's ReadTimeout or
// WriteTimeout shorter than the time left): that is fasthttp.ErrTimeout,
// but not ErrTimeout, since the request's time has not run out (its
// context has not ended); the upstream was slow by c's measure only. A
// gateway can thus answer 504 for errors.Is(err, ErrTimeout), as the
// middleware does at the deadline, and choose for c's errors (nginx answers
// 504 for its own proxy_read_timeout, 502 for an upstream's other failures).
//
// A client whose RetryIfErr or RetryIfErrUpstream asks for the timeout to
// be reset restarts the whole budget on each retry (fasthttp's
// HostClient), so the call can outlast ctx's deadline; leave resetTimeout
// false for such clients.
//
// Inside New, Do does not call the upstream either once the client has
// hung up (as the hang-up watch sees it, which in cooperative mode watches
// a request from its handler's first call of Do or [Context] on: see
// Config.IgnoreHangups) or the server is shutting down, the events besides
// the deadline that end the request's context (see [Context]): after a
// hang-up Do returns an error matching [ErrClientGone] and
// [context.Canceled], during a shutdown one matching [ErrShutdown] and
// context.Canceled, as the context's Cause and Err do; neither matches
// ErrTimeout. A shutdown before the request's deadline is reported so even
// with less than a millisecond left, or a carried deadline already spent.
// A handler that calls several upstreams, or retries, thus stops calling
// them for nobody. (After a hang-up nobody reads the answer; during a
// shutdown, 503 fits.) A call already in progress is not ended: fasthttp's
// clients take no context.
//
// If ctx has no deadline (it is not bounded by New, or its deadline was
// switched off with [Disarm]), Do is c.Do(req, resp), and req is unchanged;
// after Disarm, a hang-up or shutdown still stops it as above.
//
// Do does not allocate unless it returns an error matching ErrTimeout, or
// it is the first call of Do or Context for a request watched by a New
// that runs its handler inline (in cooperative mode, or inside a New that
// ignores hang-ups): it then makes the request's context, as Context
// would, for the watch.
func Do(ctx *fasthttp.RequestCtx, c Doer, req *fasthttp.Request, resp *fasthttp.Response) error {
	left, bounded, err := upstreamBudget(ctx, &req.Header)
	if err != nil {
		return err
	}
	if !bounded {
		return c.Do(req, resp)
	}
	deadline := time.Now().Add(left)
	setBudgetHeaders(&req.Header, left)
	err = c.DoDeadline(req, resp, deadline)
	// By the clock, not by the error: fasthttp.ErrTimeout is also c's own
	// timeouts, which may end the call with time left. fasthttp's clients
	// derive their deadlines from this one, never earlier, so one that
	// fires has this one passed.
	if err != nil && !time.Now().Before(deadline) {
		return &upstreamTimeoutError{err: err}
	}
	return err
}

// upstreamBudget returns the time Do gives the upstream for the request
// ctx whose outgoing request has headers h, and bounded true; bounded
// false if the upstream is to be called without a deadline; or the error
// Do returns without calling it. It looks at the request's call while
// holding it (see hold), not during the upstream call.
func upstreamBudget(ctx *fasthttp.RequestCtx, h *fasthttp.RequestHeader) (left time.Duration, bounded bool, err error) {
	call, root, held := hold(ctx, false)
	if call == nil {
		return 0, false, nil
	}
	defer root.unhold(held)
	call.watchForUpstream()
	// Checked in the order in which the context would have ended: a
	// hang-up comes before the deadline or not at all (past it, the call
	// has timed out), and a shutdown after a passed deadline leaves the
	// context's cause the timeout, but one before it, however close, is the
	// context's end, as it is with a carried budget too short to call.
	if call.clientGone() {
		return 0, false, errClientLeft
	}
	left, ok := call.remaining()
	if (!ok || left > 0) && closed(serverDone(ctx)) {
		return 0, false, errShuttingDown
	}
	if !ok {
		return 0, false, nil
	}
	if carried, found, _ := incomingBudget(h); found {
		left = min(left, carried)
	}
	if left < minUpstreamBudget {
		return 0, false, errBudgetSpent
	}
	return left, true, nil
}

// setBudgetHeaders tells the upstream it has budget: in
// X-Envoy-Expected-Rq-Timeout-Ms, and in grpc-timeout and Request-Timeout
// if h has them. Every line of each, in either spelling, is replaced by one.
func setBudgetHeaders(h *fasthttp.RequestHeader, budget time.Duration) {
	ms := int64(budget / time.Millisecond)
	var buf [32]byte
	raw := keepsNames(h)
	hasGRPC := h.Peek(HeaderGRPCTimeout) != nil || raw && h.Peek("grpc-timeout") != nil
	hasSeconds := h.Peek(HeaderRequestTimeout) != nil || raw && h.Peek("request-timeout") != nil
	for i := range deadlineHeaders {
		h.Del(deadlineHeaders[i].name)
	}
	h.SetCanonical(envoyTimeoutKey, strconv.AppendInt(buf[:0], ms, 10))
	if hasGRPC {
		// The wire format allows 8 digits: beyond ~27 hours, count seconds.
		if ms < 1e8 {
			h.SetCanonical(grpcTimeoutKey, append(strconv.AppendInt(buf[:0], ms, 10), 'm'))
		} else {
			h.SetCanonical(grpcTimeoutKey, append(strconv.AppendInt(buf[:0], min(ms/1000, 99999999), 10), 'S'))
		}
	}
	if hasSeconds && ms >= 1000 {
		h.SetCanonical(requestTimeoutKey, strconv.AppendInt(buf[:0], ms/1000, 10))
	}
}

// Byte forms of the header names, for SetCanonical.
var (
	grpcTimeoutKey    = []byte(HeaderGRPCTimeout)
	envoyTimeoutKey   = []byte(HeaderEnvoyExpectedTimeout)
	requestTimeoutKey = []byte(HeaderRequestTimeout)
)

// errBudgetSpent is returned by Do when no time is left for the upstream.
var errBudgetSpent error = &upstreamTimeoutError{}

// Returned by Do, without calling the upstream, for a request whose context
// has ended otherwise than by its deadline.
var (
	errClientLeft   error = &upstreamCancelledError{cause: ErrClientGone}
	errShuttingDown error = &upstreamCancelledError{cause: ErrShutdown}
)

// upstreamCancelledError is an upstream call not made because the request's
// context was cancelled with cause. It matches context.Canceled and cause, as
// the context's Err and Cause do.
type upstreamCancelledError struct {
	cause error
}

// Error says that the upstream was not called, and why.
func (e *upstreamCancelledError) Error() string {
	return "fasttimeout: upstream not called: " + e.cause.Error()
}

// Unwrap returns context.Canceled and the cause.
func (e *upstreamCancelledError) Unwrap() []error {
	return []error{context.Canceled, e.cause}
}

// upstreamTimeoutError is an upstream call that ran out of the request's
// time. It matches ErrTimeout, and the client's own error if there is one.
type upstreamTimeoutError struct {
	err error // the client's error, or nil if the upstream was not called
}

// Error says that the upstream call ran out of time, and why.
func (e *upstreamTimeoutError) Error() string {
	if e.err == nil {
		return "fasttimeout: no time left for the upstream call: request timed out"
	}
	return "fasttimeout: upstream call out of time: " + e.err.Error()
}

// Unwrap returns ErrTimeout and the client's error, if any.
func (e *upstreamTimeoutError) Unwrap() []error {
	if e.err == nil {
		return []error{ErrTimeout}
	}
	return []error{ErrTimeout, e.err}
}
