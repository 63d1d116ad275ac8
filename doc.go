// Package fasttimeout bounds the time a fasthttp request handler may take.
//
// A load balancer gives up on a request after a few seconds, but the
// application behind it keeps working for nobody. [New] wraps a
// [fasthttp.RequestHandler] so that at the deadline the client gets a clear
// timeout response (504 with a small JSON body by default), the handler's
// [context.Context] (see [Context]) is cancelled with cause [ErrTimeout] so
// cooperative code stops, and the server stays healthy.
//
// Two modes are offered:
//
//   - [Racing] (the default) runs the handler on a pooled worker goroutine and
//     answers at the deadline even if the handler ignores its context. The
//     handler still running (a "late" handler) keeps its
//     [fasthttp.RequestCtx]; nothing it writes afterwards reaches any client.
//   - [Cooperative] runs the handler inline and only cancels its context; if
//     the handler returns after the deadline its response is replaced by the
//     timeout response. It costs almost nothing, but bounds only handlers that
//     honour their context.
//
// Whether a handler is late is decided by comparing times, not by which
// goroutine runs first; each racing request has its own deadline timer.
//
// When the client hangs up while its handler runs (Linux), the context is
// cancelled with cause [ErrClientGone] and the handler is late from then on;
// see [Config.IgnoreHangups].
//
// Under overload, bounding each request is not enough: every request gets a
// thin slice of the machine and most time out. [Config.AdaptiveConcurrency]
// admits only as many handlers as keep latency near its unloaded level, lets
// the others wait briefly (newest first once a queue persists) and refuses
// the rest at once with 503 and Retry-After. A request's age counts against
// its budget: from when the server read it, or with
// [Config.HonorQueueHeaders] from when the proxy in front saw it.
//
// The API at a glance:
//
//   - [New] and [Config]: the middleware and its settings; [Mode]; the
//     defaults, [DefaultTimeout] and its neighbours.
//   - [Context], [Remaining], [Disarm], [Extend]: what a handler may ask or
//     change about its own deadline.
//   - [Do] and [Doer]: an upstream call bounded by the request's deadline;
//     [HeaderGRPCTimeout], [HeaderEnvoyExpectedTimeout] and
//     [HeaderRequestTimeout]: the deadline headers it writes and, with
//     [Config.HonorDeadlineHeaders], New reads.
//   - [NetHTTPHandler]: a net/http handler under the middleware, with the
//     request's context.
//   - [TimeoutFromEnv] and [ParseTimeout]: a timeout from the environment.
//   - [RetryListener]: a listener for Serve that rides out EMFILE and other
//     accept errors of a connection flood instead of ending the server.
//   - [Stats], [Counters], [Histogram]: counters for expvar, Prometheus or
//     OpenTelemetry; [RejectReason]: why a request was refused
//     ([RejectedLateHandlers] and its neighbours); [SpentBudget]: whether it
//     was answered without running, out of time.
//   - [ErrTimeout], [ErrShutdown], [ErrClientGone]: the causes of a
//     cancelled request context; [ErrHandlerGoexit]: the panic value of a
//     racing handler's runtime.Goexit; [HangupDelay] and
//     [StatusClientClosedRequest]: when a client is watched, and the status
//     of a request whose client left.
package fasttimeout
