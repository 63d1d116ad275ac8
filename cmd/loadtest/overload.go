package main

// The overload scenario: open-loop arrivals at 0.5 to 10 times a server's
// capacity, clients that give up at their deadline, and what each variant
// still delivers. The server child is in overload_server.go, the generator
// in overload_load.go, the tables, goals and chart in overload_report.go.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/fasttimeout/fasttimeout"
)

const scenarioOverload = "overload"

// The workloads.
const (
	// workloadCPU burns cpuWork of CPU per request, in units of
	// cpuChunk.
	workloadCPU = "cpu"
	// workloadDB makes queries to a simulated database of dbSlots slots,
	// each query holding one for dbQuery.
	workloadDB = "downstream"
)

var allWorkloads = []string{workloadCPU, workloadDB}

const (
	cpuWork  = 1500 * time.Microsecond
	cpuChunk = 50 * time.Microsecond // how often an honouring handler looks at its context
	dbSlots  = 20
	dbQuery  = 5 * time.Millisecond
	// overloadTailMargin is added to the deadline after the measured
	// window: the load goes on while the last measured requests are
	// answered or given up.
	overloadTailMargin = 100 * time.Millisecond
	// sweepLoad is the offered load of the Concurrency sweep, as a
	// multiple of the first estimate of the capacity.
	sweepLoad = 4
	// maxCellArrivals bounds the arrivals a cell schedules over its
	// warm-up, window and tail: the file the server child shares with
	// the generator holds a counter of work for each (4 bytes, and half
	// as many again for a margin), and request ids are 32 bits.
	// An hour's soak at 10x schedules about 24 million with the cpu
	// workload and 18 million with the downstream one (8 queries).
	maxCellArrivals = 30_000_000
)

// mostCapacity is the most a workload's capacity can be, on the server's
// one P: a core's worth of cpuWork, or what the database's slots let
// through.
func mostCapacity(workload string, queries int) float64 {
	if workload == workloadCPU {
		return float64(time.Second) / float64(cpuWork)
	}
	return dbSlots * float64(time.Second) / float64(time.Duration(queries)*dbQuery)
}

// checkArrivals refuses a cell of what (the flags that make it) that
// would schedule more than maxCellArrivals: rate arrivals a second over
// total, warm-up and tail included.
func checkArrivals(what string, rate float64, total time.Duration) error {
	if n := rate * total.Seconds(); n > maxCellArrivals {
		return fmt.Errorf("%s: up to %.0f arrivals a second for %v (with -cell-warmup and -overload-timeout) schedules %.1f million in a cell, more than %d million: offer less or measure shorter",
			what, rate, total, n/1e6, maxCellArrivals/1_000_000)
	}
	return nil
}

// checkOverloadArrivals applies checkArrivals to every cell that o asks
// for, at the most each workload's capacity can be (the capacity itself
// is measured only once the run has started): the sweep's, each load's
// and the soak's.
func checkOverloadArrivals(o options) error {
	cfg := newOverloadConfig(o)
	type cell struct {
		what    string
		load    float64
		measure time.Duration
	}
	cells := []cell{{fmt.Sprintf("the sweep (%dx the first estimate) with -cell %v", sweepLoad, o.olCell), sweepLoad, o.olCell}}
	for _, load := range o.olLoads {
		cells = append(cells, cell{fmt.Sprintf("-overload-loads %v with -cell %v", load, o.olCell), load, cfg.cellAt(load)})
	}
	if o.olSoak > 0 {
		cells = append(cells, cell{fmt.Sprintf("-soak %v at 10x", o.olSoak), 10, o.olSoak})
	}
	for _, wl := range o.olWorkloads {
		for _, c := range cells {
			what := fmt.Sprintf("%s on the %s workload", c.what, wl)
			if err := checkArrivals(what, c.load*mostCapacity(wl, o.olQueries), o.olWarmup+c.measure+cfg.tail()); err != nil {
				return err
			}
		}
	}
	return nil
}

// The variants of the overload scenario, in report order.
const (
	olBare         = "fasthttp-bare"
	olConcurrency  = "fasthttp-Concurrency"
	olTWCH         = "fasthttp-TimeoutWithCodeHandler"
	olRace         = "fasttimeout-race"
	olRaceAdaptive = "fasttimeout-race-adaptive"
	olCoop         = "fasttimeout-cooperative"
	olCoopAdaptive = "fasttimeout-cooperative-adaptive"
	olRaceQueue    = "fasttimeout-race-adaptive-queuestart"
)

