package main

// The hangup scenario: what watching clients for hang-ups costs a server
// with many slow requests in flight, and how soon a hang-up is seen. The
// server child is in hangup_server.go, the tables in hangup_report.go.

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"
)

const scenarioHangup = "hangup"

// hangupVariants returns the selected variants that take part in the
// hangup scenario: the two modes of fasttimeout, each measured with the
// watch on and off (Config.IgnoreHangups).
func hangupVariants(selected []string) []string {
	var out []string
	for _, v := range selected {
		if v == ftRace || v == ftCooperative {
			out = append(out, v)
		}
	}
	return out
}

// hangupConfig sizes the scenario; the report carries it.
type hangupConfig struct {
	Conns     int   `json:"conns"`      // connections, each with one slow request in flight
	WorkMs    int64 `json:"work_ms"`    // how long a handler waits for its context
	TimeoutMs int64 `json:"timeout_ms"` // the request timeout, never reached
	WindowMs  int64 `json:"window_ms"`  // each measured CPU window
	Rounds    int   `json:"rounds"`     // pairs of windows, watch on and off
	Probes    int   `json:"probes"`     // hang-ups per latency measurement, a third of them resets
}

func (c hangupConfig) work() time.Duration   { return time.Duration(c.WorkMs) * time.Millisecond }
func (c hangupConfig) window() time.Duration { return time.Duration(c.WindowMs) * time.Millisecond }

// newHangupConfig sizes the scenario from the flags: handlers wait 2 s
// (100 ms for -smoke), the timeout is twice that, and each window lasts
// -duration.
func newHangupConfig(o options) hangupConfig {
	c := hangupConfig{Conns: o.hangupConns, WorkMs: 2000, WindowMs: o.duration.Milliseconds(),
		Rounds: o.hangupRounds, Probes: 300}
	if o.smoke {
		c.WorkMs, c.Probes = 100, 12
	}
	c.TimeoutMs = 2 * c.WorkMs
	return c
}

// hangupSchedule is the order of the measured windows, true for watch on:
// on, off, off, on, on, off, ..., so that a load that drifts steadily over
// the run weighs on both alike, and two windows in a row with the same
// setting need no switch between them.
func hangupSchedule(rounds int) []bool {
	var out []bool
	for r := range rounds {
		out = append(out, r%2 == 0, r%2 != 0)
	}
	return out
}

// hangupReport is the scenario's part of the report.
type hangupReport struct {
	Config hangupConfig `json:"config"`
	Rows   []hangupRow  `json:"rows"`
	Diffs  []hangupDiff `json:"cpu_on_minus_off"`
}

// hangupRow is a variant with the watch on or off.
type hangupRow struct {
	Variant    string    `json:"variant"`
	Watch      bool      `json:"watch"`
	InFlight   int64     `json:"in_flight"` // handlers running at the windows' starts and ends, the fewest
	Requests   int64     `json:"requests"`  // responses in the windows
	ReqPerSec  float64   `json:"req_per_sec"`
	CPUPercent float64   `json:"server_cpu_pct_of_core"` // getrusage user+sys over the windows
	WindowsPct []float64 `json:"windows_cpu_pct"`        // each window's
	ClientGone int64     `json:"client_gone"`            // in the windows: 0, no client leaves then
	Errors     int64     `json:"errors"`                 // connections that failed, in the whole cell
	// How soon hang-ups were seen, with no other load and under the load
	// of Conns slow requests (watch on only).
	Idle   *noticeRow `json:"notice_idle,omitempty"`
	Loaded *noticeRow `json:"notice_loaded,omitempty"`
	Error  string     `json:"error,omitempty"` // the cell failed
}

// hangupDiff is the CPU cost of the watch for one variant.
type hangupDiff struct {
	Variant  string    `json:"variant"`
	OnPct    float64   `json:"on_pct"`
	OffPct   float64   `json:"off_pct"`
	DiffPct  float64   `json:"diff_pct"`  // on − off, in % of one core
	PairsPct []float64 `json:"pairs_pct"` // on − off of each round's pair of windows
}

// hangupWindow is one measured window.
type hangupWindow struct {
	watch         bool
	elapsed       time.Duration
	responses     int64
	before, after hangupStats
	cpuPct        float64
	inFlight      int64
}

