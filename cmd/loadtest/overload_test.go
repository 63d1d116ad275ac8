package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"testing/synctest"
	"time"

	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/fasthttputil"
)

func TestArrivalSchedule(t *testing.T) {
	t.Parallel()
	t.Run("uniform arrivals are evenly spaced", func(t *testing.T) {
		t.Parallel()
		s := newArrivalSchedule(4, false, 1)
		for i, want := range []time.Duration{0, 250 * time.Millisecond, 500 * time.Millisecond, 750 * time.Millisecond, time.Second} {
			if got := s.next(); got != want {
				t.Errorf("arrival %d at %v, want %v", i, got, want)
			}
		}
	})
	t.Run("poisson arrivals come at the rate, the same ones for a seed", func(t *testing.T) {
		t.Parallel()
		a, b, other := newArrivalSchedule(1000, true, 7), newArrivalSchedule(1000, true, 7), newArrivalSchedule(1000, true, 8)
		var last time.Duration
		for i := range 100000 {
			x := a.next()
			if y := b.next(); x != y {
				t.Fatalf("arrival %d: %v and %v from the same seed", i, x, y)
			}
			if x < last {
				t.Fatalf("arrival %d at %v, before the previous one at %v", i, x, last)
			}
			last = x
		}
		// 100 000 arrivals at 1000/s span 100 s; the standard deviation
		// of that sum is 0.3 %.
		if d := last.Seconds()/100 - 1; math.Abs(d) > 0.01 {
			t.Errorf("100000 arrivals span %v, want 100 s within 1 %%", last)
		}
		if first, again := other.next(), newArrivalSchedule(1000, true, 7).next(); first == again {
			t.Errorf("seeds 7 and 8 both start at %v", first)
		}
	})
}

func TestClassify(t *testing.T) {
	t.Parallel()
	const deadline = time.Second
	tests := []struct {
		name    string
		err     error
		stopped bool
		status  int
		echo    string
		notRun  bool // the server says it did not run the handler
		latency time.Duration
		want    outcome
	}{
		{name: "200 with its id in time", status: 200, echo: "7", latency: 10 * time.Millisecond, want: outGood},
		{name: "200 with its id after the deadline", status: 200, echo: "7", latency: deadline + time.Millisecond, want: outLate},
		{name: "200 with another id", status: 200, echo: "6", want: outMismatch},
		{name: "200 without an id", status: 200, want: outMismatch},
		{name: "503 without an id", status: 503, want: outRejected},
		{name: "504 with its id", status: 504, echo: "7", want: outTimeout},
		{name: "504 with its id, not run", status: 504, echo: "7", notRun: true, want: outNotRun},
		{name: "504 with another id", status: 504, echo: "8", want: outMismatch},
		{name: "504 with another id, not run", status: 504, echo: "8", notRun: true, want: outMismatch},
		{name: "500", status: 500, want: outOther},
		{name: "deadline of the connection", err: fmt.Errorf("read: %w", os.ErrDeadlineExceeded), want: outGiveUp},
		{name: "fasthttp's timeout", err: fasthttp.ErrTimeout, want: outGiveUp},
		{name: "closed by the server", err: io.EOF, want: outConnError},
		{name: "any error once the run ended", err: fasthttp.ErrTimeout, stopped: true, want: outCut},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var resp fasthttp.Response
			resp.SetStatusCode(tt.status)
			if tt.echo != "" {
				resp.Header.Set(requestIDHeader, tt.echo)
			}
			if tt.notRun {
				resp.Header.Set(notRunHeader, "1")
			}
			if got := classify(tt.err, tt.stopped, &resp, 7, tt.latency, deadline); got != tt.want {
				t.Errorf("outcome %d, want %d", got, tt.want)
			}
		})
	}
}

func TestOverloadRowFill(t *testing.T) {
	t.Parallel()
	ms := time.Millisecond
	d := cellData{
		measure: time.Second, deadline: time.Second,
		arrivals: 5, // ids 2 to 6 arrived in the window; 6 has no result
		tally: tallyOf(2, 7, []result{
			{id: 0, outcome: outGood, latency: 5 * ms}, // warm-up
			{id: 1, outcome: outGiveUp},                // warm-up, worked on in the window
			{id: 2, outcome: outGood, latency: 10 * ms, lag: ms},
			{id: 3, outcome: outGood, latency: 30 * ms, lag: 4 * ms},
			{id: 4, outcome: outRejected, latency: ms, lag: 2 * ms},
			{id: 5, outcome: outGiveUp, lag: 3 * ms},
			{id: 7, outcome: outGood, latency: 20 * ms, lag: 50 * ms}, // tail
		}),
		// In the window: 20 units for id 1 and 12 for id 5, given up; 30
		// each for ids 2 and 3, and 5 for id 7, answered.
		work: 97, goodWork: 65,
		sendLag: histogramOf(int64(ms), int64(2*ms)),
		workers: 3,
	}
	var r overloadRow
	r.fill(d)
	lat := [4]float64{r.P50Ms, r.P99Ms, r.SendLagP99Ms, r.PickupLagP99Ms}
	r.P50Ms, r.P99Ms, r.SendLagP99Ms, r.PickupLagP99Ms = 0, 0, 0, 0
	want := overloadRow{Arrivals: 5, Connections: 3, Good: 2, Rejected: 1, GiveUps: 1, Cut: 1,
		GoodputPerSec: 2, SentPerSec: 5,
		Work: 97, Wasted: 32, WastedShare: 32.0 / 97}
	if !reflect.DeepEqual(r, want) {
		t.Errorf("got  %+v\nwant %+v", r, want)
	}
	for i, w := range []float64{10, 30, 2, 4} {
		if dev := lat[i]/w - 1; math.Abs(dev) > 0.001 {
			t.Errorf("latency %d: %v ms, want %v within 0.1%%", i, lat[i], w)
		}
	}
}

// tallyOf counts the results of ids first to end-1, as the generator
// does those of the measured arrivals.
func tallyOf(first, end int, results []result) tally {
	var t tally
	for _, r := range results {
		if int(r.id) >= first && int(r.id) < end {
			t.add(r)
		}
	}
	return t
}

func TestGeneratorBehind(t *testing.T) {
	t.Parallel()
	ms := int64(time.Millisecond)
	tests := []struct {
		name            string
		dropped, unsent int   // of 200 arrivals
		lag             int64 // the generator's, handing requests to workers
		pickup          int64 // the workers', picking them up
		want            bool
	}{
		{name: "on time", dropped: 1, unsent: 1, lag: 99 * ms, pickup: 99 * ms},
		{name: "dropping", dropped: 3, lag: ms, want: true},
		{name: "picking up after the deadline", unsent: 3, lag: ms, want: true},
		{name: "dropping and picking up late", dropped: 2, unsent: 1, lag: ms, want: true},
		{name: "late", lag: 102 * ms, want: true},
		{name: "workers late", lag: ms, pickup: 102 * ms, want: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			d := cellData{measure: time.Second, deadline: time.Second, arrivals: 200, sendLag: histogramOf(tt.lag)}
			var results []result
			for id := range 200 {
				o := outGood
				switch {
				case id < tt.dropped:
					o = outDropped
				case id < tt.dropped+tt.unsent:
					o = outUnsent
				}
				res := result{id: uint32(id), outcome: o, latency: time.Millisecond, lag: time.Duration(tt.pickup)}
				if o == outDropped {
					res.lag = 0 // never picked up
				}
				results = append(results, res)
			}
			d.tally = tallyOf(0, 200, results)
			var r overloadRow
			r.fill(d)
			if r.GeneratorBehind != tt.want {
				t.Errorf("behind %v, want %v (dropped %d, unsent %d, lag p99 %v ms, workers' %v ms)",
					r.GeneratorBehind, tt.want, r.Dropped, r.Unsent, r.SendLagP99Ms, r.PickupLagP99Ms)
			}
			if dev := r.PickupLagP99Ms - float64(tt.pickup)/1e6; math.Abs(dev) > 0.001*float64(tt.pickup)/1e6+1e-5 {
				t.Errorf("workers' lag p99 %v ms, want %v ms", r.PickupLagP99Ms, float64(tt.pickup)/1e6)
			}
			// The generator's failures are not the server's: not given
			// up, not sent.
			if r.Dropped != int64(tt.dropped) || r.Unsent != int64(tt.unsent) || r.GiveUps != 0 ||
				r.SentPerSec != float64(200-tt.dropped-tt.unsent) {
				t.Errorf("dropped %d, unsent %d, given up %d, sent %v/s; want %d, %d, 0, %d/s",
					r.Dropped, r.Unsent, r.GiveUps, r.SentPerSec, tt.dropped, tt.unsent, 200-tt.dropped-tt.unsent)
			}
		})
	}
}

func TestSoakVariants(t *testing.T) {
	t.Parallel()
	if got := soakVariants(overloadVariantNames(true)); !slices.Equal(got, []string{olRaceAdaptive, olRaceQueue, olCoopAdaptive}) {
		t.Errorf("soak of all variants: %v, want those with admission", got)
	}
	if got := soakVariants([]string{olBare, olRace}); !slices.Equal(got, []string{olBare, olRace}) {
		t.Errorf("soak without a variant with admission: %v, want the selected ones", got)
	}
}

func TestPickCapacity(t *testing.T) {
	t.Parallel()
	w := overloadWorkload{Estimate: 400, Sweep: []overloadRow{
		{Concurrency: 8, GoodputPerSec: 300},
		{Concurrency: 16, GoodputPerSec: 550},
		{Concurrency: 32, GoodputPerSec: 900, Error: "failed"},
		{Concurrency: 64, GoodputPerSec: 500},
	}}
	w.pickCapacity()
	if w.Capacity != 550 || w.BestConcurrency != 16 || w.Sweep[1].GoodputShare != 1 || w.Sweep[3].GoodputShare != 500.0/550 {
		t.Errorf("capacity %v at %d, shares %v and %v; want 550 at 16, 1 and 0.91",
			w.Capacity, w.BestConcurrency, w.Sweep[1].GoodputShare, w.Sweep[3].GoodputShare)
	}
	failed := overloadWorkload{Estimate: 400, Sweep: []overloadRow{{Concurrency: 8, Error: "failed"}}}
	failed.pickCapacity()
	if failed.Capacity != 400 || failed.BestConcurrency != 64 {
		t.Errorf("without a sweep: capacity %v at %d; want the estimate, 400, at 64", failed.Capacity, failed.BestConcurrency)
	}
}

func TestOverloadGoals(t *testing.T) {
	t.Parallel()
	row := func(variant, handler string, load, share, wasted, p99 float64) overloadRow {
		return overloadRow{Variant: variant, Handler: handler, Load: load, GoodputShare: share,
			GoodputPerSec: 100 * share, Good: int64(300 * share), WastedShare: wasted, P99Ms: p99}
	}
	w := overloadWorkload{Name: workloadCPU, Capacity: 100, Rows: []overloadRow{
		row(olTWCH, "ignores", 4, 0.25, 0.8, 900),
		row(olRace, "honours", 0.5, 0.5, 0, 10),
		row(olRaceAdaptive, "honours", 0.5, 0.5, 0, 10.5),
		row(olRaceAdaptive, "honours", 2, 0.95, 0.02, 120),
		row(olRaceAdaptive, "honours", 4, 0.85, 0.05, 200),
		row(olRaceAdaptive, "honours", 10, 0.92, 0.12, 150),
		row(olRaceAdaptive, "ignores", 4, 0.91, 0.01, 300),
		{Variant: olRaceAdaptive, Handler: "ignores", Load: 10, GoodputShare: 1, Error: "failed"},
	}}
	w.Rows[2].Rejected = 0
	got := overloadGoals([]overloadWorkload{w}, time.Second)
	want := []goalRow{
		{Workload: workloadCPU, Variant: olRaceAdaptive, Handler: "honours", Checks: []string{
			"PASS 0.95x", "FAIL 0.85x", "PASS 0.92x", "PASS 3.4x", "FAIL 12 %", "PASS 200 ms", "PASS 0", "PASS 1.05x"}},
		{Workload: workloadCPU, Variant: olRaceAdaptive, Handler: "ignores", Checks: []string{
			"–", "PASS 0.91x", "–", "PASS 3.6x", "PASS 1 %", "FAIL 300 ms", "–", "–"}},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got  %q\nwant %q", got, want)
	}
	if len(want[0].Checks) != len(goalNames) {
		t.Errorf("%d checks, %d names", len(want[0].Checks), len(goalNames))
	}
}

func TestCellAt(t *testing.T) {
	t.Parallel()
	cfg := overloadConfig{CellMs: 3000}
	for _, tt := range []struct {
		load float64
		want time.Duration
	}{
		{0.25, 48 * time.Second}, {0.5, 12 * time.Second}, {0.8, 4687 * time.Millisecond},
		{1, 3 * time.Second}, {4, 3 * time.Second}, {10, 3 * time.Second},
	} {
		if got := cfg.cellAt(tt.load); got != tt.want {
			t.Errorf("cellAt(%v) = %v, want %v", tt.load, got, tt.want)
		}
	}
	// The estimate counts the light cells' longer time: two loads, one
	// variant with one kind of handler, one workload, a sweep of one.
	o := options{scenarios: []string{scenarioOverload}, olVariants: []string{olBare}, olWorkloads: []string{workloadCPU},
		olLoads: []float64{0.5, 2}, olSweep: []int{16}, olCell: 3 * time.Second, olWarmup: 2 * time.Second, olTimeout: time.Second}
	perCell := 150*time.Millisecond + 2*time.Second + time.Second + overloadTailMargin
	if got, want := overloadEstimate(o), 4*perCell+2*3*time.Second+12*time.Second+3*time.Second; got != want {
		t.Errorf("overloadEstimate = %v, want %v", got, want)
	}
}

