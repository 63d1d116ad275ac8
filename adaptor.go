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

// NetHTTPHandler converts a net/http handler to a fasthttp handler for
// [New], as fasthttpadaptor.NewFastHTTPHandler does, except that r.Context()
// is the request's context (see [Context]): it has the request's deadline,
// is cancelled at it with cause [ErrTimeout], and follows [Disarm] and
// [Extend]. With fasthttpadaptor alone, r.Context() is the
// *fasthttp.RequestCtx, done only at server shutdown.
//
//	server.Handler = fasttimeout.New(fasttimeout.NetHTTPHandler(mux), cfg)
//
// As with fasthttpadaptor, the handler runs on its own goroutine, and its
// ResponseWriter buffers the whole response until the handler returns or
// flushes: no large response streams without a Flush, and a WriteHeader
// after a Write, or most headers set after either, still count.
//
// The first Flush makes the response a stream: the middleware then ends
// r.Context() (context.Canceled) while the handler writes on, bounded only
// by the server's timeouts. So the deadline bounds the time to the first
// Flush. Hijack disarms the request (see [Disarm]) and fails with
// ErrTimeout once the deadline has passed, or with http.ErrNotSupported
// after a Flush. SetWriteDeadline (http.ResponseController) fails with the
// cause of r.Context() once the request has timed out or its client is gone.
//
// NetHTTPHandler panics if h is nil or cannot serve at all: a nil
// http.HandlerFunc, or a nil pointer whose ServeHTTP has a value receiver
// (or is promoted from a field). Other nil receivers may work, and are served.
func NetHTTPHandler(h http.Handler) fasthttp.RequestHandler {
	switch {
	case h == nil:
		panic("fasttimeout: NetHTTPHandler needs a handler, got nil")
	case cannotServe(h):
		// It would panic on every request, on the server goroutine too,
		// ending the process at the first.
		panic(fmt.Sprintf("fasttimeout: NetHTTPHandler needs a handler, got a nil %T", h))
	}
	return fasthttpadaptor.NewFastHTTPHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if ctx, ok := r.Context().(*fasthttp.RequestCtx); ok {
			reqCtx := Context(ctx)
			if lookup(ctx) != nil {
				w = &boundWriter{ResponseWriter: w, ctx: ctx, reqCtx: reqCtx}
			}
			r = r.WithContext(reqCtx)
			// fasthttpadaptor cleans up its request's form, not this copy's.
			defer removeMultipartFiles(r)
		}
		h.ServeHTTP(w, r)
	}))
}

// cannotServe reports whether h, not nil, panics on every call before any of
// its code runs: a nil http.HandlerFunc, or a nil pointer whose ServeHTTP is
// its element type's value method.
func cannotServe(h http.Handler) bool {
	if f, ok := h.(http.HandlerFunc); ok {
		return f == nil
	}
	v := reflect.ValueOf(h)
	return v.Kind() == reflect.Pointer && v.IsNil() && v.Type().Elem().Implements(reflect.TypeFor[http.Handler]())
}

// removeMultipartFiles removes the temporary files of r's multipart form, as
// net/http does after the handler.
func removeMultipartFiles(r *http.Request) {
	if r.MultipartForm != nil {
		_ = r.MultipartForm.RemoveAll()
	}
}

// boundWriter is the ResponseWriter of a net/http handler bounded by New,
// over fasthttpadaptor's (SetReadDeadline through Unwrap).
type boundWriter struct {
	http.ResponseWriter
	ctx    *fasthttp.RequestCtx
	reqCtx context.Context // the handler's r.Context()

	// The response has left the middleware, which no longer lets the
	// handler look into ctx: a stream, or a hijacked connection.
	flushed, hijacked bool
}

// Flush sends what the handler wrote so far (fasthttpadaptor's Flush).
func (w *boundWriter) Flush() {
	w.flushed = true
	w.ResponseWriter.(http.Flusher).Flush()
}

// Hijack disarms the request, so that no New answers on the handler's
// connection, and fails with ErrTimeout if the deadline has passed or the
// client is gone: fasthttpadaptor hands the connection over at once, and a
// late handler would write to one that has had the timeout response and
// carries the next request. It fails with http.ErrHijacked after a Hijack,
// and http.ErrNotSupported after a Flush (the connection carries the stream).
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

// SetWriteDeadline fails with the cause of r.Context() once the request has
// timed out or its client is gone: the connection is then the timeout
// response's, and in racing mode fasthttp refuses a late handler's deadline
// only after OnTimeout. One set just before still holds for the timeout
// response.
func (w *boundWriter) SetWriteDeadline(deadline time.Time) error {
	if cause := context.Cause(w.reqCtx); errors.Is(cause, ErrTimeout) || errors.Is(cause, ErrClientGone) {
		return cause
	}
	return http.NewResponseController(w.ResponseWriter).SetWriteDeadline(deadline)
}

// Unwrap returns fasthttpadaptor's writer, for http.ResponseController.
func (w *boundWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }
