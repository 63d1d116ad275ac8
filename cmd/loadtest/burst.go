package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fasttimeout/fasttimeout"
	"github.com/valyala/fasthttp"
)

// The burst: many keep-alive connections opened at once, each sending its
// requests one after the other, with a mix of handlers behind a short
// timeout. It is where the deadline checker competes with the most
// goroutines, so it shows whether the timeout answer stays on time and
// whether a handler that returns or panics after its deadline is still
// treated as late.
const (
	scenarioBurst = "burst"
	// burstTimeout is the request timeout of the burst.
	burstTimeout = 40 * time.Millisecond
	// burstWork is how long the ignoring and honouring handlers would work.
	burstWork = 80 * time.Millisecond
	// burstPanicAfter is when the panicking handler panics: after its
	// deadline, so that the panic is a late one.
	burstPanicAfter = 70 * time.Millisecond
	// burstStreamChunks is how many chunks a body stream writes.
	burstStreamChunks = 4
)

// burstKinds are the handlers of the burst; request i of connection c runs
// burstKinds[(c+i)%len(burstKinds)], so every connection runs every kind.
var burstKinds = []string{"fast", "ignore", "honour", "panic", "stream"}

// Headers of the burst's responses.
const (
	// lateHeader holds how long after its deadline (µs, negative before
	// it) the handler returned, stamped by the handler as its last act: a
	// 200 with a positive value is the handler's own response, sent
	// although the handler returned after its deadline.
	lateHeader = "X-Handler-Late-Us"
	// escapedHeader marks the 500 written by the recovery outside the
	// middleware: a panic the middleware re-raised on the server goroutine,
	// which would have crashed a server without that recovery.
	escapedHeader = "X-Escaped-Panic"
)

// burstVariants returns the selected variants that take part in the burst.
func burstVariants(selected []string) []string {
	var out []string
	for _, v := range selected {
		switch v {
		case ftRace, ftCooperative, fasthttpTWCH:
			out = append(out, v)
		}
	}
	return out
}

// burstTrack counts, in the server, what the burst's handlers did.
type burstTrack struct {
	started, finished atomic.Int64
	lateReturns       atomic.Int64 // handlers that returned or panicked after their deadline
	escaped           atomic.Int64 // panics re-raised past the middleware
	stats             fasttimeout.Stats
}

func (t *burstTrack) counters() burstServerStats {
	c := t.stats.Snapshot()
	return burstServerStats{
		Started:      t.started.Load(),
		Finished:     t.finished.Load(),
		LateReturns:  t.lateReturns.Load(),
		Escaped:      t.escaped.Load(),
		MwTimeouts:   c.Timeouts,
		MwLateReturn: c.LateFinished,
		MwPanics:     c.Panics,
	}
}

// burstServerStats is the burst's part of serverStats.
type burstServerStats struct {
	Started      int64 `json:"started"`
	Finished     int64 `json:"finished"`
	LateReturns  int64 `json:"late_returns"`
	Escaped      int64 `json:"escaped_panics"`
	MwTimeouts   int64 `json:"middleware_timeouts"`
	MwLateReturn int64 `json:"middleware_late_finished"`
	MwPanics     int64 `json:"middleware_panics"`
}

var streamChunk = []byte("0123456789abcdef0123456789abcdef\n")

