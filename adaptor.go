package fasttimeout

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"reflect"
	"time"

	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/fasthttpadaptor"
)

// NetHTTPHandler converts a net/http handler to a fasthttp handler to be
// wrapped by [New], as fasthttpadaptor.NewFastHTTPHandler does, except that
// r.Context() is the request's context (see [Context]): it has the
// request's deadline, is cancelled at the deadline with cause [ErrTimeout],
// and follows [Disarm] and [Extend]. With fasthttpadaptor alone,
// r.Context() is the *fasthttp.RequestCtx, which has no deadline and is
// done only at server shutdown: the handler never learns that its request
// timed out.
//
//	server.Handler = fasttimeout.New(fasttimeout.NetHTTPHandler(mux), cfg)
//
// As with fasthttpadaptor, the handler runs on its own goroutine, and its
// ResponseWriter holds the whole response in memory until the handler
// returns or flushes, then sends the status and headers it holds: unlike
// net/http's, it streams no large response without a Flush, and a
// WriteHeader after a Write, or most headers set after either, still count.
//
// The first Flush turns the response into a stream: fasthttpadaptor then
// returns to the middleware, which ends r.Context() (context.Canceled)
// while the handler goes on writing, bounded only by the server's
// timeouts. So the deadline bounds the time to the first Flush, and a
// streaming handler must not rely on r.Context() after it. The same goes
// for Hijack, which disarms the request (see [Disarm]) and fails with
// ErrTimeout once the deadline has passed: the connection then carries the
// timeout response and the next request. After a Flush, Hijack fails with
// http.ErrNotSupported: the connection carries the stream.
// SetWriteDeadline (http.ResponseController) fails with the cause of
// r.Context() once the request has timed out or its client is gone.
//
// NetHTTPHandler panics, as [New] does for a nil handler, if h is nil or
// cannot serve at all: a nil http.HandlerFunc, or a nil pointer whose
// ServeHTTP has a value receiver (or is promoted from a field). A nil
// pointer with a pointer method, or a nil function of a type of your own,
// is served: its method may work with a nil receiver.
func NetHTTPHandler(h http.Handler) fasthttp.RequestHandler {
	switch {
	case h == nil:
		panic("fasttimeout: NetHTTPHandler needs a handler, got nil")
	case cannotServe(h):
		// It would panic on every request, and fasthttpadaptor panics again
		// on the server goroutine, which ends the process at the first one.
		panic(fmt.Sprintf("fasttimeout: NetHTTPHandler needs a handler, got a nil %T", h))
	}
	return fasthttpadaptor.NewFastHTTPHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if ctx, ok := r.Context().(*fasthttp.RequestCtx); ok {
			reqCtx := Context(ctx)
			if lookup(ctx) != nil {
				w = &boundWriter{ResponseWriter: w, ctx: ctx, reqCtx: reqCtx}
			}
			r = r.WithContext(reqCtx)
			// fasthttpadaptor removes the temporary files of its request's
			// multipart form, not of this copy, which the handler parses.
			defer removeMultipartFiles(r)
		}
		h.ServeHTTP(w, r)
	}))
}

// cannotServe reports whether h, not nil, panics on every call before any
// of its code runs (see NetHTTPHandler): a nil http.HandlerFunc, whose
// ServeHTTP calls it, or a nil pointer whose method dereferences it for the
// value method of its element type.
func cannotServe(h http.Handler) bool {
	if f, ok := h.(http.HandlerFunc); ok {
		return f == nil
	}
	v := reflect.ValueOf(h)
	return v.Kind() == reflect.Pointer && v.IsNil() && v.Type().Elem().Implements(handlerType)
}

var handlerType = reflect.TypeFor[http.Handler]()

// removeMultipartFiles removes the temporary files of r's multipart form,
// once its handler has returned, as net/http does.
func removeMultipartFiles(r *http.Request) {
	if r.MultipartForm != nil {
		_ = r.MultipartForm.RemoveAll()
	}
}

// boundWriter is the ResponseWriter of a net/http handler bounded by New.
// It has fasthttpadaptor's Flush, Hijack and SetWriteDeadline, and its
// SetReadDeadline through Unwrap (http.ResponseController).
type boundWriter struct {
	http.ResponseWriter
	ctx    *fasthttp.RequestCtx
	reqCtx context.Context // the handler's r.Context()

	// The response has left the middleware, which then ends the request
	// and no longer lets its handler look into ctx: a Flush made it a
	// stream, or a Hijack took the connection.
	flushed, hijacked bool
}

// Flush sends what the handler wrote so far (fasthttpadaptor's Flush).
func (w *boundWriter) Flush() {
	w.flushed = true
	w.ResponseWriter.(http.Flusher).Flush()
}

// Hijack disarms the request, so that no New answers it once the
// connection is the handler's, and fails with ErrTimeout if the deadline
// has passed (or the client is gone): fasthttpadaptor hands over the
// connection at once, not when the server would run the hijack handler, so
// a late handler would write to a connection that has had the timeout
// response and carries the next request. After a Hijack it fails with
// http.ErrHijacked, and after a Flush with http.ErrNotSupported: the server
// is writing the stream on the connection.
func (w *boundWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	switch {
	case w.hijacked:
		return nil, nil, http.ErrHijacked
	case w.flushed:
		return nil, nil, http.ErrNotSupported
	case !Disarm(w.ctx):
		return nil, nil, ErrTimeout
	}
	conn, rw, err := w.ResponseWriter.(http.Hijacker).Hijack()
	w.hijacked = err == nil
	return conn, rw, err
}

// SetWriteDeadline fails with the cause of r.Context() once the deadline has
// passed (ErrTimeout) or the client is gone (ErrClientGone): the connection
// is then the timeout response's, and in racing mode fasthttp refuses a
// late handler's deadline only once the middleware has handed it that
// response, after OnTimeout. A deadline set just before the request timed
// out still holds for the timeout response, as it would for the handler's.
func (w *boundWriter) SetWriteDeadline(deadline time.Time) error {
	if cause := context.Cause(w.reqCtx); errors.Is(cause, ErrTimeout) || errors.Is(cause, ErrClientGone) {
		return cause
	}
	return http.NewResponseController(w.ResponseWriter).SetWriteDeadline(deadline)
}

// Unwrap returns fasthttpadaptor's writer, for http.ResponseController.
func (w *boundWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }
