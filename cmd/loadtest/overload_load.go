package main

// The open-loop load generator of the overload scenario: requests arrive on
// a schedule whatever happens to the earlier ones, as a load balancer's
// traffic does, and each client gives up at its deadline.

import (
	"bufio"
	"context"
	"errors"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"
)

// arrivalSchedule yields the times of arrivals, as offsets from the start
// of a run: evenly spaced, or a Poisson process (exponential gaps from a
// seeded generator, so that every run has the same arrivals).
type arrivalSchedule struct {
	rate    float64 // arrivals per second
	poisson *rand.Rand
	n       int
	t       float64 // seconds, the last arrival
}

func newArrivalSchedule(rate float64, poisson bool, seed uint64) *arrivalSchedule {
	s := &arrivalSchedule{rate: rate}
	if poisson {
		s.poisson = rand.New(rand.NewPCG(seed, 0x9e3779b97f4a7c15))
	}
	return s
}

// next returns the offset of the next arrival.
func (s *arrivalSchedule) next() time.Duration {
	if s.poisson != nil {
		s.t += s.poisson.ExpFloat64() / s.rate
	} else {
		s.t = float64(s.n) / s.rate
	}
	s.n++
	return time.Duration(s.t * float64(time.Second))
}

// outcome is what became of one request, as its client saw it.
type outcome uint8

const (
	outGood      outcome = iota // 200 within the deadline
	outLate                     // 200 after the deadline (read just too late)
	outRejected                 // 503: refused by a concurrency limit
	outTimeout                  // 504: the timeout answer
	outOther                    // any other status
	outGiveUp                   // no answer by the deadline: the client closed its connection
	outConnect                  // the connection could not be opened by the deadline
	outConnError                // the connection failed while the request was out
	outDropped                  // not sent: every connection of the generator was busy
	outUnsent                   // not sent: picked up by a worker only after its deadline
	outMismatch                 // the answer carried another request's id: answered twice, or crossed
	outCut                      // still out when the run ended
	outcomes
)

// result is one request's outcome and, for an answer, its latency from its
// scheduled arrival.
type result struct {
	id      uint32
	outcome outcome
	latency time.Duration
	// lag is how late a worker picked the request up, after its
	// scheduled arrival: the generator's lateness handing it over and the
	// worker's own. 0 if dropped.
	lag time.Duration
}

// openLoop sends requests to addr at the times of a schedule, each on a
// connection of its own while it is out: an idle one if there is one, a
// new one otherwise, up to maxConns. A request whose answer has not come
// by its deadline (counted from its scheduled arrival, the dial included)
// is given up: its connection is reset, as a load balancer that gives up
// closes its upstream connection (a reset, so that the generator's ports
// do not pile up in TIME_WAIT).
type openLoop struct {
	addr     string
	deadline time.Duration
	maxConns int

	jobs    chan arrival // unbuffered: a send succeeds only if a worker is idle
	stop    chan struct{}
	ctx     context.Context // cancels dials at the end
	cancel  context.CancelFunc
	workers atomic.Int64 // running
	peak    int          // workers at most
	wg      sync.WaitGroup

	mu      sync.Mutex
	conns   map[net.Conn]struct{}
	stopped bool
	results []result

	// observe, if set, sees each result as it comes (tests).
	observe func(result)
}

type arrival struct {
	id uint32
	at time.Time
}

// openLoopRun is what a run of the schedule produced.
type openLoopRun struct {
	start     time.Time
	results   []result // every request of the run, in no order
	first     int      // the first measured id
	end       int      // one past the last measured id
	sendLag   []int64  // ns from scheduled to sent, measured requests
	arrivals  int      // all scheduled
	maxWorker int      // connections (workers) used at most
}

func newOpenLoop(addr string, deadline time.Duration, maxConns int) *openLoop {
	ctx, cancel := context.WithCancel(context.Background())
	return &openLoop{addr: addr, deadline: deadline, maxConns: maxConns,
		jobs: make(chan arrival), stop: make(chan struct{}), ctx: ctx, cancel: cancel,
		conns: map[net.Conn]struct{}{}}
}