func newHangupWindow(watch bool, elapsed time.Duration, responses int64, before, after hangupStats) hangupWindow {
	w := hangupWindow{watch: watch, elapsed: elapsed, responses: responses, before: before, after: after,
		inFlight: min(before.InFlight, after.InFlight)}
	if elapsed > 0 {
		w.cpuPct = 100 * float64(after.CPUNanos-before.CPUNanos) / float64(elapsed)
	}
	return w
}

// hangupRows sums up a variant's windows into its two rows and the
// difference between them. The i-th pair is the i-th window of each
// setting.
func hangupRows(variant string, windows []hangupWindow) (on, off hangupRow, diff hangupDiff) {
	on = hangupRow{Variant: variant, Watch: true, InFlight: -1}
	off = hangupRow{Variant: variant, InFlight: -1}
	var elapsed [2]time.Duration
	var cpu [2]int64
	for _, w := range windows {
		r, i := &off, 0
		if w.watch {
			r, i = &on, 1
		}
		elapsed[i] += w.elapsed
		cpu[i] += w.after.CPUNanos - w.before.CPUNanos
		r.Requests += w.responses
		r.ClientGone += w.after.ClientGone - w.before.ClientGone
		r.WindowsPct = append(r.WindowsPct, w.cpuPct)
		if r.InFlight < 0 || w.inFlight < r.InFlight {
			r.InFlight = w.inFlight
		}
	}
	for i, r := range []*hangupRow{&off, &on} {
		r.InFlight = max(r.InFlight, 0)
		if elapsed[i] > 0 {
			r.ReqPerSec = float64(r.Requests) / elapsed[i].Seconds()
			r.CPUPercent = 100 * float64(cpu[i]) / float64(elapsed[i])
		}
	}
	diff = hangupDiff{Variant: variant, OnPct: on.CPUPercent, OffPct: off.CPUPercent, DiffPct: on.CPUPercent - off.CPUPercent}
	for i := range min(len(on.WindowsPct), len(off.WindowsPct)) {
		diff.PairsPct = append(diff.PairsPct, on.WindowsPct[i]-off.WindowsPct[i])
	}
	return on, off, diff
}

// probeResult is one hang-up: when the client closed (or reset) its
// connection, and what the server saw, in Unix nanoseconds of the
// machine's wall clock, which the two processes share.
type probeResult struct {
	Reset   bool
	Closed  int64
	Started int64 // the handler started; 0 if it never did
	Noticed int64 // the handler's context ended with ErrClientGone; 0 if not
}

// watchedAfter is how long after its handler started a connection is
// surely watched: HangupDelay, and a millisecond for the cooperative
// mode's clock tick and scheduling.
const watchedAfter = 6 * time.Millisecond

// noticeRow sums up a batch of hang-ups.
type noticeRow struct {
	Probes     int     `json:"probes"`
	Resets     int     `json:"resets"`
	Noticed    int     `json:"noticed"`
	NotStarted int     `json:"not_started"` // the request never reached its handler (a reset that came first)
	P50Ms      float64 `json:"p50_ms"`      // noticed − closed
	P99Ms      float64 `json:"p99_ms"`
	MaxMs      float64 `json:"max_ms"`
	// The same for the hang-ups that came once the connection was
	// watched (closed watchedAfter or more after the handler started).
	Watched      int     `json:"watched"`
	WatchedP99Ms float64 `json:"watched_p99_ms"`
	WatchedMaxMs float64 `json:"watched_max_ms"`
	// The longest a goroutine of the server was woken late meanwhile
	// (a 1 ms sleep's overshoot): what the machine and the load add to
	// any wake-up, hang-up or not.
	ServerLagMs float64 `json:"server_lag_max_ms"`
}

func summarizeProbes(probes []probeResult) noticeRow {
	r := noticeRow{Probes: len(probes)}
	var all, watched []int64
	for _, p := range probes {
		if p.Reset {
			r.Resets++
		}
		switch {
		case p.Started == 0:
			r.NotStarted++
		case p.Noticed != 0:
			r.Noticed++
			all = append(all, p.Noticed-p.Closed)
			if p.Closed-p.Started >= int64(watchedAfter) {
				watched = append(watched, p.Noticed-p.Closed)
			}
		}
	}
	q := percentiles(all, 50, 99)
	// The histogram rounds up within 0.1 %: never past the maximum.
	r.MaxMs = float64(slices.Max(append(all, 0))) / 1e6
	r.P50Ms, r.P99Ms = min(q[0]/1e6, r.MaxMs), min(q[1]/1e6, r.MaxMs)
	r.Watched = len(watched)
	r.WatchedMaxMs = float64(slices.Max(append(watched, 0))) / 1e6
	r.WatchedP99Ms = min(percentiles(watched, 99)[0]/1e6, r.WatchedMaxMs)
	return r
}

