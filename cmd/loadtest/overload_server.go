package main

// The server child of the overload scenario. It runs on one P
// (GOMAXPROCS 1), so that a core is left to the load generator, and keeps
// its counters in a memory-mapped file shared with the parent: a server in
// collapse has thousands of runnable goroutines, and a goroutine answering
// the parent's questions would wait behind all of them, so the parent reads
// the counters itself, and kills the child when it is done.

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"runtime"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/fasttimeout/fasttimeout"
	"github.com/valyala/fasthttp"
)

// requestIDHeader carries each request's number, from 0 in each cell; the
// server echoes it in its answers, so that the client can tell an answer
// meant for an earlier request on the same connection.
const requestIDHeader = "X-Request-Id"

// notRunHeader marks fasttimeout's timeout answer to a request it did not
// run, its budget spent before its handler could start (SpentBudget): a
// request turned away, as a 503 is, which the client cannot otherwise
// tell from a handler that ran out of time.
const notRunHeader = "X-Not-Run"

// overloadServerConfig is what the parent tells a server child, as JSON in
// its spec.
type overloadServerConfig struct {
	Variant     string `json:"variant"`
	Workload    string `json:"workload"`
	Honour      bool   `json:"honour"`      // the handler honours its context
	Concurrency int    `json:"concurrency"` // fasthttp's Server.Concurrency (0: its default)
	TimeoutMs   int64  `json:"timeout_ms"`
	ChunkIters  int    `json:"chunk_iters"` // iterations of burn in one unit of CPU work
	Chunks      int    `json:"chunks"`      // units of CPU work per request
	DBSlots     int    `json:"db_slots"`
	DBQueryUs   int64  `json:"db_query_us"`
	DBQueries   int    `json:"db_queries"` // queries per request, one after the other
}

func (c overloadServerConfig) timeout() time.Duration {
	return time.Duration(c.TimeoutMs) * time.Millisecond
}

// The header of the shared counters: slots of 8 bytes at the start of the
// mapped file; the work done for request i is the uint32 at
// sharedHeader + 4i.
const (
	slotStarted        = iota // handlers that started
	slotFinished              // handlers that returned
	slotPeakInFlight          // the most handlers running at once
	slotWork                  // units of work done, all requests
	slotOverflow              // units done for requests beyond the file's end
	slotNoID                  // requests without a request id
	slotPeakHeap              // bytes, sampled every overloadSample
	slotPeakGoroutines        // sampled every overloadSample
	slotLimit                 // the middleware's concurrency limit at the last sample
	slotSampled               // Unix ns of the last sample: a starved sampler shows here
	slotRefusedFull           // the middleware's refusals, queue full, at the last sample
	slotRefusedTimeout        // its refusals after waiting their share, at the last sample
	slotFailure               // the length of the failure's text at sharedFailure
	sharedSlots
)

// sharedFailure is where in the header the child leaves why it ended, if
// it failed (fasthttp's Serve returning, say), for the report.
const sharedFailure = 2048

// sharedHeader is the size of the header: a page.
const sharedHeader = 4096

// overloadSample is how often the child samples its heap and goroutines.
const overloadSample = 10 * time.Millisecond

// shared is the child's counters in the mapped file, seen from either side.
type shared struct {
	mem   []byte
	slots []atomic.Uint64
	work  []atomic.Uint32
}

// mapShared maps f, which is sharedSize(n) bytes long, into memory.
func mapShared(f *os.File) (*shared, error) {
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if st.Size() < sharedHeader || st.Size()%4 != 0 {
		return nil, fmt.Errorf("shared counters: bad size %d", st.Size())
	}
	mem, err := syscall.Mmap(int(f.Fd()), 0, int(st.Size()), syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("shared counters: %w", err)
	}
	// The mapping is page-aligned, so the atomics are aligned too.
	s := &shared{mem: mem}
	s.slots = unsafe.Slice((*atomic.Uint64)(unsafe.Pointer(&mem[0])), sharedSlots)
	if n := (len(mem) - sharedHeader) / 4; n > 0 {
		s.work = unsafe.Slice((*atomic.Uint32)(unsafe.Pointer(&mem[sharedHeader])), n)
	}
	return s, nil
}

func (s *shared) unmap() error { return syscall.Munmap(s.mem) }

// fail leaves why the child ends.
func (s *shared) fail(err error) {
	n := copy(s.mem[sharedFailure:sharedHeader], err.Error())
	s.slots[slotFailure].Store(uint64(n))
}

// failure returns what fail left, or "".
func (s *shared) failure() string {
	n := min(int(s.slots[slotFailure].Load()), sharedHeader-sharedFailure)
	return string(s.mem[sharedFailure : sharedFailure+n])
}

// sharedSize is the size of the file for requests 0 to ids-1.
func sharedSize(ids int) int64 { return sharedHeader + 4*int64(ids) }

// addWork counts n units of work done for request id.
func (s *shared) addWork(id int, n uint32) {
	s.slots[slotWork].Add(uint64(n))
	if id >= 0 && id < len(s.work) {
		s.work[id].Add(n)
		return
	}
	s.slots[slotOverflow].Add(uint64(n))
}

// units returns the units of work done so far for request id; 0 beyond
// the file's end, whose units count in slotOverflow only.
func (s *shared) units(id uint32) uint32 {
	if int(id) < len(s.work) {
		return s.work[id].Load()
	}
	return 0
}

// unitsInAll returns the units of work done so far for the requests
// within the file's ids: all units but the overflow. The overflow is read
// first: addWork counts a unit in all before it counts it there.
func (s *shared) unitsInAll() int64 {
	over := s.slots[slotOverflow].Load()
	return int64(s.slots[slotWork].Load()) - int64(over)
}

func (s *shared) start() {
	n := s.slots[slotStarted].Add(1) - s.slots[slotFinished].Load()
	for {
		old := s.slots[slotPeakInFlight].Load()
		if n <= old || s.slots[slotPeakInFlight].CompareAndSwap(old, n) {
			return
		}
	}
}

func (s *shared) finish() { s.slots[slotFinished].Add(1) }

// burnSink keeps the compiler from dropping burn's loop.
var burnSink atomic.Uint64

// burn does n iterations of a xorshift generator: CPU work that no
// compiler or cache makes cheaper.
func burn(n int) {
	x := uint64(n) | 1
	for range n {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
	}
	burnSink.Store(x)
}

// database is the downstream of the downstream-bound workload: a fixed
// number of slots, each query holding one for a fixed time.
type database struct {
	slots chan struct{}
	query time.Duration
}

// overloadHandler is the handler of a workload: CPU-bound, Chunks units of
// ChunkIters iterations; or downstream-bound, DBQueries queries one after
// the other. The honouring one looks at its context between units and
// while it waits for a database slot, and gives up when it is done; the
// other never looks. Each unit or query done is counted for the request's
// id in sh. A handler that gives up writes nothing: the middleware has
// answered, or will.
func overloadHandler(c overloadServerConfig, sh *shared) (fasthttp.RequestHandler, error) {
	var db *database
	switch c.Workload {
	case workloadCPU:
		if c.Chunks <= 0 || c.ChunkIters <= 0 {
			return nil, fmt.Errorf("cpu workload: %d chunks of %d iterations", c.Chunks, c.ChunkIters)
		}
	case workloadDB:
		if c.DBSlots <= 0 || c.DBQueries <= 0 || c.DBQueryUs <= 0 {
			return nil, fmt.Errorf("downstream workload: %d slots, %d queries of %d µs", c.DBSlots, c.DBQueries, c.DBQueryUs)
		}
		db = &database{slots: make(chan struct{}, c.DBSlots), query: time.Duration(c.DBQueryUs) * time.Microsecond}
	default:
		return nil, fmt.Errorf("unknown workload %q", c.Workload)
	}
	return func(ctx *fasthttp.RequestCtx) {
		sh.start()
		defer sh.finish()
		raw := ctx.Request.Header.Peek(requestIDHeader)
		id, err := fasthttp.ParseUint(raw)
		if err != nil {
			sh.slots[slotNoID].Add(1)
			id = -1
		}
		ctx.Response.Header.SetBytesV(requestIDHeader, raw)
		var done <-chan struct{}
		if c.Honour {
			done = fasttimeout.Context(ctx).Done()
		}
		if db == nil {
			for range c.Chunks {
				if isDone(done) {
					return
				}
				burn(c.ChunkIters)
				sh.addWork(id, 1)
			}
		} else {
			for range c.DBQueries {
				if done != nil {
					select {
					case db.slots <- struct{}{}:
					case <-done:
						return
					}
				} else {
					db.slots <- struct{}{}
				}
				time.Sleep(db.query) // a query once sent runs to its end
				<-db.slots
				sh.addWork(id, 1)
				if isDone(done) {
					return
				}
			}
		}
		ctx.SetBody(okBody)
	}, nil
}

func isDone(done <-chan struct{}) bool {
	if done == nil {
		return false
	}
	select {
	case <-done:
		return true
	default:
		return false
	}
}

