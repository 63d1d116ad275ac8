package fasttimeout

import (
	"net/http"

	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/fasthttpadaptor"
)

// NetHTTPHandler converts a net/http handler to a fasthttp handler to be
// wrapped by [New], as fasthttpadaptor.NewFastHTTPHandler does, except that
// the handler's r.Context() is the request's standard context (see
// [Context]): it has the request's deadline, is cancelled at the deadline
// with cause [ErrTimeout], and follows [Disarm] and [Extend].
//
// fasthttpadaptor alone sets r.Context() to the *fasthttp.RequestCtx, whose
// Deadline is never set and whose Done only closes when the server shuts
// down, so a net/http handler never learns that its request timed out.
//
//	server.Handler = fasttimeout.New(fasttimeout.NetHTTPHandler(mux), cfg)
//
// The net/http handler runs on its own goroutine, as with fasthttpadaptor.
// Its first Flush turns the response into a stream: fasthttpadaptor then
// returns to the middleware, which ends r.Context() (with
// context.Canceled) while the handler goes on writing the stream, bounded
// only by the server's timeouts. So the deadline bounds the time to the
// first Flush, and a streaming handler must not rely on r.Context() after
// it.
//
// NetHTTPHandler panics if h is nil.
func NetHTTPHandler(h http.Handler) fasthttp.RequestHandler {
	if h == nil {
		panic("fasttimeout: NetHTTPHandler needs a handler, got nil")
	}
	return fasthttpadaptor.NewFastHTTPHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if ctx, ok := r.Context().(*fasthttp.RequestCtx); ok {
			r = r.WithContext(Context(ctx))
		}
		h.ServeHTTP(w, r)
	}))
}