// burstHandler builds the burst's server. Under fasttimeout the deadline
// a handler stamps is the middleware's own (Remaining); under
// TimeoutWithCodeHandler, which has none to ask, it is the time the
// outermost handler saw the request plus the timeout. A fasthttp handler
// under TimeoutWithCodeHandler has no context to honour, so there the
// honouring kind ignores it, and a panic must be recovered inside the
// handler: TimeoutWithCodeHandler runs it on a goroutine of its own, where
// a panic ends the process.
func burstHandler(variant string, track *burstTrack) (fasthttp.RequestHandler, error) {
	twch := variant == fasthttpTWCH
	stampLate := func(ctx *fasthttp.RequestCtx) {
		var late time.Duration
		if twch {
			start, _ := ctx.UserValue(startUserValue).(time.Time)
			late = time.Since(start) - burstTimeout
		} else {
			left, _ := fasttimeout.Remaining(ctx)
			late = -left
		}
		if late > 0 {
			track.lateReturns.Add(1)
		}
		ctx.Response.Header.Set(lateHeader, strconv.FormatInt(late.Microseconds(), 10))
	}
	inner := func(ctx *fasthttp.RequestCtx) {
		track.started.Add(1)
		defer track.finished.Add(1)
		switch string(ctx.Path()) {
		case "/fast":
		case "/ignore":
			time.Sleep(burstWork)
		case "/honour":
			if twch {
				time.Sleep(burstWork)
				break
			}
			t := time.NewTimer(burstWork)
			select {
			case <-fasttimeout.Context(ctx).Done():
			case <-t.C:
			}
			t.Stop()
		case "/panic":
			time.Sleep(burstPanicAfter)
			stampLate(ctx)
			panic("loadtest: late panic")
		case "/stream":
			ctx.SetBodyStreamWriter(func(w *bufio.Writer) {
				for range burstStreamChunks {
					if _, err := w.Write(streamChunk); err != nil {
						return
					}
					if err := w.Flush(); err != nil {
						return
					}
				}
			})
			stampLate(ctx)
			return
		default:
			ctx.SetStatusCode(fasthttp.StatusNotFound)
			return
		}
		ctx.SetBody(okBody)
		stampLate(ctx)
	}
	// recoverOutside answers a panic that reached the server goroutine.
	recoverOutside := func(h fasthttp.RequestHandler) fasthttp.RequestHandler {
		return func(ctx *fasthttp.RequestCtx) {
			defer func() {
				if v := recover(); v != nil {
					track.escaped.Add(1)
					ctx.Response.Reset()
					ctx.SetStatusCode(fasthttp.StatusInternalServerError)
					ctx.Response.Header.Set(escapedHeader, "1")
				}
			}()
			h(ctx)
		}
	}
	cfg := fasttimeout.Config{
		Timeout: burstTimeout,
		Stats:   &track.stats,
		OnPanic: func(*fasthttp.RequestCtx, any, []byte) {}, // counted in Stats
	}
	switch variant {
	case ftRace:
		return recoverOutside(fasttimeout.New(inner, cfg)), nil
	case ftCooperative:
		cfg.Mode = fasttimeout.Cooperative
		return recoverOutside(fasttimeout.New(inner, cfg)), nil
	case fasthttpTWCH:
		recoverInside := func(ctx *fasthttp.RequestCtx) {
			// Always after the deadline: TimeoutWithCodeHandler has answered.
			defer func() { _ = recover() }()
			inner(ctx)
		}
		twchHandler := fasthttp.TimeoutWithCodeHandler(recoverInside, burstTimeout, timeoutMessage, fasthttp.StatusGatewayTimeout)
		return func(ctx *fasthttp.RequestCtx) {
			ctx.SetUserValue(startUserValue, time.Now())
			twchHandler(ctx)
		}, nil
	}
	return nil, fmt.Errorf("variant %q has no burst", variant)
}

// burstResult is what the burst's clients saw, in aggregate: its memory
// does not grow with the requests (a lateness kept for each came to some
// 160 MB at the most the flags allow, 10 000 connections × 1 000 requests).
type burstResult struct {
	elapsed   time.Duration
	responses int64
	ok        int64 // 200s
	ownLate   int64 // 200s whose handler stamped a return after its deadline
	timeouts  int64 // timeout responses
	// lateness is how late the timeout responses came after the deadline
	// (ns), and latenessMax the latest exactly: the histogram rounds up
	// within 0.1 %.
	lateness    histogram
	latenessMax int64
	escaped     int64 // 500s from the recovery outside the middleware
	other       int64
	errors      int64 // connections that failed
}

// burstClient is one connection of the burst. Its res has no lateness:
// that goes to the burst's shared histogram through late.
type burstClient struct {
	res  burstResult
	late latencyBatch
	err  error
}

// driveBurst dials conns connections at once, waits until all are open (or
// failed), then lets each send perConn requests one after the other. It
// returns when every connection is done; each request has 10 s.
func driveBurst(ctx context.Context, addr string, conns, perConn int) (burstResult, error) {
	clients := make([]*burstClient, conns)
	var lateness sharedHistogram
	var dialled, wg sync.WaitGroup
	start := make(chan struct{})
	dialled.Add(conns)
	for i := range clients {
		c := &burstClient{late: latencyBatch{into: &lateness}}
		clients[i] = c
		wg.Go(func() { c.run(ctx, addr, i, perConn, &dialled, start) })
	}
	dialled.Wait()
	t0 := time.Now()
	close(start)
	wg.Wait()
	res := burstResult{elapsed: time.Since(t0), lateness: lateness.h} // every client has returned, and flushed
	var firstErr error
	for _, c := range clients {
		res.responses += c.res.responses
		res.ok += c.res.ok
		res.ownLate += c.res.ownLate
		res.timeouts += c.res.timeouts
		res.latenessMax = max(res.latenessMax, c.res.latenessMax)
		res.escaped += c.res.escaped
		res.other += c.res.other
		if c.err != nil {
			res.errors++
			if firstErr == nil {
				firstErr = c.err
			}
		}
	}
	if err := ctx.Err(); err != nil {
		return res, err
	}
	if res.errors == int64(conns) {
		return res, fmt.Errorf("every connection failed, the first: %w", firstErr)
	}
	return res, nil
}