func TestParseFlagsOverload(t *testing.T) {
	t.Parallel()
	o, err := parseFlags(nil)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(o.olLoads, []float64{0.5, 1, 2, 4, 10}) || !slices.Equal(o.olSweep, []int{8, 16, 32, 64, 128}) ||
		o.olCell != 3*time.Second || o.olWarmup != 2*time.Second || o.olTimeout != time.Second || o.olSoak != 0 ||
		!slices.Equal(o.olWorkloads, allWorkloads) || slices.Contains(o.olVariants, olCoop) || !slices.Contains(o.olVariants, olCoopAdaptive) ||
		!slices.Contains(o.scenarios, scenarioOverload) {
		t.Errorf("defaults: %+v", o)
	}
	o, err = parseFlags([]string{"-smoke", "-overload-loads", "10,0.5,2", "-overload-variants", "fasttimeout-cooperative,fasthttp-bare"})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(o.olLoads, []float64{0.5, 2, 10}) || !slices.Equal(o.olSweep, []int{16}) || o.olCell != 100*time.Millisecond ||
		o.olTimeout != 100*time.Millisecond || !slices.Equal(o.olVariants, []string{olBare, olCoop}) {
		t.Errorf("smoke with loads and variants: %v, %v, %v, %v, %v", o.olLoads, o.olSweep, o.olCell, o.olTimeout, o.olVariants)
	}
	requireFlagErrors(t, [][]string{
		{"-overload-loads", "0"}, {"-overload-loads", "2,x"}, {"-overload-loads", "101"}, {"-overload-sweep", "0"},
		{"-overload-variants", "fasttimeout-race-context"}, {"-overload-workloads", "gpu"}, {"-arrivals", "burst"},
		{"-max-conns", "0"}, {"-cell", "0s"}, {"-overload-timeout", "1ms"}, {"-db-queries", "0"}, {"-soak", "-1s"},
	})
}

// A light cell measures -cell ÷ load², and none may take longer than
// maxWindow: a load that would is refused before anything runs, with the
// least load and the longest -cell that fit.
func TestParseFlagsOverload_light_cells_are_bounded(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		args    []string
		longest time.Duration // the lightest cell's measured time
		wantErr string
	}{
		{args: nil, longest: 12 * time.Second},
		{args: []string{"-overload-loads", "0.03"}, longest: 3333333 * time.Millisecond},
		{args: []string{"-overload-loads", "0.02,4", "-cell", "1s"}, longest: 2500 * time.Second},
		{args: []string{"-overload-loads", "0.01", "-cell", "360ms"}, longest: time.Hour},
		{args: []string{"-overload-loads", "1", "-cell", "1h"}, longest: time.Hour},
		{args: []string{"-overload-loads", "0.01"},
			wantErr: "-overload-loads 0.01 with -cell 3s measures a cell for 8h20m0s (-cell ÷ load² below 1x), more than 1h: offer at least 0.03, or a -cell of at most 360ms"},
		{args: []string{"-overload-loads", "4,0.02,10"},
			wantErr: "-overload-loads 0.02 with -cell 3s measures a cell for 2h5m0s"},
		{args: []string{"-overload-loads", "0.99", "-cell", "1h"},
			wantErr: "offer at least 1, or a -cell of at most 58m48.36s"},
		{args: []string{"-smoke", "-overload-loads", "0.005"}, wantErr: "-overload-loads wants a comma-separated list of decimal multiples of the capacity between 0.01 and 100"},
	} {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			t.Parallel()
			o, ok := parseRow(t, tt.args, tt.wantErr)
			if !ok {
				return
			}
			if got := newOverloadConfig(o).cellAt(o.olLoads[0]); got != tt.longest {
				t.Errorf("the lightest cell measures %v, want %v", got, tt.longest)
			}
		})
	}
}

// A cell may schedule maxCellArrivals, and not one more. (parseFlags checks
// each cell at the most its workload's capacity can be, measureInto again
// at the capacity measured.)
func TestCheckArrivals(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		rate    float64
		total   time.Duration
		wantErr string
	}{
		{rate: 10000, total: 3000 * time.Second},
		{rate: 10000, total: 3000*time.Second + time.Millisecond,
			wantErr: "the cpu cell at 10x: up to 10000 arrivals a second for 50m0.001s (with -cell-warmup and -overload-timeout) schedules 30.0 million in a cell, more than 30 million: offer less or measure shorter"},
		{rate: 1e9, total: time.Second, wantErr: "schedules 1000.0 million in a cell"},
	} {
		err := checkArrivals("the cpu cell at 10x", tt.rate, tt.total)
		switch {
		case tt.wantErr == "" && err != nil:
			t.Errorf("%v/s for %v: %v, want it to run", tt.rate, tt.total, err)
		case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
			t.Errorf("%v/s for %v: error %v, want one containing %q", tt.rate, tt.total, err, tt.wantErr)
		}
	}
}

// overloadTestReport is a small report of the overload scenario.
func overloadTestReport() report {
	return report{Overload: &overloadReport{
		Config: overloadConfig{TimeoutMs: 1000, WarmupMs: 2000, CellMs: 3000, SoakMs: 60000, Arrivals: "poisson",
			ChunkIters: 25000, ChunkUs: 50, Chunks: 30, DBSlots: 20, DBQueryMs: 5, DBQueries: 4, Loads: []float64{0.5, 4},
			Variants: []string{olBare, olRaceAdaptive}, CountsNotSent: true},
		Workloads: []overloadWorkload{{
			Name: workloadCPU, Nominal: 650, Estimate: 600, Capacity: 580, BestConcurrency: 32,
			Sweep: []overloadRow{{Variant: olConcurrency, Handler: "ignores", Concurrency: 32, OfferedPerSec: 2400, GoodputPerSec: 580, GoodputShare: 1}},
			Rows: []overloadRow{
				{Variant: olBare, Handler: "ignores", Load: 0.5, Seconds: 12, OfferedPerSec: 290, SentPerSec: 288, GoodputPerSec: 288, GoodputShare: 0.5, P50Ms: 4.5, P99Ms: 15, Work: 10},
				{Variant: olBare, Handler: "ignores", Load: 4, OfferedPerSec: 2320, SentPerSec: 2300, GoodputPerSec: 6, GoodputShare: 0.01,
					WastedShare: 0.97, P50Ms: 900, P99Ms: 990, GiveUps: 4000, ConnectErrors: 12, Dropped: 3, Unsent: 4, Cut: 1, Work: 100},
				{Variant: olConcurrency, Handler: "ignores", Concurrency: 32, Load: 4, OfferedPerSec: 2320, GoodputPerSec: 590, GoodputShare: 1.02, Rejected: 3000},
				{Variant: olRaceAdaptive, Handler: "honours", Load: 4, Error: "the server died: serve: accept4: too many open files", Crashed: true, GoodputPerSec: 100},
				{Variant: olCoopAdaptive, Handler: "honours", Load: 4, Error: "no connection could be opened"},
			},
		}},
		Goals: []goalRow{{Workload: workloadCPU, Variant: olRaceAdaptive, Handler: "honours", Checks: []string{"–", "PASS 0.95x"}}},
		Soak:  []overloadRow{{Workload: workloadCPU, Variant: olRaceAdaptive, Handler: "ignores", Load: 10, GoodputPerSec: 560, GoodputShare: 0.97, PeakRSSMiB: 40, PeakHeapMiB: 12, PeakGoroutines: 300, PeakInFlight: 20}},
	}}
}

