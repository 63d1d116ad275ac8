package main

// The overload scenario's rows, goals, tables and chart.

import (
	"fmt"
	"image/color"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
)

// overloadReport is the scenario's part of the report.
type overloadReport struct {
	Config    overloadConfig     `json:"config"`
	Workloads []overloadWorkload `json:"workloads"`
	Goals     []goalRow          `json:"goals,omitempty"`
	Soak      []overloadRow      `json:"soak,omitempty"`
}

// overloadWorkload is one workload's sweep and cells.
type overloadWorkload struct {
	Name string `json:"name"`
	// Nominal is the capacity on a core of its own; Estimate what
	// fasthttp-bare answered under closed-loop load, the first estimate.
	Nominal  float64 `json:"nominal_per_sec"`
	Estimate float64 `json:"first_estimate_per_sec"`
	// Capacity is the best goodput of the Concurrency sweep, and
	// BestConcurrency the Server.Concurrency that gave it.
	Capacity        float64       `json:"capacity_per_sec"`
	BestConcurrency int           `json:"best_concurrency"`
	Sweep           []overloadRow `json:"concurrency_sweep"`
	Rows            []overloadRow `json:"cells"`
}

// pickCapacity sets the capacity from the sweep: its best goodput. With
// no usable sweep cell it falls back on the first estimate, and the
// default Concurrency of 64.
func (w *overloadWorkload) pickCapacity() {
	w.Capacity, w.BestConcurrency = 0, 0
	for _, r := range w.Sweep {
		if r.Error == "" && r.GoodputPerSec > w.Capacity {
			w.Capacity, w.BestConcurrency = r.GoodputPerSec, r.Concurrency
		}
	}
	if w.Capacity == 0 {
		w.Capacity, w.BestConcurrency = w.Estimate, 64
	}
	for i := range w.Sweep {
		w.Sweep[i].GoodputShare = share0(w.Sweep[i].GoodputPerSec, w.Capacity)
	}
}

// fillShares sets each cell's goodput as a share of the capacity.
func (w *overloadWorkload) fillShares() {
	for i := range w.Rows {
		w.Rows[i].GoodputShare = share0(w.Rows[i].GoodputPerSec, w.Capacity)
	}
}