// overloadVariant is a server of the overload scenario.
type overloadVariant struct {
	name string
	// context: the handler has a context that ends at its deadline, so it
	// comes in two kinds, honouring and ignoring it. Outside fasttimeout a
	// fasthttp handler has none.
	context bool
	// fasttimeout: wrapped by fasttimeout.New in mode, with admission by
	// AdaptiveConcurrency if admission.
	fasttimeout bool
	mode        fasttimeout.Mode
	admission   bool
	// queueStart: HonorQueueHeaders, so that the request's age counts
	// from the X-Request-Start the generator stamps as a load balancer
	// would, and MaxQueueAge a quarter of the timeout.
	queueStart bool
	// without is the same variant without admission, for the goal at
	// half the capacity.
	without   string
	byDefault bool
	about     string
}

// overloadVariants is the one table of the scenario's variants.
var overloadVariants = []overloadVariant{
	{name: olBare, byDefault: true, about: "fasthttp, no timeout"},
	{name: olConcurrency, byDefault: true, about: "fasthttp with Server.Concurrency, the best of the sweep"},
	{name: olTWCH, byDefault: true, about: "fasthttp.TimeoutWithCodeHandler"},
	{name: olRace, context: true, fasttimeout: true, byDefault: true, about: "fasttimeout racing, no admission"},
	{name: olRaceAdaptive, context: true, fasttimeout: true, admission: true, without: olRace, byDefault: true,
		about: "fasttimeout racing, AdaptiveConcurrency"},
	{name: olRaceQueue, context: true, fasttimeout: true, admission: true, queueStart: true, without: olRace, byDefault: true,
		about: "fasttimeout racing, AdaptiveConcurrency, HonorQueueHeaders and MaxQueueAge of a quarter of the timeout"},
	{name: olCoop, context: true, fasttimeout: true, mode: fasttimeout.Cooperative, about: "fasttimeout cooperative, no admission"},
	{name: olCoopAdaptive, context: true, fasttimeout: true, mode: fasttimeout.Cooperative, admission: true, without: olCoop, byDefault: true,
		about: "fasttimeout cooperative, AdaptiveConcurrency"},
}

func findOverloadVariant(name string) (overloadVariant, bool) {
	for _, v := range overloadVariants {
		if v.name == name {
			return v, true
		}
	}
	return overloadVariant{}, false
}

func overloadVariantNames(all bool) []string {
	var out []string
	for _, v := range overloadVariants {
		if all || v.byDefault {
			out = append(out, v.name)
		}
	}
	return out
}

// handlerKinds are the handlers a variant runs: honouring and ignoring
// its context if it has one, else ignoring only.
func (v overloadVariant) handlerKinds(smoke bool) []bool {
	switch {
	case !v.context:
		return []bool{false}
	case smoke:
		return []bool{true}
	}
	return []bool{true, false}
}

func handlerName(honour bool) string {
	if honour {
		return "honours"
	}
	return "ignores"
}

// overloadConfig sizes the scenario; the report carries it.
type overloadConfig struct {
	TimeoutMs  int64     `json:"timeout_ms"` // the server's timeout and the client's deadline
	WarmupMs   int64     `json:"warmup_ms"`
	CellMs     int64     `json:"cell_ms"`
	SoakMs     int64     `json:"soak_ms,omitempty"`
	Arrivals   string    `json:"arrivals"`
	MaxConns   int       `json:"max_conns"`
	Loads      []float64 `json:"loads"`
	Sweep      []int     `json:"concurrency_sweep"`
	ChunkIters int       `json:"chunk_iters"`
	ChunkUs    float64   `json:"chunk_us"` // measured, best of several
	Chunks     int       `json:"chunks"`
	DBSlots    int       `json:"db_slots"`
	DBQueryMs  float64   `json:"db_query_ms"`
	DBQueries  int       `json:"db_queries"`
	Workloads  []string  `json:"workloads"`
	Variants   []string  `json:"variants"`
	Smoke      bool      `json:"smoke,omitempty"`
	// CountsNotSent: the generator counted the arrivals it failed to send
	// (Dropped, Unsent). A report from before then lacks it: its generator
	// sent the arrivals it picked up after their deadline, and they are
	// among its give-ups and connect errors.
	CountsNotSent bool `json:"counts_not_sent,omitempty"`
}