// run sends the arrivals of sched from start on: warmup unmeasured,
// measure measured, tail unmeasured (long enough for the measured requests
// to be answered or given up under the same load). At the tail's end (or
// when ctx is done) it closes every connection and returns what became of
// each request.
func (g *openLoop) run(ctx context.Context, start time.Time, sched *arrivalSchedule, warmup, measure, tail time.Duration) openLoopRun {
	r := openLoopRun{start: start, first: -1, end: -1}
	from, to, end := warmup, warmup+measure, warmup+measure+tail
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	var dropped []result
	id := 0
loop:
	for ; ; id++ {
		off := sched.next()
		if off >= end {
			break
		}
		if off >= from && r.first < 0 {
			r.first = id
		}
		if off >= to && r.end < 0 {
			r.end = id
		}
		at := start.Add(off)
		if wait := time.Until(at); wait > 0 {
			timer.Reset(wait)
			select {
			case <-timer.C:
			case <-ctx.Done():
				break loop
			}
		}
		a := arrival{id: uint32(id), at: at}
		if off >= from && off < to {
			r.sendLag = append(r.sendLag, int64(time.Since(at)))
		}
		select {
		case g.jobs <- a:
		default:
			if n := g.workers.Load(); n < int64(g.maxConns) {
				g.workers.Add(1)
				g.peak = max(g.peak, int(n+1))
				g.wg.Go(func() { g.worker(a) })
			} else {
				dropped = append(dropped, result{id: a.id, outcome: outDropped})
			}
		}
	}
	// The run lasts until end, however long before it the last arrival
	// came: below 10 arrivals a second that can be more than the tail's
	// margin, and the window's last requests, still out, would be cut
	// rather than answered or given up.
	if wait := time.Until(start.Add(end)); wait > 0 && ctx.Err() == nil {
		timer.Reset(wait)
		select {
		case <-timer.C:
		case <-ctx.Done():
		}
	}
	r.arrivals = id
	if r.first < 0 {
		r.first = id
	}
	if r.end < 0 {
		r.end = id
	}
	g.shutdown()
	r.results = append(g.results, dropped...)
	r.maxWorker = g.peak
	return r
}

// shutdown closes every connection, which ends the requests still out,
// and waits for the workers.
func (g *openLoop) shutdown() {
	g.mu.Lock()
	g.stopped = true
	for c := range g.conns {
		c.Close()
	}
	clear(g.conns)
	g.mu.Unlock()
	g.cancel()
	close(g.stop)
	g.wg.Wait()
}

// loadWorker is one connection of the generator, and its results.
type loadWorker struct {
	g       *openLoop
	conn    net.Conn
	br      *bufio.Reader
	req     []byte
	resp    fasthttp.Response
	results []result
}

// worker sends a, then the arrivals handed to it while its connection
// stays open. A worker whose connection closed ends, so that the idle
// workers are those with an open connection, and a new arrival goes to a
// new connection only when all of them are busy, as a load balancer's
// pool of upstream connections does.
func (g *openLoop) worker(a arrival) {
	w := &loadWorker{g: g}
	defer func() {
		w.drop(false)
		g.mu.Lock()
		g.results = append(g.results, w.results...)
		g.mu.Unlock()
		g.workers.Add(-1)
	}()
	for {
		w.send(a)
		if w.conn == nil {
			return
		}
		select {
		case a = <-g.jobs:
		case <-g.stop:
			return
		}
	}
}

