package main

import (
	"context"
	"encoding/json"
	"errors"
	"expvar"
	"fmt"
	"log"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/fasthttpadaptor"

	"github.com/fasttimeout/fasttimeout"
	fasttimeoutprom "github.com/fasttimeout/fasttimeout/prometheus"
)

// maxSleep bounds the n of /sleep/{n} and /async_sleep/{n}.
const maxSleep = time.Hour

// newHandler returns the demo's routes. Everything but /debug/vars and
// /metrics is bounded by fasttimeout as opts say, counted in stats;
// logger gets at most one line a second about the handlers that returned
// after their deadline (see lateLog), and about the clients that hung up
// (see goneLog).
// /debug/vars serves the process's expvar variables (publishing stats there
// is the caller's job); /metrics serves stats and the Go runtime's metrics
// in Prometheus' text format, from a registry of its own.
//
// flushLogs writes at once what those two logs hold for the period under
// way, which they would write at its end: at shutdown, the process ends
// first.
func newHandler(stats *fasttimeout.Stats, opts options, logger *log.Logger) (h fasthttp.RequestHandler, flushLogs func()) {
	hashesPerChunk() // measured now rather than in the first /work request
	late, gone := newLateLog(logger), newGoneLog(logger)
	bounded := fasttimeout.New(route, fasttimeout.Config{
		Timeout:             opts.timeout,
		Mode:                opts.mode,
		AdaptiveConcurrency: opts.adaptive,
		MaxConcurrency:      opts.maxConcurrency,
		Stats:               stats,
		OnLateReturn:        late.record,
		OnHangup:            gone.record,
	})
	debugVars := fasthttpadaptor.NewFastHTTPHandler(expvar.Handler())
	registry := prometheus.NewRegistry()
	registry.MustRegister(fasttimeoutprom.NewCollector(stats, nil), collectors.NewGoCollector())
	metrics := fasthttpadaptor.NewFastHTTPHandler(promhttp.HandlerFor(registry, promhttp.HandlerOpts{}))
	h = func(ctx *fasthttp.RequestCtx) {
		switch string(ctx.Path()) {
		case "/debug/vars":
			debugVars(ctx)
		case "/metrics":
			metrics(ctx)
		default:
			bounded(ctx)
		}
	}
	return h, func() { late.flush(); gone.flush() }
}

// route dispatches a request bounded by the timeout.
func route(ctx *fasthttp.RequestCtx) {
	if !ctx.IsGet() && !ctx.IsHead() {
		ctx.Response.Header.Set(fasthttp.HeaderAllow, "GET, HEAD")
		writeJSON(ctx, fasthttp.StatusMethodNotAllowed, detail("method not allowed"))
		return
	}
	path := string(ctx.Path())
	switch {
	case path == "/":
		writeJSON(ctx, fasthttp.StatusOK, map[string]string{"message": "Hello, World!"})
	case strings.HasPrefix(path, "/sleep/"):
		serveSleep(ctx, strings.TrimPrefix(path, "/sleep/"))
	case strings.HasPrefix(path, "/async_sleep/"):
		serveAsyncSleep(ctx, strings.TrimPrefix(path, "/async_sleep/"))
	case strings.HasPrefix(path, "/work/"):
		serveWork(ctx, strings.TrimPrefix(path, "/work/"))
	default:
		writeJSON(ctx, fasthttp.StatusNotFound, detail("not found"))
	}
}

// serveSleep is blocking work: it sleeps n seconds whatever happens to the
// request. Only racing mode bounds it.
func serveSleep(ctx *fasthttp.RequestCtx, n string) {
	d, ok := parseSeconds(ctx, n)
	if !ok {
		return
	}
	time.Sleep(d)
	writeJSON(ctx, fasthttp.StatusOK, slept{Seconds: d.Seconds()})
}

// serveAsyncSleep is cooperative work: it waits n seconds or until the
// request's context is done (see answerCancelled).
func serveAsyncSleep(ctx *fasthttp.RequestCtx, n string) {
	d, ok := parseSeconds(ctx, n)
	if !ok {
		return
	}
	timer := time.NewTimer(d)
	defer timer.Stop()
	reqCtx := fasttimeout.Context(ctx)
	select {
	case <-timer.C:
		writeJSON(ctx, fasthttp.StatusOK, slept{Seconds: d.Seconds()})
	case <-reqCtx.Done():
		answerCancelled(ctx, reqCtx)
	}
}

// answerCancelled answers a request whose context, reqCtx, ended before
// its work did. At the deadline, or when the client has hung up, the
// answer no longer matters: the client gets the middleware's response
// whatever is written. When the server shuts down it answers 503 and
// closes the connection.
func answerCancelled(ctx *fasthttp.RequestCtx, reqCtx context.Context) {
	if errors.Is(context.Cause(reqCtx), fasttimeout.ErrShutdown) {
		ctx.SetConnectionClose()
		writeJSON(ctx, fasthttp.StatusServiceUnavailable, detail("server shutting down"))
	}
}

type slept struct {
	Seconds float64 `json:"slept_seconds"`
}

// parseSeconds parses n, a number of seconds between 0 and maxSleep
// ("2", "0.5"). On bad input it answers 400 and returns false.
func parseSeconds(ctx *fasthttp.RequestCtx, n string) (time.Duration, bool) {
	return parseAmount(ctx, "n", n, time.Second, "seconds", maxSleep)
}

// parseAmount parses v, the path parameter name: a decimal number of units
// (named unitName) between 0 and limit. On bad input it answers 400 and
// returns false.
func parseAmount(ctx *fasthttp.RequestCtx, name, v string, unit time.Duration, unitName string, limit time.Duration) (time.Duration, bool) {
	n, err := strconv.ParseFloat(v, 64)
	most := float64(limit) / float64(unit)
	// strconv.ParseFloat also reads Go's literal forms, "1_0" for 10 and
	// hex ("0x1p-2"), as fasttimeout.ParseTimeout and the flags do not.
	if err != nil || strings.ContainsAny(v, "_xX") || math.IsNaN(n) || n < 0 || n > most {
		writeJSON(ctx, fasthttp.StatusBadRequest, detail(fmt.Sprintf(
			"%s must be a number of %s from 0 to %v, got %q", name, unitName, most, v)))
		return 0, false
	}
	return time.Duration(n * float64(unit)), true
}

func detail(msg string) map[string]string { return map[string]string{"detail": msg} }

// writeJSON answers with status and v encoded as JSON.
func writeJSON(ctx *fasthttp.RequestCtx, status int, v any) {
	body, err := json.Marshal(v)
	if err != nil { // cannot happen for the demo's values
		status, body = fasthttp.StatusInternalServerError, []byte(`{"detail":"internal error"}`)
	}
	ctx.SetStatusCode(status)
	ctx.SetContentType("application/json")
	ctx.SetBody(body)
}