func (c *burstClient) run(ctx context.Context, addr string, id, perConn int, dialled *sync.WaitGroup, start <-chan struct{}) {
	defer c.late.flush()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	dialled.Done()
	if err != nil {
		c.err = err
		return
	}
	defer conn.Close()
	<-start
	br := bufio.NewReader(conn)
	var resp fasthttp.Response
	for i := range perConn {
		if ctx.Err() != nil {
			return
		}
		req := "GET /" + burstKinds[(id+i)%len(burstKinds)] + " HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: loadtest\r\n\r\n"
		if err := conn.SetDeadline(time.Now().Add(10 * time.Second)); err != nil {
			c.err = err
			return
		}
		sent := time.Now()
		if _, err := io.WriteString(conn, req); err != nil {
			c.err = err
			return
		}
		resp.Reset()
		if err := resp.Read(br); err != nil {
			if errors.Is(err, io.EOF) {
				err = fmt.Errorf("server closed the connection: %w", err)
			}
			c.err = err
			return
		}
		c.count(&resp, time.Since(sent))
	}
}

// count classifies one response that took elapsed, and records the
// lateness of a timeout response.
func (c *burstClient) count(resp *fasthttp.Response, elapsed time.Duration) {
	if late, timeout := c.res.count(resp, elapsed); timeout {
		c.late.add(late)
	}
}

// count classifies one response that took elapsed. For a timeout
// response it returns how late it came after the deadline (ns), and true;
// the caller records that lateness.
func (r *burstResult) count(resp *fasthttp.Response, elapsed time.Duration) (late int64, timeout bool) {
	r.responses++
	switch code := resp.StatusCode(); {
	case code == fasthttp.StatusGatewayTimeout:
		late = max(int64(elapsed-burstTimeout), 0)
		r.timeouts++
		r.latenessMax = max(r.latenessMax, late)
		return late, true
	case code == fasthttp.StatusOK:
		r.ok++
		if late, err := strconv.ParseInt(string(resp.Header.Peek(lateHeader)), 10, 64); err == nil && late > 0 {
			r.ownLate++
		}
	case code == fasthttp.StatusInternalServerError && len(resp.Header.Peek(escapedHeader)) > 0:
		r.escaped++
	default:
		r.other++
	}
	return 0, false
}

// measureBurst runs the burst against one variant, then waits for its
// handlers to return (at most burstWork and a margin) before reading the
// server's counters. A server that died is reported as crashed, with what
// the clients saw. shared runs the server in this process, where its
// goroutines compete for the Ps with the clients' (a crash there would end
// the load test too; the recovery outside the middleware prevents it).
func measureBurst(ctx context.Context, variant string, conns, perConn int, shared bool, stderr io.Writer) (burstRow, error) {
	row := burstRow{Variant: variant, Conns: conns, PerConn: perConn, Shared: shared}
	start := startChild
	if shared {
		start = startShared
	}
	srv, err := start(scenarioBurst, variant, stderr)
	if err != nil {
		return row, err
	}
	defer srv.stop()
	before, err := srv.stats(true)
	if err != nil {
		return row, err
	}
	res, loadErr := driveBurst(ctx, srv.addr, conns, perConn)
	settled, err := srv.stats(false)
	for end := time.Now().Add(burstWork + 2*time.Second); err == nil && time.Now().Before(end); {
		if settled.Burst.Finished >= settled.Burst.Started {
			break
		}
		time.Sleep(10 * time.Millisecond)
		settled, err = srv.stats(false)
	}
	if err != nil {
		row.Crashed = true
		row.fill(res, before, before)
		row.Error = "server died: " + err.Error()
		return row, errors.New(row.Error)
	}
	row.fill(res, before, settled)
	return row, loadErr
}