// overloadRow is one cell: a variant and handler kind under one workload
// and offered load, over the measured window.
type overloadRow struct {
	Workload    string  `json:"workload"`
	Variant     string  `json:"variant"`
	Handler     string  `json:"handler"`               // "honours" or "ignores" its context
	Concurrency int     `json:"concurrency,omitempty"` // Server.Concurrency of fasthttp-Concurrency
	Load        float64 `json:"load,omitempty"`        // offered, × capacity; 0 in the sweep
	Seconds     float64 `json:"seconds"`               // the measured window

	// Arrivals scheduled in the window, at OfferedPerSec; SentPerSec
	// those the generator sent (neither Dropped nor Unsent) per second.
	OfferedPerSec float64 `json:"offered_per_sec"`
	Arrivals      int64   `json:"arrivals"`
	SentPerSec    float64 `json:"sent_per_sec"`
	// How late the window's requests were, after their scheduled
	// arrival (p99): SendLagP99Ms handed to a worker by the generator,
	// PickupLagP99Ms picked up by that worker to be sent (the generator's
	// lateness and the worker's).
	SendLagP99Ms   float64 `json:"send_lag_p99_ms"`
	PickupLagP99Ms float64 `json:"worker_lag_p99_ms"`
	// GeneratorBehind: the generator could not keep to its schedule (see
	// generatorNotSent).
	GeneratorBehind bool `json:"generator_behind,omitempty"`
	Connections     int  `json:"connections"` // the generator's, at most, over the whole cell

	// What became of the window's arrivals.
	Good     int64 `json:"good"` // 200 within the deadline
	Late     int64 `json:"late_200"`
	Rejected int64 `json:"rejected_503"`
	Timeouts int64 `json:"timeouts_504"`
	// NotRun is the 504s given without running the handler, its budget
	// spent before it could start (MaxQueueAge, or a slot that came too
	// late): turned away, as a 503 is. They count in Timeouts too.
	NotRun        int64 `json:"timeouts_504_not_run,omitempty"`
	Other         int64 `json:"other_status"`
	GiveUps       int64 `json:"give_ups"` // no answer by the deadline
	ConnectErrors int64 `json:"connect_errors"`
	ConnErrors    int64 `json:"conn_errors"`
	Dropped       int64 `json:"dropped"`    // not sent: all connections busy, or none could be opened
	Unsent        int64 `json:"unsent"`     // not sent: picked up only after the deadline
	Mismatched    int64 `json:"mismatched"` // an answer with another request's id
	Cut           int64 `json:"cut"`        // still out when the cell ended

	GoodputPerSec float64 `json:"goodput_per_sec"`
	GoodputShare  float64 `json:"goodput_share"` // of the capacity
	P50Ms         float64 `json:"good_p50_ms"`
	P99Ms         float64 `json:"good_p99_ms"`

	// Work is the units done by the handlers during the window (CPU
	// units of cpuChunk, or database queries), for any request; Wasted
	// those done for requests that got no good answer.
	Work        int64   `json:"work_units"`
	Wasted      int64   `json:"wasted_units"`
	WastedShare float64 `json:"wasted_share"`

	ServerCPUPct    float64 `json:"server_cpu_pct"` // of one core, in the window
	GeneratorCPUPct float64 `json:"generator_cpu_pct"`
	StillRunning    int64   `json:"still_running"` // handlers running when the cell ended
	PeakInFlight    int64   `json:"peak_in_flight"`
	PeakGoroutines  int64   `json:"peak_goroutines"`
	PeakHeapMiB     float64 `json:"peak_heap_mib"`
	PeakRSSMiB      float64 `json:"peak_rss_mib"`
	SampleAgeMs     float64 `json:"sample_age_ms"` // how stale the child's last sample of goroutines and heap was
	Limit           int64   `json:"concurrency_limit,omitempty"`
	// The middleware's refusals in the window, by reason, as its Stats
	// counted them at the samples nearest the window's ends.
	RefusedFull    int64  `json:"refused_queue_full,omitempty"`
	RefusedTimeout int64  `json:"refused_queue_timeout,omitempty"`
	NoID           int64  `json:"requests_without_id,omitempty"`
	Crashed        bool   `json:"crashed,omitempty"`
	Error          string `json:"error,omitempty"`
}

// cellData is what a cell's generator and server child left.
type cellData struct {
	measure  time.Duration
	deadline time.Duration
	arrivals int64 // scheduled in the window
	tally    tally // what became of them
	sendLag  histogram
	// The units of work done in the window, by the handlers of every
	// request and of those answered good (windowWork).
	work, goodWork int64
	workers        int
}

// fill computes the client's side of the row, and the work done.
//
// The window's arrivals give the counts, goodput and latencies. The work
// is what the handlers did during the window, for any request: in a
// collapse the server spends the window on requests that arrived before
// it, and gets through none of the window's own. Wasted is the part of it
// done for requests that got no good answer.
func (r *overloadRow) fill(d cellData) {
	r.Arrivals = d.arrivals
	r.Connections = d.workers
	for o, n := range d.tally.counts {
		*r.counter(outcome(o)) += n
	}
	r.NotRun = d.tally.counts[outNotRun]
	r.Cut += max(r.Arrivals-d.tally.recorded(), 0) // no result: still out when the run ended
	r.Work = d.work
	// The units are read while the server works, request by request and
	// in all: a unit read for a request and not in all must not make the
	// waste negative.
	r.Wasted = min(max(d.work-d.goodWork, 0), d.work)
	if secs := d.measure.Seconds(); secs > 0 {
		r.GoodputPerSec = float64(r.Good) / secs
		r.SentPerSec = float64(r.Arrivals-r.notSent()) / secs
	}
	if r.Work > 0 {
		r.WastedShare = float64(r.Wasted) / float64(r.Work)
	}
	p := d.tally.latencies.quantiles(50, 99)
	r.P50Ms, r.P99Ms = p[0]/1e6, p[1]/1e6
	r.SendLagP99Ms = d.sendLag.quantiles(99)[0] / 1e6
	r.PickupLagP99Ms = d.tally.lags.quantiles(99)[0] / 1e6
	lagBound := generatorLag * float64(d.deadline) / 1e6
	r.GeneratorBehind = float64(r.notSent()) > generatorNotSent*float64(r.Arrivals) ||
		r.SendLagP99Ms > lagBound || r.PickupLagP99Ms > lagBound
}