func TestWriteMarkdownOverload(t *testing.T) {
	t.Parallel()
	var b bytes.Buffer
	if err := writeMarkdown(&b, overloadTestReport()); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"### Overload (open-loop poisson arrivals; server on one P with a 1000 ms timeout; clients give up after 1000 ms; each cell 3000 ms measured (12000 ms at 0.5x) after 2000 ms of warm-up",
		"**cpu**, 30 units of 25000 iterations of work (50 µs each at best here), 1.50 ms a request",
		"Variants: **fasthttp-bare**: fasthttp, no timeout; **fasttimeout-race-adaptive**: fasttimeout racing, AdaptiveConcurrency.",
		"#### cpu: capacity 580/s (fasthttp Server.Concurrency=32, the best of the sweep at 4× the first estimate: 600/s closed-loop from 32 connections; on a core of its own 650/s)",
		"| 32 | fasthttp-Concurrency=32 | ignores | 2400 | 0 | 580 | 1.00 |",
		"| 0.5x | fasthttp-bare | ignores | 290 | 288 | 288 | 0.50 | 0 % | 4.50 ms | 15 ms | 0 | 0 | 0 | 0 | 0 |",
		"| 503 | 504 | gave up | connect errors | not sent | other |",
		"| 4x | fasthttp-bare | ignores | 2320 | 2300 | 6 | 0.01 | 97 % | 900 ms | 990 ms | 0 | 0 | 4000 | 12 | 7 | 1 |",
		"| 4x | fasthttp-Concurrency=32 | ignores | 2320 | 0 | 590 | 1.02 | – | – | – | 3000 |",
		"| 4x | fasttimeout-race-adaptive (**crashed**) | honours | 0 | 0 | 100 |",
		"Crashed: fasttimeout-race-adaptive (honours) at 4x: the server died: serve: accept4: too many open files.",
		"| 4x | fasttimeout-cooperative-adaptive | honours | failed: no connection could be opened |",
		"| cpu | fasttimeout-race-adaptive | honours | – | PASS 0.95x |",
		"#### Soak: 60000 ms at 10x",
		"| cpu | fasttimeout-race-adaptive | ignores | 560/s | 0.97 | 0 | 40 MiB | 12 MiB | 300 | 20 | 0 | no |",
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("markdown lacks %q:\n%s", want, b.String())
		}
	}
}

func TestWriteChartOverload(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "overload.png")
	if err := writeChart(path, overloadTestReport()); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(b, []byte("\x89PNG")) {
		t.Errorf("%s is not a PNG", path)
	}
}

// sharedForTest maps a fresh file of shared counters for request ids 0 to
// ids-1.
func sharedForTest(t *testing.T, ids int) *shared {
	t.Helper()
	f, err := os.CreateTemp(t.TempDir(), "shared")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(sharedSize(ids)); err != nil {
		t.Fatal(err)
	}
	sh, err := mapShared(f)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sh.unmap() })
	return sh
}

// serveInMemory serves s over an in-memory listener and returns a function
// that sends one GET with the request id (none if empty) and returns the
// response.
func serveInMemory(t *testing.T, s *fasthttp.Server) func(id string) *fasthttp.Response {
	t.Helper()
	ln := fasthttputil.NewInmemoryListener()
	served := make(chan error, 1)
	go func() { served <- s.Serve(ln) }()
	t.Cleanup(func() {
		if err := s.Shutdown(); err != nil {
			t.Error(err)
		}
		if err := <-served; err != nil {
			t.Error(err)
		}
	})
	return func(id string) *fasthttp.Response {
		t.Helper()
		conn, err := ln.Dial()
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		req := "GET /work HTTP/1.1\r\nHost: x\r\n"
		if id != "" {
			req += requestIDHeader + ": " + id + "\r\n"
		}
		if _, err := io.WriteString(conn, req+"\r\n"); err != nil {
			t.Fatal(err)
		}
		var resp fasthttp.Response
		if err := resp.Read(bufio.NewReader(conn)); err != nil {
			t.Fatal(err)
		}
		return &resp
	}
}

func TestOverloadServer(t *testing.T) {
	t.Parallel()
	t.Run("cpu handler ignoring its context does every unit, for its id", func(t *testing.T) {
		t.Parallel()
		sh := sharedForTest(t, 16)
		s, err := overloadServer(overloadServerConfig{Variant: olBare, Workload: workloadCPU, Chunks: 3, ChunkIters: 100, TimeoutMs: 1000}, sh, nil)
		if err != nil {
			t.Fatal(err)
		}
		get := serveInMemory(t, s)
		resp := get("5")
		if resp.StatusCode() != 200 || string(resp.Header.Peek(requestIDHeader)) != "5" {
			t.Errorf("status %d, id %q; want 200, 5", resp.StatusCode(), resp.Header.Peek(requestIDHeader))
		}
		if w, total := sh.work[5].Load(), sh.slots[slotWork].Load(); w != 3 || total != 3 {
			t.Errorf("work for id 5: %d, in all %d; want 3, 3", w, total)
		}
		get("")
		if n, started := sh.slots[slotNoID].Load(), sh.slots[slotStarted].Load(); n != 1 || started != 2 {
			t.Errorf("%d requests without id, %d started; want 1, 2", n, started)
		}
		if over := sh.slots[slotOverflow].Load(); over != 3 {
			t.Errorf("%d units beyond the ids; want the 3 of the request without id", over)
		}
	})
	t.Run("downstream handler honouring its context gives up at its deadline", func(t *testing.T) {
		t.Parallel()
		sh := sharedForTest(t, 16)
		const queries = 1000 // of 1 ms each, on one slot: a second at least
		s, err := overloadServer(overloadServerConfig{Variant: olRace, Workload: workloadDB, Honour: true,
			DBSlots: 1, DBQueries: queries, DBQueryUs: 1000, TimeoutMs: 20}, sh, nil)
		if err != nil {
			t.Fatal(err)
		}
		get := serveInMemory(t, s)
		resp := get("9")
		if resp.StatusCode() != 504 || string(resp.Header.Peek(requestIDHeader)) != "9" {
			t.Errorf("status %d, id %q; want the timeout answer, 504, with id 9", resp.StatusCode(), resp.Header.Peek(requestIDHeader))
		}
		for end := time.Now().Add(10 * time.Second); sh.slots[slotFinished].Load() < 1; {
			if time.Now().After(end) {
				t.Fatal("the handler did not return within 10 s")
			}
			time.Sleep(time.Millisecond)
		}
		if w := sh.work[9].Load(); w >= queries {
			t.Errorf("%d queries done; want fewer than %d: the handler gives up", w, queries)
		}
	})
	t.Run("a handler without a context cannot honour it", func(t *testing.T) {
		t.Parallel()
		_, err := overloadServer(overloadServerConfig{Variant: olTWCH, Workload: workloadCPU, Honour: true, Chunks: 1, ChunkIters: 1, TimeoutMs: 1000}, sharedForTest(t, 1), nil)
		if err == nil || !strings.Contains(err.Error(), "no context") {
			t.Errorf("error %v, want one saying there is no context", err)
		}
	})
}

// serveLoopback serves h on 127.0.0.1 until the test ends and returns
// its address.
func serveLoopback(t *testing.T, h fasthttp.RequestHandler) string {
	t.Helper()
	s := &fasthttp.Server{Handler: h}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- s.Serve(ln) }()
	t.Cleanup(func() {
		if err := s.Shutdown(); err != nil {
			t.Error(err)
		}
		if err := <-served; err != nil {
			t.Error(err)
		}
	})
	return ln.Addr().String()
}

// echoID answers 200 with the request's id, as the overload servers do.
func echoID(ctx *fasthttp.RequestCtx) {
	ctx.Response.Header.SetBytesV(requestIDHeader, ctx.Request.Header.Peek(requestIDHeader))
}

// A request that a worker of the generator picks up only after its
// deadline (the generator's ticks ran late, or the worker did) is never
// sent: its client would have given up before the server could see it.
// That is the load test's failure, not a give-up or a connect error of the
// server's.
func TestLoadWorker_a_request_picked_up_after_its_deadline_is_unsent(t *testing.T) {
	t.Parallel()
	addr := serveLoopback(t, echoID)
	const deadline = 30 * time.Second // the on-time request has all the time it needs
	for _, tt := range []struct {
		name string
		open bool // the worker's connection is open: it has sent an on-time request
	}{
		{name: "on an open connection", open: true},
		{name: "needing a new connection"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			g := newOpenLoop(addr, deadline, 1)
			var results []result
			g.observe = func(r result) { results = append(results, r) }
			w := &loadWorker{g: g}
			defer g.shutdown()
			defer w.drop(false)
			if tt.open {
				w.send(arrival{id: 1, at: time.Now()})
				if got := results[0].outcome; got != outGood || w.conn == nil {
					t.Fatalf("on-time request: outcome %d, connection %v; want good, open", got, w.conn)
				}
			}
			w.send(arrival{id: 2, at: time.Now().Add(-2 * deadline)})
			if got := results[len(results)-1]; got.id != 2 || got.outcome != outUnsent || got.lag < 2*deadline {
				t.Errorf("request picked up %v after its deadline: id %d, outcome %d, picked up %v late; want id 2, unsent (%d), %v late at least",
					deadline, got.id, got.outcome, got.lag, outUnsent, 2*deadline)
			}
		})
	}
}

// unacceptingAddr returns the address of a listener on 127.0.0.1 that
// never accepts, its queue of one connection full: a dial to it hangs
// until it is given up.
func unacceptingAddr(t *testing.T) string {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Listen(fd, 0); err != nil { // one connection queued at most
		t.Fatal(err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(sa.(*syscall.SockaddrInet4).Port))
	queued, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = queued.Close() })
	return addr
}

// A dial that the end of the run cancels was still out, as a request
// waiting for its answer then is: cut, not a connection the server failed
// to accept.
func TestLoadWorker_a_dial_cancelled_at_the_end_is_cut(t *testing.T) {
	t.Parallel()
	g := newOpenLoop(unacceptingAddr(t), 30*time.Second, 1)
	var results []result
	g.observe = func(r result) { results = append(results, r) } // before sent is closed
	w := &loadWorker{g: g}
	sent := make(chan struct{})
	go func() {
		defer close(sent)
		w.send(arrival{id: 1, at: time.Now()})
	}()
	g.shutdown() // before the dial or during it: either way the end cancels it
	select {
	case <-sent:
	case <-time.After(30 * time.Second):
		t.Fatal("the dial was not cancelled within 30 s")
	}
	if len(results) != 1 || results[0].outcome != outCut {
		t.Errorf("results %+v, want one, cut (%d)", results, outCut)
	}
}

// A run lasts until the end of its tail, whenever its last arrival came.
// Below 10 arrivals a second the last one before the end can come more
// than the tail's margin (100 ms) before it, and the window's last
// requests, still out then, were cut rather than answered or given up.
func TestOpenLoop_a_slow_schedule_runs_to_its_end(t *testing.T) {
	t.Parallel()
	addr := serveLoopback(t, echoID)
	// One arrival a minute: id 0 at 0, in the window; id 1 at 60 s, after
	// the end at 31 s. The test ends the run once id 0 has its result.
	gen := newOpenLoop(addr, 30*time.Second, 64)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	gen.observe = func(r result) {
		if r.id == 0 {
			cancel()
		}
	}
	run := gen.run(ctx, time.Now(), newArrivalSchedule(1.0/60, false, 0), 0, time.Second, 30*time.Second)
	if run.first != 0 || run.end != 1 || run.tally.recorded() != 1 {
		t.Fatalf("measured ids %d to %d, %d results; want id 0 and its result", run.first, run.end, run.tally.recorded())
	}
	if got := run.tally.counts[outGood]; got != 1 {
		t.Errorf("the window's request: outcomes %v, want good (%d)", run.tally.counts, outGood)
	}
}

func TestOpenLoop(t *testing.T) {
	t.Parallel()
	// Request i is answered 200 with its id if i%3 == 0, 503 if 1, and
	// 200 with the next id if 2: an answer meant for another request.
	addr := serveLoopback(t, func(ctx *fasthttp.RequestCtx) {
		id, err := fasthttp.ParseUint(ctx.Request.Header.Peek(requestIDHeader))
		if err != nil {
			ctx.SetStatusCode(400)
			return
		}
		switch id % 3 {
		case 0:
			ctx.Response.Header.Set(requestIDHeader, strconv.Itoa(id))
		case 1:
			ctx.Response.Header.Set(requestIDHeader, strconv.Itoa(id))
			ctx.SetStatusCode(503)
		case 2:
			ctx.Response.Header.Set(requestIDHeader, strconv.Itoa(id+1))
		}
	})

	// Uniform arrivals at 200/s with no warm-up and a window of 100 ms:
	// ids 0 to 19 are measured. The run ends once they are all answered.
	const measured = 20
	gen := newOpenLoop(addr, 30*time.Second, 64)
	var mu sync.Mutex
	seen := map[uint32]bool{}
	var results []result
	all := make(chan struct{})
	gen.observe = func(r result) {
		mu.Lock()
		defer mu.Unlock()
		results = append(results, r)
		if r.id < measured && !seen[r.id] {
			seen[r.id] = true
			if len(seen) == measured {
				close(all)
			}
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan openLoopRun, 1)
	go func() {
		done <- gen.run(ctx, time.Now(), newArrivalSchedule(200, false, 0), 0, 100*time.Millisecond, time.Minute)
	}()
	select {
	case <-all:
	case <-time.After(30 * time.Second):
		t.Error("the measured requests were not all answered within 30 s")
	}
	cancel()
	run := <-done
	if run.first != 0 || run.end != measured {
		t.Fatalf("measured ids %d to %d, want 0 to %d", run.first, run.end, measured)
	}
	got := map[uint32][]outcome{}
	mu.Lock()
	defer mu.Unlock()
	for _, r := range results {
		if r.id < measured {
			got[r.id] = append(got[r.id], r.outcome)
			if r.outcome == outGood && r.latency <= 0 {
				t.Errorf("id %d: good, with latency %v", r.id, r.latency)
			}
		}
	}
	for id := range uint32(measured) {
		want := []outcome{[]outcome{outGood, outRejected, outMismatch}[id%3]}
		if !slices.Equal(got[id], want) {
			t.Errorf("id %d: outcomes %v, want %v", id, got[id], want)
		}
	}
	if run.arrivals < measured {
		t.Errorf("%d arrivals, want at least %d", run.arrivals, measured)
	}
	// The tally counts the measured ones only: 7 good (ids 0, 3, ... 18),
	// 7 rejected, 6 crossed.
	c := run.tally.counts
	if c[outGood] != 7 || c[outRejected] != 7 || c[outMismatch] != 6 || run.tally.recorded() != measured || run.tally.latencies.count() != 7 {
		t.Errorf("tally %v with %d latencies; want 7 good, 7 rejected, 6 mismatched, nothing else, 7 latencies", c, run.tally.latencies.count())
	}
}

func TestRender(t *testing.T) {
	t.Parallel()
	var saved bytes.Buffer
	if err := writeReport(options{json: true}, overloadTestReport(), &saved); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "report.json")
	if err := os.WriteFile(path, saved.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	var direct, rendered bytes.Buffer
	if err := writeMarkdown(&direct, overloadTestReport()); err != nil {
		t.Fatal(err)
	}
	if err := run(context.Background(), options{render: path}, &rendered); err != nil {
		t.Fatal(err)
	}
	if rendered.String() != direct.String() {
		t.Errorf("rendered from JSON:\n%s\nwant as written directly:\n%s", rendered.String(), direct.String())
	}
	if err := run(context.Background(), options{render: filepath.Join(t.TempDir(), "none.json")}, io.Discard); err == nil {
		t.Error("rendering a missing file: no error")
	}
}

// The saved reports in testdata are what -render writes from their JSON,
// as the README says (go run . -render testdata/overload.json >
// testdata/overload.md): a change to the report's format is made to them
// too.
func TestRender_the_saved_reports(t *testing.T) {
	t.Parallel()
	for _, name := range []string{"overload", "overload-10x", "overload-half", "overload-soak-queuestart"} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			want, err := os.ReadFile(filepath.Join("testdata", name+".md"))
			if err != nil {
				t.Fatal(err)
			}
			var got bytes.Buffer
			if err := run(context.Background(), options{render: filepath.Join("testdata", name+".json")}, &got); err != nil {
				t.Fatal(err)
			}
			if got.String() != string(want) {
				t.Errorf("-render testdata/%s.json writes:\n%s\nwant testdata/%s.md:\n%s", name, got.String(), name, want)
			}
		})
	}
}

// A report from before the generator counted the arrivals it did not send
// (its JSON has no "unsent") shows none as not counted, rather than as
// zero: its generator sent the arrivals it picked up after their
// deadline, and they are among its give-ups and connect errors.
func TestWriteMarkdownOverload_a_report_from_before_not_sent(t *testing.T) {
	t.Parallel()
	var saved bytes.Buffer
	if err := writeReport(options{json: true}, overloadTestReport(), &saved); err != nil {
		t.Fatal(err)
	}
	var doc any
	if err := json.Unmarshal(saved.Bytes(), &doc); err != nil {
		t.Fatal(err)
	}
	var drop func(any)
	drop = func(v any) { // the keys the old generator did not write
		switch v := v.(type) {
		case map[string]any:
			delete(v, "unsent")
			delete(v, "worker_lag_p99_ms")
			delete(v, "counts_not_sent")
			for _, x := range v {
				drop(x)
			}
		case []any:
			for _, x := range v {
				drop(x)
			}
		}
	}
	drop(doc)
	old, err := json.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(old, []byte(`"unsent"`)) || !bytes.Contains(old, []byte(`"dropped":3`)) {
		t.Fatalf("the report without unsent:\n%s", old)
	}
	path := filepath.Join(t.TempDir(), "old.json")
	if err := os.WriteFile(path, old, 0o600); err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	if err := run(context.Background(), options{render: path}, &b); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"Not sent: not counted by this run's generator, which sent the arrivals it picked up after their deadline (among gave up and connect errors) and counted those it dropped for want of a connection in other;",
		"| 503 | 504 | gave up | connect errors | not sent | other |",
		// Dropped 3, Unsent 4 in the new report: the 3 dropped in other.
		"| 4x | fasthttp-bare | ignores | 2320 | 2300 | 6 | 0.01 | 97 % | 900 ms | 990 ms | 0 | 0 | 4000 | 12 | – | 4 |",
		"| 0.5x | fasthttp-bare | ignores | 290 | 288 | 288 | 0.50 | 0 % | 4.50 ms | 15 ms | 0 | 0 | 0 | 0 | – | 0 |",
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("markdown lacks %q:\n%s", want, b.String())
		}
	}
}