// send sends one request and waits for its answer or its deadline. A
// request picked up after its deadline is not sent: its client has given
// up before the server could see it, through the generator's fault (its
// ticks or this worker ran late), not the server's.
func (w *loadWorker) send(a arrival) {
	deadline := a.at.Add(w.g.deadline)
	lag := time.Since(a.at)
	if lag >= w.g.deadline {
		w.record(a, outUnsent, 0, lag)
		return
	}
	if w.conn == nil {
		d := net.Dialer{Deadline: deadline}
		conn, err := d.DialContext(w.g.ctx, "tcp", w.g.addr)
		if err != nil {
			// A dial that the end of the run cancelled was still out,
			// as an unanswered request then is: not the server's
			// failure to accept.
			o := outConnect
			if w.g.isStopped() {
				o = outCut
			}
			w.record(a, o, 0, lag)
			return
		}
		if !w.g.register(conn) {
			conn.Close()
			w.record(a, outCut, 0, lag)
			return
		}
		w.conn = conn
		if w.br == nil {
			w.br = bufio.NewReaderSize(conn, 1024)
		} else {
			w.br.Reset(conn)
		}
	}
	w.req = appendRequest(w.req[:0], a)
	err := w.conn.SetDeadline(deadline)
	if err == nil {
		_, err = w.conn.Write(w.req)
	}
	if err == nil {
		w.resp.Reset()
		err = w.resp.Read(w.br)
	}
	latency := time.Since(a.at)
	o := classify(err, w.g.isStopped(), &w.resp, a.id, latency, w.g.deadline)
	if o >= outGiveUp {
		latency = 0
	}
	w.record(a, o, latency, lag)
	switch {
	case o == outGiveUp:
		w.drop(true)
	case err != nil, o == outMismatch, w.resp.ConnectionClose():
		w.drop(false)
	}
}

// classify tells what became of a request from the error of its exchange
// (after stopped: the run ended) or its response, and its latency.
func classify(err error, stopped bool, resp *fasthttp.Response, id uint32, latency, deadline time.Duration) outcome {
	if err != nil {
		switch {
		case stopped:
			return outCut
		case errors.Is(err, os.ErrDeadlineExceeded), errors.Is(err, fasthttp.ErrTimeout):
			return outGiveUp
		}
		return outConnError
	}
	echo := resp.Header.Peek(requestIDHeader)
	status := resp.StatusCode()
	switch {
	case len(echo) > 0 && !sameID(echo, id),
		len(echo) == 0 && status == fasthttp.StatusOK: // every 200 echoes its id
		return outMismatch
	case status == fasthttp.StatusOK && latency <= deadline:
		return outGood
	case status == fasthttp.StatusOK:
		return outLate
	case status == fasthttp.StatusServiceUnavailable:
		return outRejected
	case status == fasthttp.StatusGatewayTimeout:
		return outTimeout
	}
	return outOther
}

func (w *loadWorker) record(a arrival, o outcome, latency, lag time.Duration) {
	r := result{id: a.id, outcome: o, latency: latency, lag: lag}
	w.results = append(w.results, r)
	if w.g.observe != nil {
		w.g.observe(r)
	}
}

// drop closes the worker's connection, resetting it if reset.
func (w *loadWorker) drop(reset bool) {
	if w.conn == nil {
		return
	}
	if tc, ok := w.conn.(*net.TCPConn); ok && reset {
		_ = tc.SetLinger(0)
	}
	w.g.mu.Lock()
	delete(w.g.conns, w.conn)
	w.g.mu.Unlock()
	w.conn.Close()
	w.conn = nil
}

// register adds a new connection to those closed at the end, unless the
// end has come.
func (g *openLoop) register(c net.Conn) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.stopped {
		return false
	}
	g.conns[c] = struct{}{}
	return true
}

func (g *openLoop) isStopped() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.stopped
}

// sameID tells whether an echoed request id is id.
func sameID(echo []byte, id uint32) bool {
	n, err := fasthttp.ParseUint(echo)
	return err == nil && n == int(id)
}

// appendRequest appends the request of arrival a: its id, and its
// scheduled arrival as a load balancer in front stamps it, in Apache's
// X-Request-Start format (microseconds since the epoch), which only the
// variants that honour queue headers read.
func appendRequest(b []byte, a arrival) []byte {
	b = append(b, "GET /work HTTP/1.1\r\nHost: 127.0.0.1\r\n"+requestIDHeader+": "...)
	b = strconv.AppendUint(b, uint64(a.id), 10)
	b = append(b, "\r\nX-Request-Start: t="...)
	b = strconv.AppendInt(b, a.at.UnixMicro(), 10)
	return append(b, "\r\n\r\n"...)
}
