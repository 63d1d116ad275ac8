package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"runtime/metrics"
	"runtime/pprof"
	"runtime/trace"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/fasttimeout/fasttimeout"
	"github.com/valyala/fasthttp"
)

// The variants, in report order; the same list as BenchmarkOverhead.
const (
	fasthttpBare    = "fasthttp-bare"
	fasthttpTWCH    = "fasthttp-TimeoutWithCodeHandler"
	ftRace          = "fasttimeout-race"
	ftRaceContext   = "fasttimeout-race-context"
	ftCooperative   = "fasttimeout-cooperative"
	nethttpBare     = "nethttp-bare"
	nethttpTimeout  = "nethttp-TimeoutHandler"
	nethttpWithTime = "nethttp-context-WithTimeout"
)

var allVariants = []string{fasthttpBare, fasthttpTWCH, ftRace, ftRaceContext, ftCooperative, nethttpBare, nethttpTimeout, nethttpWithTime}

const (
	scenarioThroughput = "throughput"
	scenarioStorm      = "storm"
)

const (
	// throughputTimeout bounds the trivial handler; it is never reached.
	throughputTimeout = 5 * time.Second
	// stormWork is how long a slow handler waits (a database call, say).
	stormWork = 200 * time.Millisecond
	// stormTimeout is the request timeout of the storm.
	stormTimeout = 50 * time.Millisecond
)

// stormVariants returns the selected variants that take part in the storm.
// fasthttp-bare is the floor: a handler that sleeps for the timeout and then
// answers 504 itself, which is what a server needs at least to write that
// many responses at the deadline.
func stormVariants(selected []string) []string {
	var out []string
	for _, v := range selected {
		switch v {
		case fasthttpBare, ftRace, ftCooperative, fasthttpTWCH, nethttpTimeout:
			out = append(out, v)
		}
	}
	return out
}

// timeoutStatus is the status of a variant's timeout response.
func timeoutStatus(variant string) int {
	if variant == nethttpTimeout {
		return http.StatusServiceUnavailable // not configurable
	}
	return http.StatusGatewayTimeout
}

// serverStats is what a variant server reports about itself.
type serverStats struct {
	CPUNanos       int64  `json:"cpu_ns"` // user + system time of the process
	Mallocs        uint64 `json:"mallocs"`
	Goroutines     int    `json:"goroutines"`
	PeakGoroutines int64  `json:"peak_goroutines"` // storm only, since the last reset
	PeakHeapBytes  int64  `json:"peak_heap_bytes"` // storm only, since the last reset

	HandlersStarted  int64    `json:"handlers_started"`
	HandlersFinished int64    `json:"handlers_finished"`
	Overrun          [3]int64 `json:"overrun"` // handlers returning more than 1 ms, 10 ms, 100 ms after their deadline

	Burst burstServerStats `json:"burst"` // burst only
}

// overrunSteps are the thresholds of serverStats.Overrun.
var overrunSteps = [3]time.Duration{time.Millisecond, 10 * time.Millisecond, 100 * time.Millisecond}

// traceEnv, when set in the environment to a directory, makes each variant
// server write a runtime execution trace of its whole life there, named
// scenario-variant.trace (for go tool trace).
const traceEnv = "FASTTIMEOUT_LOADTEST_TRACE"

// profileEnv, when set in the environment to a directory, makes each
// overload server write a CPU profile of its whole life there, named
// workload-variant-handler-*.pprof, one per cell in the order of the cells
// (for go tool pprof).
const profileEnv = "FASTTIMEOUT_LOADTEST_CPUPROFILE"

func startProfile(dir, pattern string) (stop func(), err error) {
	f, err := os.CreateTemp(dir, pattern)
	return record(f, err, pprof.StartCPUProfile, pprof.StopCPUProfile)
}

func startTrace(path string) (stop func(), err error) {
	f, err := os.Create(path)
	return record(f, err, trace.Start, trace.Stop)
}

// record starts a recording (a CPU profile or an execution trace) into f,
// just created with err; stop ends it and closes f.
func record(f *os.File, err error, start func(io.Writer) error, end func()) (stop func(), _ error) {
	if err != nil {
		return nil, err
	}
	if err := start(f); err != nil {
		_ = f.Close()
		return nil, err
	}
	return func() { end(); _ = f.Close() }, nil
}