// overloadServer builds the variant's server around the workload's
// handler.
func overloadServer(c overloadServerConfig, sh *shared, stats *fasttimeout.Stats) (*fasthttp.Server, error) {
	v, ok := findOverloadVariant(c.Variant)
	if !ok {
		return nil, fmt.Errorf("unknown overload variant %q", c.Variant)
	}
	if c.Honour && !v.context {
		return nil, fmt.Errorf("variant %q gives its handler no context to honour", c.Variant)
	}
	h, err := overloadHandler(c, sh)
	if err != nil {
		return nil, err
	}
	s := &fasthttp.Server{Logger: log.New(io.Discard, "", 0)}
	switch {
	case v.name == olConcurrency:
		if c.Concurrency <= 0 {
			return nil, fmt.Errorf("%s needs a concurrency", v.name)
		}
		s.Concurrency = c.Concurrency
	case v.name == olTWCH:
		h = fasthttp.TimeoutWithCodeHandler(h, c.timeout(), timeoutMessage, fasthttp.StatusGatewayTimeout)
	case v.fasttimeout:
		cfg := fasttimeout.Config{
			Timeout:             c.timeout(),
			Mode:                v.mode,
			AdaptiveConcurrency: v.admission,
			Stats:               stats,
			// The timeout answer echoes the request id too.
			OnTimeout: func(ctx *fasthttp.RequestCtx, resp *fasthttp.Response) {
				resp.Header.SetBytesV(requestIDHeader, ctx.Request.Header.Peek(requestIDHeader))
			},
		}
		if v.queueStart {
			cfg.HonorQueueHeaders, cfg.MaxQueueAge = true, c.timeout()/4
		}
		wrapped := fasttimeout.New(h, cfg)
		h = func(ctx *fasthttp.RequestCtx) {
			wrapped(ctx)
			// No handler ran, so the response is this goroutine's to
			// write (SpentBudget is false after a racing timeout, whose
			// RequestCtx the late handler owns).
			if fasttimeout.SpentBudget(ctx) {
				ctx.Response.Header.Set(notRunHeader, "1")
			}
		}
	}
	s.Handler = h
	return s, nil
}

// serveOverload runs a server child of the overload scenario. spec is its
// overloadServerConfig as JSON; the shared counters are the file at
// descriptor 3. It writes its address on out and serves until in is
// closed, then returns without waiting for its handlers (the parent
// usually kills it first).
func serveOverload(spec string, in io.Reader, out io.Writer) error {
	var c overloadServerConfig
	if err := json.Unmarshal([]byte(spec), &c); err != nil {
		return fmt.Errorf("bad overload spec %q: %w", spec, err)
	}
	runtime.GOMAXPROCS(1)
	raiseFileLimit()
	f := os.NewFile(3, "shared")
	if f == nil {
		return fmt.Errorf("no shared counters at descriptor 3")
	}
	sh, err := mapShared(f)
	if err != nil {
		return err
	}
	if dir := os.Getenv(profileEnv); dir != "" {
		handler := "ignores"
		if c.Honour {
			handler = "honours"
		}
		stop, err := startProfile(dir, fmt.Sprintf("%s-%s-%s-*.pprof", c.Workload, c.Variant, handler))
		if err != nil {
			return err
		}
		defer stop()
	}
	var stats fasttimeout.Stats
	s, err := overloadServer(c, sh, &stats)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	served := make(chan error, 1)
	go func() { served <- s.Serve(ln) }()
	stopSampler := sampleOverload(sh, &stats)
	defer stopSampler()

	w := bufio.NewWriter(out)
	fmt.Fprintln(w, ln.Addr().String())
	if err := w.Flush(); err != nil {
		return err
	}
	// Wait for the end of input, or for Serve to fail.
	eof := make(chan error, 1)
	go func() { _, err := io.Copy(io.Discard, in); eof <- err }()
	select {
	case err := <-eof:
		return err
	case err := <-served:
		err = fmt.Errorf("serve: %w", err)
		sh.fail(err)
		return err
	}
}

// sampleOverload keeps the peaks of heap and goroutines, and the
// middleware's limit, in the shared header, every overloadSample.
func sampleOverload(sh *shared, stats *fasttimeout.Stats) (stop func()) {
	var peaks peakSampler
	return peaks.start(overloadSample, func() {
		sh.slots[slotPeakGoroutines].Store(uint64(peaks.goroutines.Load()))
		sh.slots[slotPeakHeap].Store(uint64(peaks.heap.Load()))
		snap := stats.Snapshot()
		sh.slots[slotLimit].Store(uint64(max(snap.ConcurrencyLimit, 0)))
		sh.slots[slotRefusedFull].Store(uint64(snap.RejectedFull))
		sh.slots[slotRefusedTimeout].Store(uint64(snap.RejectedQueueTimeout))
		sh.slots[slotSampled].Store(uint64(time.Now().UnixNano()))
	})
}