func TestRefusals(t *testing.T) {
	for _, tc := range []struct {
		row  overloadRow
		want string
	}{
		{overloadRow{}, "0"},
		{overloadRow{Rejected: 11}, "11"}, // an older report, without reasons
		{overloadRow{Rejected: 11, RefusedFull: 2, RefusedTimeout: 9}, "11 (queue full 2, queue timeout 9)"},
		{overloadRow{Timeouts: 5, NotRun: 3}, "3: 503 0, 504 not run 3"},
		{overloadRow{Rejected: 11, RefusedFull: 2, RefusedTimeout: 9, Timeouts: 3, NotRun: 3}, "14: 503 11 (queue full 2, queue timeout 9), 504 not run 3"},
	} {
		if got := refusals(&tc.row); got != tc.want {
			t.Errorf("refusals(%+v) = %q, want %q", tc.row, got, tc.want)
		}
	}
}

// "None rejected" at half the capacity counts every request the server
// turned away without running it: a 503, or a 504 given unrun (its budget
// spent waiting, or past MaxQueueAge). It counted the 503s only, and
// passed a variant with admission that turned requests away with 504s.
// A 504 from a handler that ran out of time, a give-up or a connection
// failure is no refusal of the server's: the p99 and goodput goals see
// those.
func TestOverloadGoals_none_rejected_counts_what_was_not_run(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name string
		half overloadRow
		want string
	}{
		{name: "none", want: "PASS 0"},
		{name: "503s", half: overloadRow{Rejected: 2, RefusedFull: 2}, want: "FAIL 2 (queue full 2, queue timeout 0)"},
		{name: "504s not run", half: overloadRow{Timeouts: 3, NotRun: 3}, want: "FAIL 3: 503 0, 504 not run 3"},
		{name: "504s of handlers that ran", half: overloadRow{Timeouts: 3}, want: "PASS 0"},
		{name: "give-ups and connection failures", half: overloadRow{GiveUps: 2, ConnectErrors: 1, ConnErrors: 1}, want: "PASS 0"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			half := tt.half
			half.Variant, half.Handler, half.Load, half.Good, half.P99Ms = olRaceQueue, "honours", 0.5, 100, 10
			w := overloadWorkload{Name: workloadCPU, Capacity: 100, Rows: []overloadRow{half}}
			got := overloadGoals([]overloadWorkload{w}, time.Second)
			if len(got) != 1 || got[0].Checks[6] != tt.want {
				t.Errorf("goals %q; want %q for %q", got, tt.want, goalNames[6])
			}
		})
	}
}

// The queue-start variant turns away a request older than MaxQueueAge
// with a 504 it does not run, through a real server and the generator's
// worker: the client tells it from a timeout, and the cell fails "none
// rejected" at half the capacity. A racing timeout's 504, the handler run,
// is not marked.
func TestOverloadServer_a_504_not_run_is_a_refusal(t *testing.T) {
	t.Parallel()
	sh := sharedForTest(t, 16)
	// Timeout 1 s, MaxQueueAge 250 ms; a handler of a second at least.
	s, err := overloadServer(overloadServerConfig{Variant: olRaceQueue, Workload: workloadDB, Honour: true,
		DBSlots: 1, DBQueries: 1000, DBQueryUs: 1000, TimeoutMs: 1000}, sh, nil)
	if err != nil {
		t.Fatal(err)
	}
	addr := serveLoopback(t, s.Handler)
	g := newOpenLoop(addr, time.Minute, 1)
	var outcomes []outcome
	g.observe = func(r result) { outcomes = append(outcomes, r.outcome) }
	w := &loadWorker{g: g}
	defer g.shutdown()
	defer w.drop(false)
	// Stamped by the load balancer 10 s ago: past MaxQueueAge, unrun.
	w.send(arrival{id: 1, at: time.Now().Add(-10 * time.Second), measured: true})
	// Stamped now: run, and timed out after a second (or turned away, if
	// this test was held up past MaxQueueAge before sending it).
	w.send(arrival{id: 2, at: time.Now()})
	if len(outcomes) != 2 || outcomes[0] != outNotRun || (outcomes[1] != outTimeout && outcomes[1] != outNotRun) {
		t.Fatalf("outcomes %v; want not run (%d), then a timeout (%d)", outcomes, outNotRun, outTimeout)
	}
	// The timed-out handler returns soon after its answer, honouring its
	// context: wait for it, before the shared file is unmapped under it.
	for end := time.Now().Add(10 * time.Second); sh.slots[slotFinished].Load() < sh.slots[slotStarted].Load(); {
		if time.Now().After(end) {
			t.Fatal("the timed-out handler did not return within 10 s")
		}
		time.Sleep(time.Millisecond)
	}
	if started := sh.slots[slotStarted].Load(); outcomes[1] == outTimeout && started != 1 {
		t.Errorf("%d handlers started, want the timed-out request's only", started)
	}
	row := overloadRow{Variant: olRaceQueue, Handler: "honours", Load: 0.5}
	row.fill(cellData{measure: time.Second, deadline: time.Minute, arrivals: 1, tally: g.tally})
	if row.Timeouts != 1 || row.NotRun != 1 || row.Rejected != 0 {
		t.Errorf("504s %d, not run %d, 503s %d; want 1, 1, 0", row.Timeouts, row.NotRun, row.Rejected)
	}
	goals := overloadGoals([]overloadWorkload{{Name: workloadDB, Capacity: 100, Rows: []overloadRow{row}}}, time.Second)
	if len(goals) != 1 || !strings.HasPrefix(goals[0].Checks[6], "FAIL 1") {
		t.Errorf("goals %q; want %q to fail with 1", goals, goalNames[6])
	}
}

// A cell without a good answer has no p99 (its P99Ms is 0): the p99 goals
// must not pass on it.
func TestOverloadGoals_no_good_answer(t *testing.T) {
	t.Parallel()
	row := func(variant string, load float64, good int64, p99 float64) overloadRow {
		return overloadRow{Variant: variant, Handler: "honours", Load: load, Arrivals: 100, Good: good,
			Timeouts: 100 - good, GoodputShare: float64(good) / 100, GoodputPerSec: float64(good), P99Ms: p99}
	}
	w := overloadWorkload{Name: workloadCPU, Capacity: 100, Rows: []overloadRow{
		row(olRace, 0.5, 100, 10),
		row(olRaceAdaptive, 0.5, 0, 0), // every answer a 504
		row(olRaceAdaptive, 1, 95, 120),
	}}
	got := overloadGoals([]overloadWorkload{w}, time.Second)
	if len(got) != 1 {
		t.Fatalf("%d goal rows, want 1", len(got))
	}
	c := got[0].Checks
	if p99, half := c[5], c[7]; p99 != "FAIL no good answer at 0.5x" || half != "FAIL no good answer" {
		t.Errorf("p99 checks with no good answer at 0.5x: worst load %q, 0.5x against no admission %q; want both FAIL", p99, half)
	}
}