// serveChild runs one variant server on 127.0.0.1:0. It writes the address
// as its first line on out, then answers each "stats" or "reset" line read
// from in with a JSON serverStats line, and returns when in is closed.
func serveChild(spec string, in io.Reader, out io.Writer) error {
	scenario, variant, ok := strings.Cut(spec, "/")
	if !ok {
		return fmt.Errorf("bad server spec %q", spec)
	}
	switch scenario {
	case scenarioHangup:
		return serveHangup(variant, in, out)
	case scenarioOverload:
		return serveOverload(variant, in, out)
	}
	var track stormTrack
	var burst burstTrack
	var fh fasthttp.RequestHandler
	var nh http.Handler
	var err error
	if scenario == scenarioBurst {
		fh, err = burstHandler(variant, &burst)
	} else {
		fh, nh, err = variantHandler(scenario, variant, &track)
	}
	if err != nil {
		return err
	}
	if dir := os.Getenv(traceEnv); dir != "" {
		stopTrace, err := startTrace(filepath.Join(dir, scenario+"-"+variant+".trace"))
		if err != nil {
			return err
		}
		defer stopTrace()
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	served := make(chan error, 1)
	var shutdown func() error
	if fh != nil {
		s := &fasthttp.Server{Handler: fh, Logger: log.New(io.Discard, "", 0)}
		go func() { served <- s.Serve(ln) }()
		shutdown = s.Shutdown
	} else {
		s := &http.Server{Handler: nh, ErrorLog: log.New(io.Discard, "", 0)}
		go func() { served <- s.Serve(ln) }()
		shutdown = s.Close
	}
	var peaks peakSampler
	if scenario == scenarioStorm || scenario == scenarioBurst {
		stopSampler := peaks.start(time.Millisecond, nil)
		defer stopSampler()
	}

	w := bufio.NewWriter(out)
	fmt.Fprintln(w, ln.Addr().String())
	if err := w.Flush(); err != nil {
		return err
	}
	sc := bufio.NewScanner(in)
	enc := json.NewEncoder(w)
	for sc.Scan() {
		switch sc.Text() {
		case "reset":
			peaks.reset()
		case "stats":
		default:
			return fmt.Errorf("unknown command %q", sc.Text())
		}
		s := snapshot(&track, &peaks)
		s.Burst = burst.counters()
		if err := enc.Encode(s); err != nil {
			return err
		}
		if err := w.Flush(); err != nil {
			return err
		}
	}
	if err := shutdown(); err != nil {
		return err
	}
	if err := <-served; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return sc.Err()
}

func snapshot(track *stormTrack, peaks *peakSampler) serverStats {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	s := serverStats{
		CPUNanos:         cpuTime(),
		Mallocs:          ms.Mallocs,
		Goroutines:       runtime.NumGoroutine(),
		PeakGoroutines:   peaks.goroutines.Load(),
		PeakHeapBytes:    peaks.heap.Load(),
		HandlersStarted:  track.started.Load(),
		HandlersFinished: track.finished.Load(),
	}
	for i := range s.Overrun {
		s.Overrun[i] = track.overrun[i].Load()
	}
	return s
}

// cpuTime returns the user and system CPU time of this process.
func cpuTime() int64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return ru.Utime.Nano() + ru.Stime.Nano()
}

// peakSampler keeps the highest goroutine count and heap size seen.
type peakSampler struct {
	goroutines, heap atomic.Int64
}

// start samples every every until stop is called; after, if not nil, runs
// after each sample.
func (p *peakSampler) start(every time.Duration, after func()) (stop func()) {
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		samples := []metrics.Sample{
			{Name: "/sched/goroutines:goroutines"},
			{Name: "/memory/classes/heap/objects:bytes"},
		}
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			metrics.Read(samples)
			raise(&p.goroutines, int64(samples[0].Value.Uint64()))
			raise(&p.heap, int64(samples[1].Value.Uint64()))
			if after != nil {
				after()
			}
			select {
			case <-done:
				return
			case <-t.C:
			}
		}
	}()
	return func() { close(done); <-finished }
}

func (p *peakSampler) reset() {
	p.goroutines.Store(0)
	p.heap.Store(0)
}

func raise(max *atomic.Int64, v int64) {
	for {
		old := max.Load()
		if v <= old || max.CompareAndSwap(old, v) {
			return
		}
	}
}

// stormTrack counts the storm's slow handlers and how long they ran past
// their deadline.
type stormTrack struct {
	started, finished atomic.Int64
	overrun           [3]atomic.Int64
	honour            atomic.Uint64 // alternates which handlers honour their context
}

// finish records a handler that returns now, for a request that started at
// start.
func (t *stormTrack) finish(start time.Time) {
	over := time.Since(start) - stormTimeout
	for i, step := range overrunSteps {
		if over > step {
			t.overrun[i].Add(1)
		}
	}
	t.finished.Add(1)
}

var okBody = []byte("ok")

const timeoutMessage = "timeout"

// variantHandler builds the server's handler: exactly one of the two
// results is set.
func variantHandler(scenario, variant string, track *stormTrack) (fasthttp.RequestHandler, http.Handler, error) {
	switch scenario {
	case scenarioThroughput:
		return throughputHandler(variant)
	case scenarioStorm:
		return stormHandler(variant, track)
	}
	return nil, nil, fmt.Errorf("unknown scenario %q", scenario)
}

