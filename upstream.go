package fasttimeout

import (
	"context"
	"strconv"
	"time"

	"github.com/valyala/fasthttp"
)

// Doer sends an HTTP request to an upstream: the client [Do] calls.
// *fasthttp.Client, *fasthttp.HostClient, *fasthttp.LBClient and
// *fasthttp.PipelineClient implement it; a wrapper of one (for metrics, say)
// must keep the contract of each method, which Do relies on.
type Doer interface {
	// Do sends req and fills resp with the upstream's answer, bounded only by
	// the client's own timeouts; [Do] calls it for a request with no
	// deadline. Once it returns, req and resp are the caller's again (but a
	// streamed response body holds the connection until closed). After an
	// error, resp holds no answer to forward.
	Do(req *fasthttp.Request, resp *fasthttp.Response) error
	// DoDeadline is Do bounded by deadline: with no answer by then, it
	// returns fasthttp.ErrTimeout, or the error the deadline caused (a wait
	// for a free connection or a dial cut short), at deadline or soon after.
	// [Do] takes any error at or after deadline for the request's time
	// running out ([ErrTimeout]), so an implementation must neither stretch
	// deadline (a retry that resets the timeout does: see Do) nor end a call
	// for it early. An earlier timeout of its own (a ReadTimeout shorter than
	// the time left) is its error, which Do returns unchanged.
	DoDeadline(req *fasthttp.Request, resp *fasthttp.Response, deadline time.Time) error
}

// minUpstreamBudget is the least time worth an upstream call: the budget
// headers count whole milliseconds.
const minUpstreamBudget = time.Millisecond

// Do sends req with c on behalf of the request ctx, giving the upstream no
// more time than ctx has left (see [Remaining]) and no more than req's own
// deadline headers claim, and fills resp.
//
// If ctx has a deadline, the upstream's budget is the smaller of the time
// left and the smallest valid grpc-timeout, X-Envoy-Expected-Rq-Timeout-Ms
// or Request-Timeout already on req (copied from the incoming request,
// typically), taken as it is: a caller's deadline is never stretched to the
// server's, and with Config.HonorDeadlineHeaders the time left already
// counts the handler's time. Do calls c.DoDeadline with that budget and
// tells the upstream of it:
//
//   - X-Envoy-Expected-Rq-Timeout-Ms, always: whole milliseconds, rounded
//     down, which a server wrapped by [New] with
//     Config.HonorDeadlineHeaders takes into account;
//   - grpc-timeout, if req has one: rewritten, rounded down, to whole
//     milliseconds ("250m"), or to whole seconds once the milliseconds
//     would take more than the 8 digits the format allows (about 28 hours);
//   - Request-Timeout, if req has one: rewritten to whole seconds, rounded
//     down (as its draft, draft-thomson-hybi-http-timeout-00, counts), and
//     removed under a second, since 0 would claim the time is spent.
//
// Other headers are left alone. On a req that keeps header names as
// received (DisableNormalizing), deadline headers are handled only in
// canonical form or lower case: a "GRPC-Timeout" goes upstream as it is.
//
// With less than a millisecond left, Do returns an error matching
// [ErrTimeout] (errors.Is) without calling the upstream. An error of c once
// the budget has run out (fasthttp.ErrTimeout, a wait for a connection or a
// dial cut short) matches ErrTimeout as well as itself. Other errors of c,
// its own earlier timeouts included (a ReadTimeout shorter than the time
// left), are returned unchanged: the request's time has not run out. A
// gateway can thus answer 504 for ErrTimeout and choose for c's errors
// (nginx answers 504 for its proxy_read_timeout, 502 for other failures).
//
// A client whose RetryIfErr or RetryIfErrUpstream resets the timeout
// restarts the whole budget on each retry, outlasting ctx's deadline; leave
// resetTimeout false for such clients.
//
// Inside New, Do does not call the upstream either once the client has hung
// up (as the watch sees it: see Config.IgnoreHangups) or the server is
// shutting down, so that a handler that calls several upstreams, or
// retries, stops working for nobody: it returns an error matching
// [ErrClientGone] or [ErrShutdown], and [context.Canceled], as the
// context's Cause and Err do, not ErrTimeout; a shutdown before the
// deadline wins over a budget too short to call. A call in progress is not
// ended: fasthttp's clients take no context.
//
// If ctx has no deadline (not bounded by New, or after [Disarm]), Do is
// c.Do(req, resp) and req is unchanged; after Disarm, a hang-up or shutdown
// still stops it as above, but outside New (Config.Skip's requests too)
// nothing does.
//
// Do allocates only for an error matching ErrTimeout, or on the first Do or
// Context of a request watched by a New that runs its handler inline
// (cooperative, or inside a New that ignores hang-ups), which makes the
// request's context for the watch.
func Do(ctx *fasthttp.RequestCtx, c Doer, req *fasthttp.Request, resp *fasthttp.Response) error {
	at, left, bounded, err := upstreamBudget(ctx, &req.Header)
	if err != nil {
		return err
	}
	if !bounded {
		return c.Do(req, resp)
	}
	// The request's deadline itself (or the carried one), not the time left
	// added to the clock again, which would give the upstream what passed
	// in between on top.
	deadline := epoch.Add(time.Duration(at))
	setBudgetHeaders(&req.Header, left)
	err = c.DoDeadline(req, resp, deadline)
	// By the clock, not the error: fasthttp.ErrTimeout is also c's own
	// timeouts, which may come with time left. fasthttp's clients never
	// derive an earlier deadline from this one.
	if err != nil && !time.Now().Before(deadline) {
		return upstreamTimedOut(err)
	}
	return err
}