// runHangup measures every variant of the scenario into rep and returns how
// many failed.
func runHangup(ctx context.Context, o options, rep *report) (failed int, err error) {
	cfg := newHangupConfig(o)
	rep.Hangup = &hangupReport{Config: cfg}
	raiseFileLimit()
	for _, v := range hangupVariants(o.variants) {
		if ctx.Err() != nil {
			return failed, rep.stop(ctx, scenarioHangup, v)
		}
		on, off, diff, err := measureHangup(ctx, v, cfg, o.warmup, o.stderr)
		if err != nil {
			o.progress("  hangup     %-32s: %s", v, failure(ctx, err))
			if ctx.Err() != nil {
				return failed, rep.stop(ctx, scenarioHangup, v) // cut short: no result
			}
			failed++
			on = hangupRow{Variant: v, Watch: true, Error: err.Error()}
			off = hangupRow{Variant: v, Error: err.Error()}
		} else {
			rep.Hangup.Diffs = append(rep.Hangup.Diffs, diff)
			o.progress("  hangup     %-32s: server CPU %.1f%% of a core watching, %.1f%% not, %d in flight",
				v, on.CPUPercent, off.CPUPercent, min(on.InFlight, off.InFlight))
		}
		rep.Hangup.Rows = append(rep.Hangup.Rows, on, off)
	}
	return failed, nil
}

// hangupSettle is added to a handler's wait after a switch between
// watching and not, before a window starts: by then every request in
// flight went to the new setting.
const hangupSettle = 100 * time.Millisecond

// hangupEstimate is the expected wall time of the scenario.
func hangupEstimate(o options) time.Duration {
	if !slices.Contains(o.scenarios, scenarioHangup) {
		return 0
	}
	cfg := newHangupConfig(o)
	sched := hangupSchedule(cfg.Rounds)
	switches := 0
	for i := 1; i < len(sched); i++ {
		if sched[i] != sched[i-1] {
			switches++
		}
	}
	dial := time.Duration(cfg.Conns) * 100 * time.Microsecond
	probes := 2 * (time.Duration(cfg.Probes)*15*time.Millisecond/probeParallel + 100*time.Millisecond)
	perVariant := 300*time.Millisecond + dial + cfg.work() + o.warmup + probes +
		time.Duration(len(sched))*cfg.window() + time.Duration(switches)*(cfg.work()+hangupSettle) +
		cfg.work()/2 // the end: handlers of closed connections that are not watched
	return time.Duration(len(hangupVariants(o.variants))) * perVariant
}

func onOff(watch bool) string {
	if watch {
		return "on"
	}
	return "off"
}

// measureHangup measures one variant in one server child, which starts
// watching: a batch of hang-ups first; then cfg.Conns connections each
// keeping one slow request in flight, warm-up (one handler's wait, so that
// every connection is in its cycle, and warmup more), the CPU windows in
// the order of hangupSchedule, each switch followed by a handler's wait,
// and a second batch of hang-ups under that load, watching.
func measureHangup(ctx context.Context, variant string, cfg hangupConfig, warmup time.Duration, stderr io.Writer) (on, off hangupRow, diff hangupDiff, err error) {
	srv, err := startChild(scenarioHangup, hangupSpec(variant, cfg), stderr)
	if err != nil {
		return on, off, diff, err
	}
	defer srv.stop()
	idle, idleLag, err := probeHangups(ctx, srv, cfg, 0)
	if err != nil {
		return on, off, diff, fmt.Errorf("hang-ups without load: %w", err)
	}
	load := startSlowLoad(srv.addr, cfg)
	defer load.stop()
	if err := load.waitDialled(ctx); err != nil {
		return on, off, diff, err
	}
	if err := sleepCtx(ctx, cfg.work()+warmup); err != nil {
		return on, off, diff, err
	}
	var windows []hangupWindow
	watching := true
	for _, watch := range hangupSchedule(cfg.Rounds) {
		if watch != watching {
			var s hangupStats
			if err := srv.ask(onOff(watch), &s); err != nil {
				return on, off, diff, err
			}
			watching = watch
			if err := sleepCtx(ctx, cfg.work()+hangupSettle); err != nil {
				return on, off, diff, err
			}
		}
		w, err := measureWindow(ctx, srv, load, watch, cfg.window())
		if err != nil {
			return on, off, diff, err
		}
		windows = append(windows, w)
	}
	if !watching {
		var s hangupStats
		if err := srv.ask("on", &s); err != nil {
			return on, off, diff, err
		}
	}
	loaded, loadedLag, err := probeHangups(ctx, srv, cfg, cfg.Probes)
	if err != nil {
		return on, off, diff, fmt.Errorf("hang-ups under load: %w", err)
	}
	on, off, diff = hangupRows(variant, windows)
	idleRow, loadedRow := summarizeProbes(idle), summarizeProbes(loaded)
	idleRow.ServerLagMs, loadedRow.ServerLagMs = idleLag, loadedLag
	on.Idle, on.Loaded = &idleRow, &loadedRow
	on.Errors = load.errors.Load()
	off.Errors = on.Errors
	if on.Errors == int64(cfg.Conns) {
		return on, off, diff, errors.New("every connection failed")
	}
	return on, off, diff, nil
}