// The closed-loop estimate's server writes its CPU profile when asked, as
// every overload server does: the estimate ends it by closing its input,
// not by killing it before the profile is written.
func TestEstimateCapacity_leaves_the_servers_CPU_profile(t *testing.T) {
	dir := t.TempDir()
	t.Setenv(profileEnv, dir) // the child inherits it
	cfg := overloadConfig{WarmupMs: 20, CellMs: 100, Chunks: 2, ChunkIters: 100, ChunkUs: 1}
	if _, err := estimateCapacity(context.Background(), cfg, workloadCPU, os.Stderr); err != nil {
		t.Fatal(err)
	}
	files, err := filepath.Glob(filepath.Join(dir, "*.pprof"))
	if err != nil || len(files) != 1 {
		t.Fatalf("profiles %v (%v), want one", files, err)
	}
	b, err := os.ReadFile(files[0])
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(b, []byte{0x1f, 0x8b}) { // a profile is gzipped
		t.Errorf("%s: %d bytes, not a profile", files[0], len(b))
	}
}

// closerFunc is an io.Closer.
type closerFunc func() error

func (f closerFunc) Close() error { return f() }

// A server in collapse runs seconds of queued handlers on its one P before
// the goroutine that reads its input sees it closed (2.4 to 3.1 s after a
// 1 s cell at 10x): one writing a CPU profile is given the time to end, a
// bounded one.
func TestStopOverloadChild_waits_for_a_server_writing_its_profile(t *testing.T) {
	t.Setenv(profileEnv, t.TempDir())
	for _, tt := range []struct {
		name   string
		drain  time.Duration // from its input closed to its exit
		killed bool
	}{
		{name: "a collapsed server ends by itself", drain: 3 * time.Second},
		{name: "one that does not end is killed", drain: time.Hour, killed: true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				closed, killed, exited := make(chan struct{}), make(chan struct{}), make(chan struct{})
				go func() {
					<-closed
					select {
					case <-time.After(tt.drain):
					case <-killed:
					}
					close(exited)
				}()
				stopOverloadChild(closerFunc(func() error { close(closed); return nil }), exited,
					func() error { close(killed); return nil })
				select {
				case <-killed:
					if !tt.killed {
						t.Errorf("killed while it drained its %v of handlers", tt.drain)
					}
				default:
					if tt.killed {
						t.Error("not killed")
					}
				}
			})
		})
	}
}

// A server that dies in the middle of a cell (fasthttp's Serve failing,
// or killed for its memory) used CPU and memory until then: its CPU read
// after it died is not less than before, and its peak RSS is still known.
// That comes from its rusage then, which the kernel keeps apart from
// /proc's VmHWM: they differ by a fraction of a per cent.
func TestTakeSnapshot_a_dead_servers_CPU_and_peak_RSS_stay(t *testing.T) {
	t.Parallel()
	f, err := os.CreateTemp(t.TempDir(), "shared")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(sharedSize(16)); err != nil {
		t.Fatal(err)
	}
	sh, err := mapShared(f)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = sh.unmap() }()
	// One request of 200 units of 10⁶ iterations: some 0.3 s of CPU.
	spec := `{"variant":"fasthttp-bare","workload":"cpu","timeout_ms":60000,"chunks":200,"chunk_iters":1000000}`
	srv, err := startChildFiles(scenarioOverload, spec, []*os.File{f}, os.Stderr)
	if err != nil {
		t.Fatal(err)
	}
	defer stopOverloadChild(srv.in, srv.exited, srv.cmd.Process.Kill)
	conn, err := net.Dial("tcp", srv.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := io.WriteString(conn, "GET /work HTTP/1.1\r\nHost: 127.0.0.1\r\n"+requestIDHeader+": 1\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	var resp fasthttp.Response
	if err := resp.Read(bufio.NewReader(conn)); err != nil || resp.StatusCode() != 200 {
		t.Fatalf("status %d, error %v", resp.StatusCode(), err)
	}
	before := takeSnapshot(srv, sh)
	if before.serverCPU <= 0 || before.serverPeakRSS <= 0 {
		t.Fatalf("the server used %v of CPU for 200 units of work, and %d bytes at most", before.serverCPU, before.serverPeakRSS)
	}
	_ = srv.cmd.Process.Kill()
	<-srv.exited
	after := takeSnapshot(srv, sh)
	if after.serverCPU < before.serverCPU {
		t.Errorf("the server's CPU: %v, then %v once it died", before.serverCPU, after.serverCPU)
	}
	if after.serverPeakRSS < before.serverPeakRSS*9/10 {
		t.Errorf("the server's peak RSS: %d bytes, then %d once it died", before.serverPeakRSS, after.serverPeakRSS)
	}
}

// A snapshot reads its time after its counters: the child's last sample
// (its Unix time in slotSampled) is never after the snapshot's time, so
// SampleAgeMs is never negative nor short, and a rate over two snapshots
// is over the interval between their readings. Here a sampler stores the
// time as fast as it can while snapshots are taken.
func TestTakeSnapshot_reads_the_time_after_the_counters(t *testing.T) {
	t.Parallel()
	sh := sharedForTest(t, 1)
	self, err := os.FindProcess(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	srv := &child{cmd: &exec.Cmd{Process: self}, exited: make(chan struct{})} // this process: /proc has it
	var stop atomic.Bool
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		for !stop.Load() {
			sh.slots[slotSampled].Store(uint64(time.Now().UnixNano()))
			runtime.Gosched()
		}
	}()
	var late int
	for range 500 {
		s := takeSnapshot(srv, sh)
		if int64(s.slots[slotSampled]) > s.at.UnixNano() {
			late++
		}
	}
	stop.Store(true)
	<-sampled
	if late > 0 {
		t.Errorf("%d snapshots of 500 read a sample taken after their time", late)
	}
}

// An overload cell cut short by the run's stop says so, whatever its row
// holds (a server that died of the stop, say), and not FAILED or CRASHED.
func TestOverloadRow_progressLine_interrupted(t *testing.T) {
	t.Parallel()
	for _, row := range []overloadRow{
		{Workload: workloadCPU, Variant: olConcurrency, Load: 4, Error: "context canceled"},
		{Workload: workloadCPU, Variant: olConcurrency, Load: 4, Error: "context canceled", Crashed: true},
	} {
		line := row.progressLine(true)
		if !strings.HasSuffix(line, ": interrupted") || strings.Contains(line, "FAILED") || strings.Contains(line, "CRASHED") {
			t.Errorf("%+v: %q, want the cell interrupted", row, line)
		}
		if line := row.progressLine(false); !strings.Contains(line, "FAILED") && !strings.Contains(line, "CRASHED") {
			t.Errorf("%+v: %q, want the failure, the run not being stopped", row, line)
		}
	}
}