// notSent is the window's arrivals that the generator failed to send:
// dropped for want of a connection, or picked up after their deadline.
// They are the load test's failures, not the server's.
func (r overloadRow) notSent() int64 { return r.Dropped + r.Unsent }

// The generator is behind its schedule, and the cell measures it as much
// as the server, when it fails to send more than generatorNotSent of the
// window's arrivals (notSent), or hands them to its workers, or its
// workers pick them up, later than generatorLag of the deadline (p99).
const (
	generatorNotSent = 0.01
	generatorLag     = 0.1
)

func (r *overloadRow) counter(o outcome) *int64 {
	switch o {
	case outGood:
		return &r.Good
	case outLate:
		return &r.Late
	case outRejected:
		return &r.Rejected
	case outTimeout, outNotRun:
		return &r.Timeouts
	case outOther:
		return &r.Other
	case outGiveUp:
		return &r.GiveUps
	case outConnect:
		return &r.ConnectErrors
	case outConnError:
		return &r.ConnErrors
	case outDropped:
		return &r.Dropped
	case outUnsent:
		return &r.Unsent
	case outMismatch:
		return &r.Mismatched
	}
	return &r.Cut
}

// name is the row's variant as the tables show it.
func (r overloadRow) name() string {
	if r.Variant == olConcurrency && r.Concurrency > 0 {
		return fmt.Sprintf("%s=%d", r.Variant, r.Concurrency)
	}
	return r.Variant
}

// measured tells whether the row holds a measurement: it did not fail,
// or its server crashed, which is a result too.
func (r overloadRow) measured() bool { return r.Error == "" || r.Crashed }

// progressLine is the row's progress line; interrupted: the run's stop
// cut the cell short.
func (r overloadRow) progressLine(interrupted bool) string {
	load := r.loadLabel()
	switch {
	case interrupted:
		return fmt.Sprintf("%-10s %-5s %-36s %-7s: interrupted", r.Workload, load, r.name(), r.Handler)
	case !r.measured():
		return fmt.Sprintf("%-10s %-5s %-36s %-7s: FAILED: %s", r.Workload, load, r.name(), r.Handler, r.Error)
	}
	crashed := ""
	if r.Crashed {
		crashed = "; CRASHED: " + r.Error
	}
	return fmt.Sprintf("%-10s %-5s %-36s %-7s: offered %5.0f/s, sent %5.0f/s, goodput %5.0f/s, wasted %3.0f%%, p99 %6.1f ms, 503 %d, 504 %d, gave up %d, connect errors %d, not sent %d",
		r.Workload, load, r.name(), r.Handler, r.OfferedPerSec, r.SentPerSec, r.GoodputPerSec, 100*r.WastedShare, r.P99Ms,
		r.Rejected, r.Timeouts, r.GiveUps, r.ConnectErrors, r.notSent()) + crashed
}

// loadLabel is the row's load as the progress lines name it: "sweep" for
// a cell of the capacity sweep, else the load ("4x").
func (r overloadRow) loadLabel() string {
	if r.Load > 0 {
		return fmt.Sprintf("%gx", r.Load)
	}
	return "sweep"
}