func (c overloadConfig) timeout() time.Duration { return time.Duration(c.TimeoutMs) * time.Millisecond }
func (c overloadConfig) warmup() time.Duration  { return time.Duration(c.WarmupMs) * time.Millisecond }
func (c overloadConfig) cell() time.Duration    { return time.Duration(c.CellMs) * time.Millisecond }
func (c overloadConfig) tail() time.Duration    { return c.timeout() + overloadTailMargin }

// cellAt is the measured time of a cell at load × capacity: -cell, and
// -cell ÷ load² below 1x (12 s at 0.5x). A light cell's p99 is held within
// 10 % of another variant's, and the p99 of n answers is about their
// n/100-th slowest, a rank that moves by some √(n/100) from run to run:
// in a 3 s cell at 0.5x (about 850 answers) that moved the p99 by 8-10 %,
// as much as the margin. Four times as long halves that.
func (c overloadConfig) cellAt(load float64) time.Duration {
	if load >= 1 {
		return c.cell()
	}
	return time.Duration(float64(c.cell()) / (load * load)).Round(time.Millisecond)
}

func newOverloadConfig(o options) overloadConfig {
	return overloadConfig{
		TimeoutMs: o.olTimeout.Milliseconds(), WarmupMs: o.olWarmup.Milliseconds(), CellMs: o.olCell.Milliseconds(),
		SoakMs: o.olSoak.Milliseconds(), Arrivals: o.olArrivals, MaxConns: o.olMaxConns,
		Loads: o.olLoads, Sweep: o.olSweep, Chunks: int(cpuWork / cpuChunk),
		DBSlots: dbSlots, DBQueryMs: float64(dbQuery) / 1e6, DBQueries: o.olQueries,
		Workloads: o.olWorkloads, Variants: o.olVariants, Smoke: o.smoke, CountsNotSent: true,
	}
}

// serverConfig is what the child of a cell is told.
func (c overloadConfig) serverConfig(cell overloadCell) overloadServerConfig {
	return overloadServerConfig{
		Variant: cell.variant, Workload: cell.workload, Honour: cell.honour, Concurrency: cell.concurrency,
		TimeoutMs: c.TimeoutMs, ChunkIters: c.ChunkIters, Chunks: c.Chunks,
		DBSlots: c.DBSlots, DBQueryUs: int64(c.DBQueryMs * 1000), DBQueries: c.DBQueries,
	}
}

// nominalCapacity is what a workload's capacity would be on a core of
// its own: one core's worth of CPU work (and some 25 µs of HTTP per
// request), or the database's slots.
func (c overloadConfig) nominalCapacity(workload string) float64 {
	if workload == workloadCPU {
		perRequest := float64(c.Chunks)*c.ChunkUs + 25
		return 1e6 / perRequest
	}
	return float64(c.DBSlots) * 1000 / (c.DBQueryMs * float64(c.DBQueries))
}

// closedLoopConns is how many connections the first estimate of the
// capacity uses: more than the database's slots, and few enough that the
// server is not overloaded.
const closedLoopConns = 32

// estimateCapacity is the first guess of a workload's capacity, before the
// sweep measures it: the requests per second of fasthttp-bare under
// closed-loop load from closedLoopConns connections (each sends its next
// request when the previous answer has come), which cannot overload it.
// On a shared machine it is less than the nominal capacity.
func estimateCapacity(ctx context.Context, cfg overloadConfig, workload string, stderr io.Writer) (float64, error) {
	f, err := os.CreateTemp("", "loadtest-overload-*")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	_ = os.Remove(f.Name())
	if err := f.Truncate(sharedSize(0)); err != nil {
		return 0, err
	}
	spec, err := json.Marshal(cfg.serverConfig(overloadCell{workload: workload, variant: olBare}))
	if err != nil {
		return 0, err
	}
	srv, err := startChildFiles(scenarioOverload, string(spec), []*os.File{f}, stderr)
	if err != nil {
		return 0, err
	}
	defer stopOverloadChild(srv.in, srv.exited, srv.cmd.Process.Kill)
	nop := func() error { return nil }
	res, err := drive(ctx, srv.addr, closedLoopConns, cfg.warmup()/2, cfg.cell()/2, 0, 0, nop, nop)
	if err != nil {
		return 0, err
	}
	if res.elapsed <= 0 || res.answered == 0 {
		return 0, errors.New("no answer")
	}
	return float64(res.answered) / res.elapsed.Seconds(), nil
}

