// Command router shows fasttimeout per route with github.com/fasthttp/router:
// each route gets its own bound, and a route that streams is not bounded.
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"log"
	"time"

	"github.com/fasthttp/router"
	"github.com/valyala/fasthttp"

	"github.com/fasttimeout/fasttimeout"
)

func main() {
	log.Fatal(fasthttp.ListenAndServe("127.0.0.1:8082", newRouter(new(fasttimeout.Stats)).Handler))
}

// newRouter bounds each route on its own: a search gets 200 ms, a report
// 2 s, and the event stream none. The routes share one Stats, which /stats
// shows (in production, an expvar or a Prometheus collector). They honour
// the caller's deadline headers, which is for a server behind a proxy you
// run: a client could send a spent budget and get 504 at once.
func newRouter(stats *fasttimeout.Stats) *router.Router {
	bound := func(d time.Duration, h fasthttp.RequestHandler) fasthttp.RequestHandler {
		return fasttimeout.New(h, fasttimeout.Config{Timeout: d, HonorDeadlineHeaders: true, Stats: stats})
	}
	r := router.New()
	r.GET("/search", bound(200*time.Millisecond, search))
	r.GET("/reports/{id}", bound(2*time.Second, report))
	r.GET("/events", events) // a stream: not wrapped at all
	r.GET("/stats", func(ctx *fasthttp.RequestCtx) {
		ctx.SetContentType("application/json")
		_ = json.NewEncoder(ctx).Encode(stats.Snapshot())
	})
	return r
}

// search answers when its context's deadline allows it.
func search(ctx *fasthttp.RequestCtx) {
	select {
	case <-fasttimeout.Context(ctx).Done():
		// At the deadline the middleware has answered 504 and this answer
		// goes nowhere; when the server shuts down it is the client's: 503,
		// so that it may retry elsewhere, where an empty 200 would pass
		// for a success.
		ctx.Error("server shutting down", fasthttp.StatusServiceUnavailable)
	case <-time.After(searchTime(ctx)):
		ctx.SetBodyString("results")
	}
}

// searchTime is how long a search takes: ?slow makes it slower than its bound.
func searchTime(ctx *fasthttp.RequestCtx) time.Duration {
	if ctx.QueryArgs().Has("slow") {
		return time.Second
	}
	return time.Millisecond
}

func report(ctx *fasthttp.RequestCtx) {
	left, _ := fasttimeout.Remaining(ctx)
	fmt.Fprintf(ctx, "report %v, within 2s: %v", ctx.UserValue("id"), left <= 2*time.Second && left > 0)
}

func events(ctx *fasthttp.RequestCtx) {
	ctx.SetContentType("text/event-stream")
	ctx.SetBodyStreamWriter(func(w *bufio.Writer) {
		for i := range 3 {
			fmt.Fprintf(w, "data: %d\n\n", i)
			if w.Flush() != nil {
				return
			}
		}
	})
}