// The goals, checked for each variant with admission, workload and
// handler kind.
const (
	goalShare      = 0.9  // goodput at 2x, 4x and 10x, × capacity
	goalVsTWCH     = 3.0  // goodput at 4x, × TimeoutWithCodeHandler's
	goalWaste      = 0.10 // wasted work, at every load
	goalP99        = 0.25 // p99 of good answers, × the deadline, at every load
	goalHalfP99    = 1.10 // p99 at 0.5x, × the same variant's without admission
	goalHalfLoad   = 0.5
	goalVsTWCHLoad = 4
)

var goalShareLoads = []float64{2, 4, 10}

// goalRow is the goals of one variant with admission, workload and
// handler kind. Each check is "PASS value", "FAIL value" or "–" when its
// cells were not run.
type goalRow struct {
	Workload string   `json:"workload"`
	Variant  string   `json:"variant"`
	Handler  string   `json:"handler"`
	Checks   []string `json:"checks"` // in the order of goalNames
}

// goalNames heads the goal table's columns.
var goalNames = []string{
	"goodput ≥ 0.9x capacity at 2x", "at 4x", "at 10x",
	"≥ 3x TimeoutWithCodeHandler at 4x",
	"wasted ≤ 10 % (worst load)",
	"p99 ≤ deadline/4 (worst load)",
	"0.5x: none rejected",
	"0.5x: p99 ≤ 1.1x without admission",
}

// overloadGoals checks the goals of every variant with admission.
func overloadGoals(workloads []overloadWorkload, deadline time.Duration) []goalRow {
	var out []goalRow
	for _, w := range workloads {
		find := func(variant, handler string, load float64) *overloadRow {
			for i := range w.Rows {
				r := &w.Rows[i]
				if r.Variant == variant && r.Handler == handler && r.Load == load && r.measured() {
					return r
				}
			}
			return nil
		}
		seen := map[string]bool{}
		for _, r := range w.Rows {
			v, _ := findOverloadVariant(r.Variant)
			key := r.Variant + "/" + r.Handler
			if !v.admission || seen[key] {
				continue
			}
			seen[key] = true
			g := goalRow{Workload: w.Name, Variant: r.Variant, Handler: r.Handler}
			for _, load := range goalShareLoads {
				c := find(r.Variant, r.Handler, load)
				if c == nil {
					g.Checks = append(g.Checks, "–")
					continue
				}
				g.Checks = append(g.Checks, check(c.GoodputShare >= goalShare, "%.2fx", c.GoodputShare))
			}
			c, twch := find(r.Variant, r.Handler, goalVsTWCHLoad), find(olTWCH, handlerName(false), goalVsTWCHLoad)
			switch {
			case c == nil || twch == nil:
				g.Checks = append(g.Checks, "–")
			case twch.GoodputPerSec == 0:
				g.Checks = append(g.Checks, check(c.GoodputPerSec > 0, "%.0f/s vs 0", c.GoodputPerSec))
			default:
				x := c.GoodputPerSec / twch.GoodputPerSec
				g.Checks = append(g.Checks, check(x >= goalVsTWCH, "%.1fx", x))
			}
			// A cell without a good answer has no p99 (P99Ms 0): it
			// fails the p99 goal rather than passing unseen.
			worstWaste, worstP99, cells, noGood := 0.0, 0.0, 0, ""
			for _, c := range w.Rows {
				if c.Variant == r.Variant && c.Handler == r.Handler && c.measured() {
					worstWaste, worstP99 = math.Max(worstWaste, c.WastedShare), math.Max(worstP99, c.P99Ms)
					if c.Good == 0 && noGood == "" {
						noGood = fmt.Sprintf("%gx", c.Load)
					}
					cells++
				}
			}
			switch {
			case cells == 0:
				g.Checks = append(g.Checks, "–", "–")
			case noGood != "":
				g.Checks = append(g.Checks,
					check(worstWaste <= goalWaste, "%.0f %%", 100*worstWaste),
					check(false, "no good answer at %s", noGood))
			default:
				g.Checks = append(g.Checks,
					check(worstWaste <= goalWaste, "%.0f %%", 100*worstWaste),
					check(worstP99 <= goalP99*float64(deadline)/1e6, "%.0f ms", worstP99))
			}
			half := find(r.Variant, r.Handler, goalHalfLoad)
			if half == nil {
				g.Checks = append(g.Checks, "–", "–")
			} else {
				g.Checks = append(g.Checks, check(half.rejected() == 0, "%s", refusals(half)))
				v, _ := findOverloadVariant(r.Variant)
				base := find(v.without, r.Handler, goalHalfLoad)
				switch {
				case half.Good == 0:
					g.Checks = append(g.Checks, check(false, "no good answer"))
				case base == nil:
					g.Checks = append(g.Checks, "–")
				case base.P99Ms == 0:
					g.Checks = append(g.Checks, check(half.P99Ms == 0, "%.1f ms vs 0", half.P99Ms))
				default:
					x := half.P99Ms / base.P99Ms
					g.Checks = append(g.Checks, check(x <= goalHalfP99, "%.2fx", x))
				}
			}
			out = append(out, g)
		}
	}
	return out
}