// calibrateBurn finds how many iterations of burn take about target on
// this machine: the best of several tries, so that a busy moment does not
// count. It returns the iterations and how long they took at best.
func calibrateBurn(target time.Duration) (iters int, took time.Duration) {
	best := func(n int) time.Duration {
		b := time.Duration(math.MaxInt64)
		for range 30 {
			start := time.Now()
			burn(n)
			b = min(b, time.Since(start))
		}
		return max(b, time.Microsecond)
	}
	const probe = 1 << 16
	iters = max(1, int(float64(probe)*float64(target)/float64(best(probe))))
	return iters, best(iters)
}

// overloadCell is one measurement: a variant and handler kind under one
// workload and offered load, in a fresh server child.
type overloadCell struct {
	workload    string
	variant     string
	honour      bool
	concurrency int     // fasthttp-Concurrency
	load        float64 // offered load × capacity; 0 in the sweep
	rate        float64 // arrivals per second
	measure     time.Duration
	seed        uint64
}

// sweepSeed seeds the arrivals of every cell of the Concurrency sweep, so
// that each value is tried on the same arrivals, as every variant is at a
// given load.
const sweepSeed = 100

// runOverload measures the scenario into rep and returns how many cells
// failed.
func runOverload(ctx context.Context, o options, rep *report) (failed int, err error) {
	raiseFileLimit()
	cfg := newOverloadConfig(o)
	iters, took := calibrateBurn(cpuChunk)
	cfg.ChunkIters, cfg.ChunkUs = iters, float64(took)/1e3
	o.progress("  overload: a unit of CPU work is %d iterations, %.1f µs at best", iters, cfg.ChunkUs)
	rep.Overload = &overloadReport{Config: cfg}
	// stop ends the run at cell, cut short or yet to start: the workload
	// under way, once its capacity is known, is kept with the cells it
	// finished, and the goals are checked on what was measured.
	stop := func(w *overloadWorkload, cell string) (int, error) {
		if w != nil {
			w.fillShares()
			rep.Overload.Workloads = append(rep.Overload.Workloads, *w)
		}
		rep.Overload.Goals = overloadGoals(rep.Overload.Workloads, cfg.timeout())
		if len(rep.Overload.Workloads) == 0 {
			rep.Overload = nil // nothing measured: no section
		}
		return failed, rep.stop(ctx, scenarioOverload, cell)
	}
	// measure runs cell c; cut: the run's stop cut it short, and it is
	// no result.
	measure := func(c overloadCell) (row overloadRow, cut bool) {
		row = measureOverloadCell(ctx, cfg, c, o.stderr)
		cut = row.Error != "" && ctx.Err() != nil
		// A baseline server that dies under overload is a result; the
		// run fails if anything else goes wrong, or if fasttimeout dies.
		if v, _ := findOverloadVariant(c.variant); !cut && row.Error != "" && (!row.Crashed || v.fasttimeout) {
			failed++
		}
		o.progress("  overload   %s", row.progressLine(cut))
		return row, cut
	}
	for _, wl := range cfg.Workloads {
		w := overloadWorkload{Name: wl, Nominal: cfg.nominalCapacity(wl)}
		est, err := estimateCapacity(ctx, cfg, wl, o.stderr)
		if err != nil {
			if ctx.Err() != nil {
				return stop(nil, wl+", capacity estimate")
			}
			o.progress("  overload   %s: the closed-loop estimate failed (%v), the nominal capacity is used", wl, err)
			est = w.Nominal
		}
		w.Estimate = est
		for _, n := range cfg.Sweep {
			c := overloadCell{workload: wl, variant: olConcurrency, concurrency: n,
				rate: sweepLoad * w.Estimate, measure: cfg.cell(), seed: sweepSeed}
			if ctx.Err() != nil {
				return stop(nil, c.String())
			}
			row, cut := measure(c)
			if cut {
				return stop(nil, c.String())
			}
			w.Sweep = append(w.Sweep, row)
		}
		w.pickCapacity()
		o.progress("  overload   %s: capacity %.0f/s (Concurrency=%d; first estimate %.0f/s closed-loop, nominal %.0f/s)",
			wl, w.Capacity, w.BestConcurrency, w.Estimate, w.Nominal)
		for li, load := range cfg.Loads {
			for _, name := range cfg.Variants {
				v, _ := findOverloadVariant(name)
				for _, honour := range v.handlerKinds(cfg.Smoke) {
					c := overloadCell{workload: wl, variant: name, honour: honour,
						concurrency: w.BestConcurrency, load: load, rate: load * w.Capacity, measure: cfg.cellAt(load), seed: uint64(li + 1)}
					if ctx.Err() != nil {
						return stop(&w, c.String())
					}
					row, cut := measure(c)
					if cut {
						return stop(&w, c.String())
					}
					w.Rows = append(w.Rows, row)
				}
			}
		}
		w.fillShares()
		rep.Overload.Workloads = append(rep.Overload.Workloads, w)
	}
	rep.Overload.Goals = overloadGoals(rep.Overload.Workloads, cfg.timeout())
	if cfg.SoakMs > 0 {
		for _, w := range rep.Overload.Workloads {
			for _, name := range soakVariants(cfg.Variants) {
				v, _ := findOverloadVariant(name)
				for _, honour := range v.handlerKinds(false) {
					c := overloadCell{workload: w.Name, variant: name, honour: honour, concurrency: w.BestConcurrency,
						load: 10, rate: 10 * w.Capacity, measure: time.Duration(cfg.SoakMs) * time.Millisecond, seed: 10}
					if ctx.Err() != nil {
						return failed, rep.stop(ctx, scenarioOverload, "soak: "+c.String())
					}
					row, cut := measure(c)
					if cut {
						return failed, rep.stop(ctx, scenarioOverload, "soak: "+c.String())
					}
					row.GoodputShare = share0(row.GoodputPerSec, w.Capacity)
					rep.Overload.Soak = append(rep.Overload.Soak, row)
				}
			}
		}
	}
	return failed, nil
}

// String names the cell as its progress line does: workload, load (or
// the sweep), variant and handler.
func (c overloadCell) String() string {
	r := c.row()
	return fmt.Sprintf("%s, %s, %s, %s", r.Workload, r.loadLabel(), r.name(), r.Handler)
}

// soakVariants are the selected variants with admission, which the soak
// is for; if there is none, all the selected ones. Without admission a
// server under 10x its capacity piles up handlers until it runs out of
// memory, which is no news.
func soakVariants(selected []string) []string {
	var out []string
	for _, name := range selected {
		if v, _ := findOverloadVariant(name); v.admission {
			out = append(out, name)
		}
	}
	if len(out) == 0 {
		return selected
	}
	return out
}

func share0(x, of float64) float64 {
	if of <= 0 {
		return 0
	}
	return x / of
}

// overloadEstimate is the expected wall time of the scenario.
func overloadEstimate(o options) time.Duration {
	if !slices.Contains(o.scenarios, scenarioOverload) {
		return 0
	}
	const perCell = 150 * time.Millisecond // child start, reading, killing
	cfg := newOverloadConfig(o)
	cell := perCell + o.olWarmup + o.olTimeout + overloadTailMargin
	kinds, soakKinds := 0, 0
	for _, name := range o.olVariants {
		v, _ := findOverloadVariant(name)
		kinds += len(v.handlerKinds(o.smoke))
	}
	for _, name := range soakVariants(o.olVariants) {
		v, _ := findOverloadVariant(name)
		soakKinds += len(v.handlerKinds(false))
	}
	// 1 + the sweep: the closed-loop estimate and the sweep's cells.
	perWorkload := time.Duration(1+len(o.olSweep)) * (cell + o.olCell)
	for _, load := range o.olLoads {
		perWorkload += time.Duration(kinds) * (cell + cfg.cellAt(load))
	}
	if o.olSoak > 0 {
		perWorkload += time.Duration(soakKinds) * (cell + o.olSoak)
	}
	return time.Duration(len(o.olWorkloads)) * perWorkload
}

// cellSnapshot is what the parent reads at the start and end of a cell's
// measured window and at its end.
type cellSnapshot struct {
	at            time.Time
	serverCPU     time.Duration // user + system time of the child, from /proc
	serverPeakRSS int64         // the child's peak RSS so far, bytes
	generatorCPU  time.Duration // of this process
	slots         [sharedSlots]uint64
}

// takeSnapshot reads the counters and the CPU times, then the clock: at is
// when they had been read, so that the child's last sample (slotSampled)
// is never after it, and its age never short. The peak RSS, no rate, comes
// last.
func takeSnapshot(srv *child, sh *shared) cellSnapshot {
	var s cellSnapshot
	for i := range s.slots {
		s.slots[i] = sh.slots[i].Load()
	}
	s.serverCPU = childCPU(srv)
	s.generatorCPU = time.Duration(cpuTime())
	s.at = time.Now()
	s.serverPeakRSS = childPeakRSS(srv) // a peak, not a rate
	return s
}

// clockTick is the unit of the CPU times in /proc/PID/stat (USER_HZ,
// 100 on Linux).
const clockTick = 10 * time.Millisecond

// childCPU returns the user and system time of the child srv: from /proc
// while it runs; once it has exited (a server that died in the cell) and
// /proc has forgotten it, from its rusage, what it used until it died.
// 0 if neither can be read.
func childCPU(srv *child) time.Duration {
	if cpu, ok := procCPU(srv.cmd.Process.Pid); ok {
		return cpu
	}
	select {
	case <-srv.exited:
		return srv.cmd.ProcessState.UserTime() + srv.cmd.ProcessState.SystemTime()
	default:
		return 0
	}
}

// procCPU returns the user and system time of process pid, from
// /proc/PID/stat, and whether it could be read.
func procCPU(pid int) (time.Duration, bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, false
	}
	// The command name, in parentheses, may hold spaces: count fields
	// after it. utime and stime are the 14th and 15th fields.
	i := strings.LastIndexByte(string(b), ')')
	f := strings.Fields(string(b[i+1:]))
	if i < 0 || len(f) < 13 {
		return 0, false
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, false
	}
	return time.Duration(ut+st) * clockTick, true
}

// childPeakRSS returns the peak resident set size of the child srv in
// bytes: from /proc while it runs; once it has exited (a server that died
// in the cell) and /proc has forgotten it, from its rusage (Maxrss, in
// KiB on Linux), its peak until it died. 0 if neither can be read.
func childPeakRSS(srv *child) int64 {
	if peak := procPeakRSS(srv.cmd.Process.Pid); peak > 0 {
		return peak
	}
	select {
	case <-srv.exited:
		if ru, ok := srv.cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
			return ru.Maxrss << 10
		}
	default:
	}
	return 0
}

// procPeakRSS returns the peak resident set size of process pid in bytes
// (VmHWM); 0 if it cannot be read.
func procPeakRSS(pid int) int64 {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err == nil {
				return kb << 10
			}
		}
	}
	return 0
}

// measureOverloadCell runs one cell in a fresh server child. A cell that
// fails has its Error set.
func measureOverloadCell(ctx context.Context, cfg overloadConfig, c overloadCell, stderr io.Writer) overloadRow {
	row := c.row()
	if err := c.measureInto(ctx, cfg, &row, stderr); err != nil {
		row.Error = err.Error()
	}
	return row
}

func (c overloadCell) row() overloadRow {
	return overloadRow{Workload: c.workload, Variant: c.variant, Handler: handlerName(c.honour),
		Concurrency: c.concurrency, Load: c.load, OfferedPerSec: c.rate, Seconds: c.measure.Seconds()}
}

func (c overloadCell) measureInto(ctx context.Context, cfg overloadConfig, row *overloadRow, stderr io.Writer) error {
	if c.variant != olConcurrency {
		row.Concurrency = 0
	}
	if c.rate <= 0 {
		return fmt.Errorf("no rate to offer")
	}
	warmup, tail := cfg.warmup(), cfg.tail()
	total := warmup + c.measure + tail
	// parseFlags checked the cells at the most the capacity can be; this
	// is the capacity measured.
	what := fmt.Sprintf("the %s cell at %vx", c.workload, c.load)
	if c.load == 0 {
		what = fmt.Sprintf("the %s sweep's cell", c.workload)
	}
	if err := checkArrivals(what, c.rate, total); err != nil {
		return err
	}
	ids := int(c.rate*total.Seconds()*1.5) + 4096
	f, err := os.CreateTemp("", "loadtest-overload-*")
	if err != nil {
		return err
	}
	defer f.Close()
	_ = os.Remove(f.Name()) // the descriptors keep it
	if err := f.Truncate(sharedSize(ids)); err != nil {
		return err
	}
	sh, err := mapShared(f)
	if err != nil {
		return err
	}
	defer func() { _ = sh.unmap() }()
	spec, err := json.Marshal(cfg.serverConfig(c))
	if err != nil {
		return err
	}
	srv, err := startChildFiles(scenarioOverload, string(spec), []*os.File{f}, stderr)
	if err != nil {
		return err
	}
	defer stopOverloadChild(srv.in, srv.exited, srv.cmd.Process.Kill)

	gen := newOpenLoop(srv.addr, cfg.timeout(), cfg.MaxConns)
	gen.work = newWindowWork(sh)
	sched := newArrivalSchedule(c.rate, cfg.Arrivals == "poisson", c.seed)
	start := time.Now()
	done := make(chan openLoopRun, 1)
	go func() { done <- gen.run(ctx, start, sched, warmup, c.measure, tail) }()
	wait := func(until time.Time) {
		select {
		case <-time.After(time.Until(until)):
		case <-ctx.Done():
		}
	}
	wait(start.Add(warmup))
	gen.work.mark()
	before := takeSnapshot(srv, sh)
	wait(start.Add(warmup + c.measure))
	gen.work.mark()
	after := takeSnapshot(srv, sh)
	run := <-done
	end := takeSnapshot(srv, sh)
	select {
	case <-srv.exited:
		row.Crashed = true
	default:
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	work, good := gen.work.window()
	row.fill(cellData{measure: c.measure, deadline: cfg.timeout(), arrivals: int64(max(run.end-run.first, 0)), tally: run.tally,
		sendLag: run.sendLag, work: work, goodWork: good, workers: run.maxWorker})
	row.fillServer(before, after, end)
	if row.Crashed {
		if why := sh.failure(); why != "" {
			return errors.New("the server died: " + why)
		}
		return errors.New("the server died")
	}
	if row.Good == 0 && row.ConnectErrors == row.Arrivals && row.Arrivals > 0 {
		return errors.New("no connection could be opened")
	}
	return nil
}

// How long a server child may take to exit once its input is closed, before
// it is killed: profileExitWait when it writes a CPU profile. A server in
// collapse runs the handlers it has queued on its one P before the
// goroutine that reads its input gets its turn (2.4 to 3.1 s after a 1 s
// cell at 10x), and one killed before its profile is written leaves an
// empty file.
const (
	childExitWait   = time.Second
	profileExitWait = 30 * time.Second
)

// stopOverloadChild ends a server child of the overload scenario: closing
// its input ends it (and makes it write its CPU profile, if asked); one
// that has not exited within childExitWait (profileExitWait) is killed.
// It returns once the child has exited.
func stopOverloadChild(in io.Closer, exited <-chan struct{}, kill func() error) {
	wait := childExitWait
	if os.Getenv(profileEnv) != "" {
		wait = profileExitWait
	}
	stopProcess(in, exited, wait, kill)
}

// fillServer sets what the server and the generator did in the measured
// window, and what was left running at the end.
func (r *overloadRow) fillServer(before, after, end cellSnapshot) {
	if wall := after.at.Sub(before.at); wall > 0 {
		r.ServerCPUPct = 100 * float64(after.serverCPU-before.serverCPU) / float64(wall)
		r.GeneratorCPUPct = 100 * float64(after.generatorCPU-before.generatorCPU) / float64(wall)
	}
	r.StillRunning = int64(end.slots[slotStarted] - end.slots[slotFinished])
	r.PeakInFlight = int64(end.slots[slotPeakInFlight])
	r.PeakGoroutines = int64(end.slots[slotPeakGoroutines])
	r.PeakHeapMiB = float64(end.slots[slotPeakHeap]) / (1 << 20)
	r.PeakRSSMiB = float64(end.serverPeakRSS) / (1 << 20)
	r.Limit = int64(after.slots[slotLimit])
	r.RefusedFull = int64(after.slots[slotRefusedFull] - before.slots[slotRefusedFull])
	r.RefusedTimeout = int64(after.slots[slotRefusedTimeout] - before.slots[slotRefusedTimeout])
	r.NoID = int64(end.slots[slotNoID])
	if s := end.slots[slotSampled]; s > 0 {
		r.SampleAgeMs = float64(end.at.UnixNano()-int64(s)) / 1e6
	}
}
