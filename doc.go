// Package fasttimeout bounds the time a fasthttp request handler may take.
//
// A load balancer gives up on a request after a few seconds, but the
// application behind it keeps working on a request nobody waits for any more.
// [New] wraps a [fasthttp.RequestHandler] so that at the deadline the client
// gets a clear timeout response (504 with a small JSON body by default), the
// handler's [context.Context] (see [Context]) is cancelled with
// [ErrTimeout] as its cause so cooperative code stops, and the server stays
// healthy.
//
// Two modes are offered:
//
//   - [Racing] (the default) runs the handler on a pooled worker goroutine and
//     answers at the deadline even if the handler ignores its context. The
//     handler that is still running (a "late" handler) keeps its
//     [fasthttp.RequestCtx]; nothing it writes afterwards reaches any client.
//   - [Cooperative] runs the handler inline and only cancels its context; if
//     the handler returns after the deadline its response is replaced by the
//     timeout response. It costs almost nothing, but bounds only handlers that
//     honour their context.
//
// Deadlines are checked by one clock goroutine per middleware that ticks
// every [Config.Precision] (1 ms by default) while requests are in flight, so
// no timer is created per request; a timeout is answered between the deadline
// and one tick after it.
package fasttimeout
