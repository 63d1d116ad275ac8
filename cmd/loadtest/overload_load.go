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
	"syscall"
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
	outNotRun                   // 504 without running the handler: its budget spent before it could start
	outOther                    // any other status
	outGiveUp                   // no answer by the deadline: the client closed its connection
	outConnect                  // the connection could not be opened by the deadline
	outConnError                // the connection failed while the request was out
	outDropped                  // not sent: every connection of the generator was busy, or it could not open one
	outUnsent                   // not sent: picked up by a worker only after its deadline
	outMismatch                 // the answer carried another request's id: answered twice, or crossed
	outCut                      // still out when the run ended
	outcomes
)

// result is one request's outcome and, for an answer, its latency from its
// scheduled arrival. It is added to the cell's tally and not kept.
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
	tally   tally // the measured arrivals'

	// work, if set, attributes the server's work in the window to the
	// requests answered good.
	work *windowWork
	// observe, if set, sees each result as it comes (tests).
	observe func(result)
}

type arrival struct {
	id       uint32
	at       time.Time
	measured bool // scheduled in the measured window
}

// openLoopRun is what a run of the schedule produced.
type openLoopRun struct {
	start     time.Time
	tally     tally     // what became of the measured arrivals
	first     int       // the first measured id
	end       int       // one past the last measured id
	sendLag   histogram // ns from scheduled to handed to a worker, measured requests
	arrivals  int       // all scheduled
	maxWorker int       // connections (workers) used at most
}

// tally is what became of the measured arrivals, in aggregate: a count of
// each outcome and histograms of the latencies, so that its memory does
// not grow with the arrivals, where a result kept for each (24 bytes, and
// as much again to report the cell) came to 1-2 GB in an hour's soak at
// 10x. The figures of the report are those of the results: a histogram's
// quantiles are those of its values (see histogram).
type tally struct {
	counts    [outcomes]int64
	latencies histogram // of the good answers, from their scheduled arrival
	lags      histogram // how late a worker picked each up; not the dropped ones
}

// add counts a measured arrival's result.
func (t *tally) add(r result) {
	t.counts[r.outcome]++
	if r.outcome == outGood {
		t.latencies.record(int64(r.latency))
	}
	if r.outcome != outDropped { // picked up by a worker
		t.lags.record(int64(r.lag))
	}
}

// recorded is the number of results counted.
func (t *tally) recorded() int64 {
	var n int64
	for _, c := range t.counts {
		n += c
	}
	return n
}

// windowWork attributes the work the server does in the measured window
// (the units it counts for each request id in the shared file) to the
// requests that got a good answer, keeping only the requests out at a
// time: the rest of the window's work, Wasted, went to requests without a
// good answer, whenever they arrived. A good answer's handler worked only
// while its request was out (from before it was sent until its answer
// came), so its work in the window is its units when its answer came, or
// at the window's end if it was out then, less its units at the window's
// start if it was out then. The figures are those of a copy of every
// request's units at each end of the window, without the copies (8 bytes
// an id, some 300 MB for an hour's soak at 10x).
type windowWork struct {
	sh    *shared
	mu    sync.Mutex
	phase int                  // 0 before the window, 1 in it, 2 after it
	out   map[uint32]int       // requests sent and not yet done: the phase they were sent in
	at    [2]map[uint32]uint32 // the units of the requests out at the window's start, and at its end
	total [2]int64             // the units of all requests at the window's start, and at its end
	good  int64                // units done in the window for requests answered good
}

func newWindowWork(sh *shared) *windowWork {
	return &windowWork{sh: sh, out: map[uint32]int{}, at: [2]map[uint32]uint32{{}, {}}}
}

// sending notes that request id is about to be sent: its handler can
// work from then on.
func (w *windowWork) sending(id uint32) {
	if w == nil {
		return
	}
	w.mu.Lock()
	w.out[id] = w.phase
	w.mu.Unlock()
}