func check(pass bool, format string, args ...any) string {
	verdict := "FAIL"
	if pass {
		verdict = "PASS"
	}
	return verdict + " " + fmt.Sprintf(format, args...)
}

// longerCells names the loads whose cells measured longer than -cell (the
// light ones, see overloadConfig.cellAt), as read from the rows: a report
// of an older run has none.
func longerCells(rep *overloadReport) string {
	var parts []string
	seen := map[float64]bool{}
	for _, w := range rep.Workloads {
		for _, r := range w.Rows {
			if r.Seconds*1000 > float64(rep.Config.CellMs) && !seen[r.Load] {
				seen[r.Load] = true
				parts = append(parts, fmt.Sprintf("%g ms at %gx", r.Seconds*1000, r.Load))
			}
		}
	}
	if len(parts) == 0 {
		return ""
	}
	return " (" + strings.Join(parts, ", ") + ")"
}

// writeOverloadMarkdown writes the scenario's tables.
func writeOverloadMarkdown(b *strings.Builder, rep *overloadReport) {
	if rep == nil {
		return
	}
	c := rep.Config
	fmt.Fprintf(b, "### Overload (open-loop %s arrivals; server on one P with a %d ms timeout; clients give up after %d ms; each cell %d ms measured%s after %d ms of warm-up, a fresh server each)\n\n",
		c.Arrivals, c.TimeoutMs, c.TimeoutMs, c.CellMs, longerCells(rep), c.WarmupMs)
	fmt.Fprintf(b, "Workloads: **cpu**, %d units of %d iterations of work (%.0f µs each at best here), %.2f ms a request; "+
		"**downstream**, %d queries one after the other to a database of %d slots, each query holding a slot %.0f ms. "+
		"A handler that honours its context looks at it between units and while it waits for a slot; "+
		"fasthttp's handlers have no context, so those variants run the ignoring handler only. "+
		"Wasted: the share of the handlers' work in the window (CPU units or queries) done for requests that got no good answer (200 within the deadline). ",
		c.Chunks, c.ChunkIters, c.ChunkUs, float64(c.Chunks)*c.ChunkUs/1e3, c.DBQueries, c.DBSlots, c.DBQueryMs)
	if c.CountsNotSent {
		fmt.Fprintf(b, "Sent: the arrivals the generator sent, per second. Not sent: the arrivals it failed to send, the load test's failures and not the server's: "+
			"dropped for want of a connection, or picked up by its worker only after their deadline (the generator ran late); "+
			"\"behind\" when that is more than %.0f %% of them, or the generator handed them to its workers or its workers picked them up more than %.0f ms late (p99), so that the cell measures the generator too. "+
			"Gave up: sent, and not answered by the deadline. "+
			"Other: 200s after the deadline, other statuses, broken connections, answers with another request's id, requests cut at the end.\n\n",
			100*generatorNotSent, generatorLag*float64(c.TimeoutMs))
	} else {
		// A report from before the count: what its cells were judged by.
		fmt.Fprintf(b, "Sent: the arrivals the generator sent, per second; \"behind\" when it dropped more than %.0f %% of them for want of a connection or sent them more than %.0f ms late (p99), so that the cell measures the generator too. "+
			"Not sent: not counted by this run's generator, which sent the arrivals it picked up after their deadline (among gave up and connect errors) and counted those it dropped for want of a connection in other; – in its column. "+
			"Gave up: sent, and not answered by the deadline. "+
			"Other: 200s after the deadline, other statuses, broken connections, arrivals dropped, answers with another request's id, requests cut at the end.\n\n",
			100*generatorNotSent, generatorLag*float64(c.TimeoutMs))
	}
	var about []string
	for _, name := range c.Variants {
		if v, ok := findOverloadVariant(name); ok {
			about = append(about, fmt.Sprintf("**%s**: %s", v.name, v.about))
		}
	}
	if len(about) > 0 {
		b.WriteString("Variants: " + strings.Join(about, "; ") + ".\n\n")
	}
	for _, w := range rep.Workloads {
		fmt.Fprintf(b, "#### %s: capacity %.0f/s (fasthttp Server.Concurrency=%d, the best of the sweep at %d× the first estimate: %.0f/s closed-loop from %d connections; on a core of its own %.0f/s)\n\n",
			w.Name, w.Capacity, w.BestConcurrency, sweepLoad, w.Estimate, closedLoopConns, w.Nominal)
		writeOverloadTable(b, w.Sweep, true, c.CountsNotSent)
		writeOverloadTable(b, w.Rows, false, c.CountsNotSent)
	}
	if len(rep.Goals) > 0 {
		b.WriteString("#### Goals (variants with admission)\n\n")
		b.WriteString("| workload | variant | handler | " + strings.Join(goalNames, " | ") + " |\n")
		b.WriteString("|---|---|---|" + strings.Repeat("---|", len(goalNames)) + "\n")
		for _, g := range rep.Goals {
			fmt.Fprintf(b, "| %s | %s | %s | %s |\n", g.Workload, g.Variant, g.Handler, strings.Join(g.Checks, " | "))
		}
		b.WriteString("\n")
	}
	if len(rep.Soak) > 0 {
		fmt.Fprintf(b, "#### Soak: %d ms at 10x\n\n", c.SoakMs)
		b.WriteString("| workload | variant | handler | goodput | × capacity | answered twice or crossed | peak RSS | peak heap | peak goroutines | peak handlers | still running | crashed |\n")
		b.WriteString("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|\n")
		for _, r := range rep.Soak {
			if r.Error != "" && !r.Crashed {
				fmt.Fprintf(b, "| %s | %s | %s | failed: %s |||||||||\n", r.Workload, r.name(), r.Handler, oneLine(r.Error))
				continue
			}
			crashed := "no"
			if r.Crashed {
				crashed = "**yes**"
			}
			fmt.Fprintf(b, "| %s | %s | %s | %.0f/s | %.2f | %d | %s | %s | %d | %d | %d | %s |\n",
				r.Workload, r.name(), r.Handler, r.GoodputPerSec, r.GoodputShare, r.Mismatched,
				mib(r.PeakRSSMiB), mib(r.PeakHeapMiB), r.PeakGoroutines, r.PeakInFlight, r.StillRunning, crashed)
		}
		b.WriteString("\n")
	}
}