// measureWindow measures the server's CPU time over one window.
func measureWindow(ctx context.Context, srv *child, load *slowLoad, watch bool, d time.Duration) (hangupWindow, error) {
	var before, after hangupStats
	if err := srv.ask("stats", &before); err != nil {
		return hangupWindow{}, err
	}
	if before.Watch != watch {
		return hangupWindow{}, fmt.Errorf("the server watches %s, want %s", onOff(before.Watch), onOff(watch))
	}
	load.responses.Store(0)
	load.measuring.Store(true)
	start := time.Now()
	err := sleepCtx(ctx, d)
	load.measuring.Store(false)
	elapsed := time.Since(start)
	if err != nil {
		return hangupWindow{}, err
	}
	if err := srv.ask("stats", &after); err != nil {
		return hangupWindow{}, err
	}
	return newHangupWindow(watch, elapsed, load.responses.Load(), before, after), nil
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// ask sends a command line to the server child and decodes its JSON answer.
func (c *child) ask(cmd string, v any) error {
	if _, err := io.WriteString(c.in, cmd+"\n"); err != nil {
		return err
	}
	line, err := c.out.ReadBytes('\n')
	if err != nil {
		return err
	}
	return json.Unmarshal(line, v)
}

// slowLoad keeps one slow request in flight on each of its connections.
type slowLoad struct {
	measuring atomic.Bool
	responses atomic.Int64 // while measuring
	errors    atomic.Int64
	dialled   sync.WaitGroup
	done      chan struct{}
	wg        sync.WaitGroup

	mu      sync.Mutex
	conns   []net.Conn
	stopped bool
}

// dialParallel bounds concurrent dials, so that the listener's backlog
// never overflows (an overflow costs a SYN retry of a second).
const dialParallel = 64

// startSlowLoad dials cfg.Conns connections to addr. Connection i sends
// its first request i/Conns of a handler's wait after dialling, so that
// the requests' ends are spread evenly, and its next one as soon as the
// response has arrived.
func startSlowLoad(addr string, cfg hangupConfig) *slowLoad {
	l := &slowLoad{done: make(chan struct{})}
	l.dialled.Add(cfg.Conns)
	sem := make(chan struct{}, dialParallel)
	deadline := 2*time.Duration(cfg.TimeoutMs)*time.Millisecond + 5*time.Second
	for i := range cfg.Conns {
		offset := cfg.work() * time.Duration(i) / time.Duration(cfg.Conns)
		l.wg.Go(func() { l.client(addr, offset, deadline, sem) })
	}
	return l
}

// waitDialled returns when every connection is dialled (or failed).
func (l *slowLoad) waitDialled(ctx context.Context) error {
	ch := make(chan struct{})
	go func() { l.dialled.Wait(); close(ch) }()
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (l *slowLoad) client(addr string, offset, deadline time.Duration, sem chan struct{}) {
	sem <- struct{}{}
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	<-sem
	l.dialled.Done()
	if err != nil {
		l.errors.Add(1)
		return
	}
	l.mu.Lock()
	if l.stopped {
		l.mu.Unlock()
		conn.Close()
		return
	}
	l.conns = append(l.conns, conn)
	l.mu.Unlock()
	t := time.NewTimer(offset)
	select {
	case <-t.C:
	case <-l.done:
		t.Stop()
		return
	}
	br := bufio.NewReaderSize(conn, 512)
	var resp fasthttp.Response
	for {
		if err := conn.SetDeadline(time.Now().Add(deadline)); err != nil {
			l.fail()
			return
		}
		if _, err := conn.Write(request); err != nil {
			l.fail()
			return
		}
		resp.Reset()
		if err := resp.Read(br); err != nil {
			l.fail()
			return
		}
		if l.measuring.Load() {
			l.responses.Add(1)
		}
	}
}

// fail counts a connection's error, unless the load is being stopped.
func (l *slowLoad) fail() {
	select {
	case <-l.done:
	default:
		l.errors.Add(1)
	}
}

// stop closes every connection and waits for the clients to end.
func (l *slowLoad) stop() {
	l.mu.Lock()
	if !l.stopped {
		l.stopped = true
		close(l.done)
		for _, c := range l.conns {
			c.Close()
		}
	}
	l.mu.Unlock()
	l.wg.Wait()
}

// probeParallel is how many hang-ups are in progress at once.
const probeParallel = 16

// probeHangups opens cfg.Probes connections (probeParallel at a time),
// sends each a request to the probe path, numbered from seq, and closes it
// 1 to 25 ms later while its handler waits; every third is reset
// (SetLinger(0)) instead of closed. The delays spread the closes over the
// time before and after the watch starts (HangupDelay). It then collects
// what the server saw of each, waiting until every handler has returned:
// noticed or not, within a handler's wait. Meanwhile the server samples
// its own wake-up lag (lagSampler), returned in ms.
func probeHangups(ctx context.Context, srv *child, cfg hangupConfig, seq int) (_ []probeResult, lagMs float64, _ error) {
	var lag lagStats
	if err := srv.ask("lag-start", &lag); err != nil {
		return nil, 0, err
	}
	n := cfg.Probes
	out := make([]probeResult, n)
	errs := make([]error, n)
	sem := make(chan struct{}, probeParallel)
	var wg sync.WaitGroup
	for i := range n {
		if ctx.Err() != nil {
			break
		}
		sem <- struct{}{}
		out[i].Reset = i%3 == 2
		delay := time.Millisecond + time.Duration(i*7919%n)*24*time.Millisecond/time.Duration(n)
		wg.Go(func() {
			defer func() { <-sem }()
			out[i].Closed, errs[i] = hangUp(srv.addr, seq+i, delay, out[i].Reset)
		})
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return nil, 0, err
	}
	if err := errors.Join(errs...); err != nil {
		return nil, 0, err
	}
	// A request that never reached its handler is waited for as long.
	deadline := time.Now().Add(cfg.work() + time.Second)
	seen := map[int]probeSeen{}
	for {
		var batch []probeSeen
		if err := srv.ask("probes", &batch); err != nil {
			return nil, 0, err
		}
		for _, s := range batch {
			seen[s.ID] = s
		}
		ended := 0
		for i := range out {
			if seen[seq+i].Ended != 0 {
				ended++
			}
		}
		if ended == n || time.Now().After(deadline) {
			break
		}
		if err := sleepCtx(ctx, 10*time.Millisecond); err != nil {
			return nil, 0, err
		}
	}
	for i := range out {
		s := seen[seq+i]
		out[i].Started, out[i].Noticed = s.Started, s.Noticed
	}
	if err := srv.ask("lag-stop", &lag); err != nil {
		return nil, 0, err
	}
	return out, float64(lag.MaxNs) / 1e6, nil
}

// hangUp sends one probe request and closes its connection after delay,
// resetting it if reset. It returns when the close began.
func hangUp(addr string, id int, delay time.Duration, reset bool) (closed int64, err error) {
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return 0, err
	}
	req := "GET " + probePrefix + strconv.Itoa(id) + " HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
	if _, err := io.WriteString(conn, req); err != nil {
		conn.Close()
		return 0, err
	}
	time.Sleep(delay)
	if reset {
		if err := conn.(*net.TCPConn).SetLinger(0); err != nil {
			conn.Close()
			return 0, err
		}
	}
	closed = time.Now().UnixNano()
	return closed, conn.Close()
}