// upstreamBudget returns the upstream's deadline for the request ctx whose
// outgoing headers are h, at (as now counts), and the time left until it;
// bounded false for no deadline; or the error Do returns without calling.
// It holds the call (see hold) only meanwhile.
func upstreamBudget(ctx *fasthttp.RequestCtx, h *fasthttp.RequestHeader) (at int64, left time.Duration, bounded bool, err error) {
	call, root, held := hold(ctx, false)
	if call == nil {
		return 0, 0, false, nil
	}
	defer root.unhold(held)
	call.watchForUpstream()
	// In the order the context would have ended: a hang-up comes before
	// the deadline or not at all; a shutdown counts only before the
	// deadline (then even with a budget too short to call), else the
	// cause stays the timeout.
	if call.clientGone() {
		return 0, 0, false, errClientLeft
	}
	at, t := call.deadline.Load(), now()
	if (at == noDeadline || at > t) && closed(serverDone(ctx)) {
		return 0, 0, false, errShuttingDown
	}
	if at == noDeadline {
		return 0, 0, false, nil
	}
	if carried, found, _ := incomingBudget(h); found {
		at = min(at, t+int64(carried))
	}
	if left = time.Duration(at - t); left < minUpstreamBudget {
		return 0, 0, false, errBudgetSpent
	}
	return at, left, true, nil
}

// setBudgetHeaders writes budget into h's deadline headers (see Do),
// replacing every line of each, in either spelling, by one.
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
		// 8 digits at most: beyond ~27 hours, count seconds.
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

// Do's errors other than the upstream running out of time
// (upstreamTimedOut): no time left to call it, or a context ended otherwise
// than by its deadline, which matches context.Canceled and the cause.
var (
	errBudgetSpent  error = &upstreamError{"fasttimeout: no time left for the upstream call: request timed out", [2]error{ErrTimeout}}
	errClientLeft   error = &upstreamError{"fasttimeout: upstream not called: ", [2]error{context.Canceled, ErrClientGone}}
	errShuttingDown error = &upstreamError{"fasttimeout: upstream not called: ", [2]error{context.Canceled, ErrShutdown}}
)

// upstreamTimedOut returns the error of an upstream call out of the
// request's time, err being the client's: it matches ErrTimeout and err.
func upstreamTimedOut(err error) error {
	return &upstreamError{"fasttimeout: upstream call out of time: ", [2]error{ErrTimeout, err}}
}

// upstreamError is an error of Do: it keeps what Unwrap returns, as errors.Is
// asks for it at every look, and a gateway may look several times per
// failed call.
type upstreamError struct {
	what string   // the message, before the second error's if any
	errs [2]error // ErrTimeout or context.Canceled, then the client's error or the cause, or nil
}

// Error says what happened, and why.
func (e *upstreamError) Error() string {
	if e.errs[1] == nil {
		return e.what
	}
	return e.what + e.errs[1].Error()
}

// Unwrap returns the errors e matches.
func (e *upstreamError) Unwrap() []error {
	if e.errs[1] == nil {
		return e.errs[:1]
	}
	return e.errs[:]
}