// writeOverloadTable writes rows, those of the sweep or of the loads. A
// report whose generator did not count the arrivals it failed to send
// (countsNotSent false) has – for them, and its dropped ones in other.
func writeOverloadTable(b *strings.Builder, rows []overloadRow, sweep, countsNotSent bool) {
	if len(rows) == 0 {
		return
	}
	first := "offered"
	if sweep {
		first = "sweep"
	}
	b.WriteString("| " + first + " | variant | handler | offered/s | sent/s | goodput/s | × capacity | wasted | p50 | p99 | 503 | 504 | gave up | connect errors | not sent | other | server CPU | generator CPU | peak handlers | peak RSS |\n")
	b.WriteString("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	var crashes []string
	for _, r := range rows {
		load := fmt.Sprintf("%gx", r.Load)
		if sweep {
			load = fmt.Sprintf("%d", r.Concurrency)
		}
		if !r.measured() {
			fmt.Fprintf(b, "| %s | %s | %s | failed: %s |||||||||||||||||\n", load, r.name(), r.Handler, oneLine(r.Error))
			continue
		}
		name := r.name()
		if r.Crashed {
			crashes = append(crashes, fmt.Sprintf("%s (%s) at %s: %s.", name, r.Handler, load, oneLine(r.Error)))
			name += " (**crashed**)"
		}
		wasted := fmt.Sprintf("%.0f %%", 100*r.WastedShare)
		if r.Work == 0 {
			wasted = "–"
		}
		other := r.Late + r.Other + r.ConnErrors + r.Mismatched + r.Cut
		notSent := strconv.FormatInt(r.notSent(), 10)
		if !countsNotSent {
			other += r.Dropped
			notSent = "–"
		}
		sent := fmt.Sprintf("%.0f", r.SentPerSec)
		if r.GeneratorBehind {
			sent += " (behind)"
		}
		fmt.Fprintf(b, "| %s | %s | %s | %.0f | %s | %.0f | %.2f | %s | %s | %s | %d | %d | %d | %d | %s | %d | %.0f %% | %.0f %% | %d | %s |\n",
			load, name, r.Handler, r.OfferedPerSec, sent, r.GoodputPerSec, r.GoodputShare, wasted,
			millis(r.P50Ms), millis(r.P99Ms), r.Rejected, r.Timeouts, r.GiveUps, r.ConnectErrors, notSent, other,
			r.ServerCPUPct, r.GeneratorCPUPct, r.PeakInFlight, mib(r.PeakRSSMiB))
	}
	b.WriteString("\n")
	for _, c := range crashes {
		b.WriteString("Crashed: " + c + "\n")
	}
	if len(crashes) > 0 {
		b.WriteString("\n")
	}
}

// mib shows a size; 0 is not known (a dead server's, in a report from
// before its peak RSS was read from its rusage).
func mib(x float64) string {
	if x == 0 {
		return "–"
	}
	return fmt.Sprintf("%.0f MiB", x)
}

func millis(ms float64) string {
	switch {
	case ms == 0:
		return "–"
	case ms < 10:
		return fmt.Sprintf("%.2f ms", ms)
	}
	return fmt.Sprintf("%.0f ms", ms)
}

// overloadCharts draws goodput against offered load, one panel per
// workload, one line per variant and handler: the collapse curve.
func overloadCharts(rep *overloadReport) ([]*plot.Plot, error) {
	if rep == nil {
		return nil, nil
	}
	var panels []*plot.Plot
	for _, w := range rep.Workloads {
		p := plot.New()
		p.Title.Text = fmt.Sprintf("Overload, %s workload: goodput against offered load (capacity %.0f/s)", w.Name, w.Capacity)
		p.X.Label.Text = "offered load (× capacity)"
		p.Y.Label.Text = "goodput (× capacity)"
		p.Y.Min, p.Y.Max = 0, 2 // room above the curves for the legend
		p.Legend.Top = true
		var keys []string
		var loads []float64
		points := map[string]plotter.XYs{}
		for _, r := range w.Rows {
			if !r.measured() || r.Load <= 0 {
				continue
			}
			key := r.Variant + " (" + r.Handler + ")"
			if _, ok := points[key]; !ok {
				keys = append(keys, key)
			}
			if !slices.Contains(loads, r.Load) {
				loads = append(loads, r.Load)
			}
			points[key] = append(points[key], plotter.XY{X: r.Load, Y: r.GoodputShare})
			p.Y.Max = math.Max(p.Y.Max, r.GoodputShare*1.8)
		}
		panels = append(panels, p)
		if len(loads) == 0 {
			continue
		}
		slices.Sort(loads)
		p.X.Scale = plot.LogScale{}
		p.X.Tick.Marker = plot.ConstantTicks(loadTicks(loads))
		goal, err := plotter.NewLine(plotter.XYs{{X: loads[0], Y: goalShare}, {X: loads[len(loads)-1], Y: goalShare}})
		if err != nil {
			return nil, err
		}
		goal.Color = color.Gray{Y: 0x99}
		goal.Dashes = []vg.Length{vg.Points(1), vg.Points(3)}
		p.Add(goal)
		p.Legend.Add(fmt.Sprintf("goal with admission: %gx", goalShare), goal)
		for i, key := range keys {
			line, dots, err := plotter.NewLinePoints(points[key])
			if err != nil {
				return nil, err
			}
			col := chartColours[i%len(chartColours)]
			line.Color, dots.Color = col, col
			line.Width = vg.Points(1.5)
			if strings.HasSuffix(key, "(ignores)") {
				line.Dashes = []vg.Length{vg.Points(4), vg.Points(2)}
			}
			dots.Shape = draw.CircleGlyph{}
			p.Add(line, dots)
			p.Legend.Add(key, line, dots)
		}
	}
	return panels, nil
}

// chartColours tells apart the lines of the overload chart.
var chartColours = append(append([]color.Color{}, palette...),
	color.RGBA{R: 0x8c, G: 0x56, B: 0x4b, A: 0xff},
	color.RGBA{R: 0xe3, G: 0x77, B: 0xc2, A: 0xff},
	color.RGBA{R: 0x7f, G: 0x7f, B: 0x7f, A: 0xff},
	color.RGBA{R: 0xbc, G: 0xbd, B: 0x22, A: 0xff},
	color.RGBA{R: 0x17, G: 0xbe, B: 0xcf, A: 0xff},
	color.RGBA{R: 0x39, G: 0x3b, B: 0x79, A: 0xff},
	color.RGBA{R: 0x63, G: 0x79, B: 0x39, A: 0xff},
)

func loadTicks(loads []float64) []plot.Tick {
	var ticks []plot.Tick
	for _, l := range loads {
		ticks = append(ticks, plot.Tick{Value: l, Label: fmt.Sprintf("%gx", l)})
	}
	return ticks
}

// rejected is the window's requests that the server turned away without
// running their handler: refused with 503, or answered 504 unrun (NotRun).
// Admission does both, as a request finds no slot in time or outlives its
// caller's patience waiting; connection failures and give-ups are not the
// server's refusals (the middleware never saw the former, and ran the
// latter), and are counted in their own columns.
func (r overloadRow) rejected() int64 { return r.Rejected + r.NotRun }

// refusals gives a cell's refusals (rejected): its 503s, with the
// middleware's reasons for them when it refused any, and its 504s given
// without running: what a failed "none rejected" goal needs to be read.
func refusals(r *overloadRow) string {
	refused := fmt.Sprint(r.Rejected)
	if r.Rejected > 0 && r.RefusedFull+r.RefusedTimeout > 0 {
		refused = fmt.Sprintf("%d (queue full %d, queue timeout %d)", r.Rejected, r.RefusedFull, r.RefusedTimeout)
	}
	if r.NotRun == 0 {
		return refused
	}
	return fmt.Sprintf("%d: 503 %s, 504 not run %d", r.rejected(), refused, r.NotRun)
}