func throughputHandler(variant string) (fasthttp.RequestHandler, http.Handler, error) {
	trivial := func(ctx *fasthttp.RequestCtx) { ctx.SetBody(okBody) }
	withContext := func(ctx *fasthttp.RequestCtx) {
		select {
		case <-fasttimeout.Context(ctx).Done():
			ctx.SetStatusCode(fasthttp.StatusServiceUnavailable)
		default:
			ctx.SetBody(okBody)
		}
	}
	trivialNet := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write(okBody) })
	switch variant {
	case fasthttpBare:
		return trivial, nil, nil
	case fasthttpTWCH:
		return fasthttp.TimeoutWithCodeHandler(trivial, throughputTimeout, timeoutMessage, fasthttp.StatusGatewayTimeout), nil, nil
	case ftRace:
		return fasttimeout.New(trivial, fasttimeout.Config{Timeout: throughputTimeout}), nil, nil
	case ftRaceContext:
		return fasttimeout.New(withContext, fasttimeout.Config{Timeout: throughputTimeout}), nil, nil
	case ftCooperative:
		return fasttimeout.New(trivial, fasttimeout.Config{Timeout: throughputTimeout, Mode: fasttimeout.Cooperative}), nil, nil
	case nethttpBare:
		return nil, trivialNet, nil
	case nethttpTimeout:
		return nil, http.TimeoutHandler(trivialNet, throughputTimeout, timeoutMessage), nil
	case nethttpWithTime:
		return nil, contextWithTimeout(trivialNet, throughputTimeout), nil
	}
	return nil, nil, fmt.Errorf("unknown variant %q", variant)
}

// contextWithTimeout is the chi/Echo style: only a context deadline.
func contextWithTimeout(next http.Handler, d time.Duration) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), d)
		defer cancel()
		next.ServeHTTP(w, r.WithContext(ctx))
	})
}

// startKey holds the time the outermost handler saw the request; the
// deadline is that plus stormTimeout.
type startKey struct{}

const startUserValue = "loadtest.start"

// stormHandler serves slow requests: every other handler waits for its
// context or stormWork, whichever comes first; the others wait stormWork
// regardless. Outside fasttimeout a fasthttp handler has no deadline
// context: fasttimeout.Context then ends only at shutdown, as ctx.Done does.
func stormHandler(variant string, track *stormTrack) (fasthttp.RequestHandler, http.Handler, error) {
	work := func(done <-chan struct{}, start time.Time) {
		track.started.Add(1)
		defer track.finish(start)
		if track.honour.Add(1)%2 == 0 {
			t := time.NewTimer(stormWork)
			defer t.Stop()
			select {
			case <-done:
			case <-t.C:
			}
			return
		}
		time.Sleep(stormWork)
	}
	slow := func(ctx *fasthttp.RequestCtx) {
		start, _ := ctx.UserValue(startUserValue).(time.Time)
		work(fasttimeout.Context(ctx).Done(), start)
		ctx.SetBody(okBody)
	}
	stamp := func(h fasthttp.RequestHandler) fasthttp.RequestHandler {
		return func(ctx *fasthttp.RequestCtx) {
			ctx.SetUserValue(startUserValue, time.Now())
			h(ctx)
		}
	}
	cfg := fasttimeout.Config{Timeout: stormTimeout}
	switch variant {
	case fasthttpBare: // the floor
		return stamp(func(ctx *fasthttp.RequestCtx) {
			start, _ := ctx.UserValue(startUserValue).(time.Time)
			track.started.Add(1)
			time.Sleep(stormTimeout)
			track.finish(start)
			ctx.SetStatusCode(fasthttp.StatusGatewayTimeout)
			ctx.SetBodyString(timeoutMessage)
		}), nil, nil
	case fasthttpTWCH:
		return stamp(fasthttp.TimeoutWithCodeHandler(slow, stormTimeout, timeoutMessage, fasthttp.StatusGatewayTimeout)), nil, nil
	case ftRace:
		return stamp(fasttimeout.New(slow, cfg)), nil, nil
	case ftCooperative:
		cfg.Mode = fasttimeout.Cooperative
		return stamp(fasttimeout.New(slow, cfg)), nil, nil
	case nethttpTimeout:
		slowNet := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			start, _ := r.Context().Value(startKey{}).(time.Time)
			work(r.Context().Done(), start)
			_, _ = w.Write(okBody)
		})
		inner := http.TimeoutHandler(slowNet, stormTimeout, timeoutMessage)
		return nil, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			inner.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), startKey{}, time.Now())))
		}), nil
	}
	return nil, nil, fmt.Errorf("variant %q has no storm", variant)
}