// done notes that request id is no longer out, answered good or not. For
// a good answer its handler has returned: its units are final.
func (w *windowWork) done(id uint32, good bool) {
	if w == nil {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	sent, ok := w.out[id]
	if ok && good && w.phase > 0 && sent < 2 {
		end := w.sh.units(id) // answered in the window
		if w.phase == 2 {
			end = w.at[1][id] // out at its end
		}
		var start uint32 // sent in the window
		if sent == 0 {
			start = w.at[0][id] // out at its start
		}
		w.good += int64(end) - int64(start)
	}
	delete(w.out, id)
	delete(w.at[0], id)
	delete(w.at[1], id)
}

// mark marks the window's start, then its end: it reads the units of the
// requests out, and of all. At the start the total is read first, at the
// end last: the child counts a unit in all before it counts it for its
// request, so a unit read for a request at the end is in the total too.
func (w *windowWork) mark() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.phase > 1 {
		return
	}
	if w.phase == 0 {
		w.total[0] = w.sh.unitsInAll()
	}
	for id := range w.out {
		w.at[w.phase][id] = w.sh.units(id)
	}
	if w.phase == 1 {
		w.total[1] = w.sh.unitsInAll()
	}
	w.phase++
}

// window returns the units done in the window, by all requests and for
// those answered good.
func (w *windowWork) window() (work, good int64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.phase < 2 {
		return 0, 0
	}
	return w.total[1] - w.total[0], w.good
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
		a := arrival{id: uint32(id), at: at, measured: off >= from && off < to}
		if a.measured {
			r.sendLag.record(int64(time.Since(at)))
		}
		select {
		case g.jobs <- a:
		default:
			if n := g.workers.Load(); n < int64(g.maxConns) {
				g.workers.Add(1)
				g.peak = max(g.peak, int(n+1))
				g.wg.Go(func() { g.worker(a) })
			} else {
				g.add(a, result{id: a.id, outcome: outDropped})
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
	r.tally = g.tally // every worker has returned
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

// loadWorker is one connection of the generator.
type loadWorker struct {
	g    *openLoop
	conn net.Conn
	br   *bufio.Reader
	req  []byte
	resp fasthttp.Response
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
			switch {
			case w.g.isStopped():
				o = outCut
			case noLocalSocket(err):
				// The generator's own want of a descriptor or a
				// port: no connection for it, as when all are
				// busy, and nothing the server did.
				o = outDropped
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
	w.g.work.sending(a.id)
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
	w.g.work.done(a.id, o == outGood)
	w.record(a, o, latency, lag)
	switch {
	case o == outGiveUp:
		w.drop(true)
	case err != nil, o == outMismatch, w.resp.ConnectionClose():
		w.drop(false)
	}
}

// noLocalSocket tells whether a dial failed on this side, before it could
// reach the server: out of file descriptors (the process's or the
// system's), local ports or socket buffers.
func noLocalSocket(err error) bool {
	for _, errno := range []syscall.Errno{syscall.EMFILE, syscall.ENFILE, syscall.EADDRNOTAVAIL, syscall.ENOBUFS} {
		if errors.Is(err, errno) {
			return true
		}
	}
	return false
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
	case status == fasthttp.StatusGatewayTimeout && len(resp.Header.Peek(notRunHeader)) > 0:
		return outNotRun
	case status == fasthttp.StatusGatewayTimeout:
		return outTimeout
	}
	return outOther
}

func (w *loadWorker) record(a arrival, o outcome, latency, lag time.Duration) {
	w.g.add(a, result{id: a.id, outcome: o, latency: latency, lag: lag})
}

// add counts the result r of arrival a in the tally if a was measured.
func (g *openLoop) add(a arrival, r result) {
	if a.measured {
		g.mu.Lock()
		g.tally.add(r)
		g.mu.Unlock()
	}
	if g.observe != nil {
		g.observe(r)
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
