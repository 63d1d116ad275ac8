package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
)

// report is the whole result of a run; -json writes it as is.
type report struct {
	Machine      machine         `json:"machine"`
	Duration     string          `json:"duration_per_cell"`
	Warmup       string          `json:"warmup_per_cell"`
	TotalSeconds float64         `json:"total_seconds"`
	Throughput   []throughputRow `json:"throughput,omitempty"`
	Storm        stormConfig     `json:"storm_config"`
	StormRows    []stormRow      `json:"storm,omitempty"`
	Burst        burstConfig     `json:"burst_config"`
	BurstRows    []burstRow      `json:"burst,omitempty"`
	Hangup       *hangupReport   `json:"hangup,omitempty"`
	Overload     *overloadReport `json:"overload,omitempty"`
	// Interrupted is set when a signal stopped the run: the report then
	// holds only the cells finished before it.
	Interrupted *interruption `json:"interrupted,omitempty"`
}

// interruption says where a signal stopped the run: at a cell it cut short
// or that had yet to start, which the report leaves out, as it does every
// cell after it.
type interruption struct {
	Signal   string `json:"signal"`
	Scenario string `json:"scenario"`
	Cell     string `json:"cell"` // empty: after the scenario's last cell
}

// stop marks rep as stopped at cell of scenario by ctx's cancellation (the
// signal its cause names), and returns ctx's error, which ends the run.
func (rep *report) stop(ctx context.Context, scenario, cell string) error {
	var sig interrupted
	why := context.Cause(ctx).Error()
	if errors.As(context.Cause(ctx), &sig) {
		why = sig.sig.String()
	}
	rep.Interrupted = &interruption{Signal: why, Scenario: scenario, Cell: cell}
	return ctx.Err()
}

type machine struct {
	CPU       string `json:"cpu"`
	CPUs      int    `json:"cpus"`
	GoVersion string `json:"go"`
	OS        string `json:"os"`
}

func (m machine) String() string {
	return fmt.Sprintf("%s, %d CPUs, %s %s", m.CPU, m.CPUs, m.GoVersion, m.OS)
}

type stormConfig struct {
	Conns     int   `json:"conns"`
	WorkMs    int64 `json:"work_ms"`
	TimeoutMs int64 `json:"timeout_ms"`
}

// throughputRow is one cell of the throughput scenario.
type throughputRow struct {
	Variant   string  `json:"variant"`
	Conns     int     `json:"conns"`
	Requests  int64   `json:"requests"`
	Errors    int64   `json:"errors"` // connections that failed
	Non200    int64   `json:"non_200"`
	ReqPerSec float64 `json:"req_per_sec"`
	// VsFasthttpBare is ReqPerSec over fasthttp-bare's at the same
	// connection count, VsNethttpBare over nethttp-bare's (net/http rows
	// only); 0 when the baseline was not run.
	VsFasthttpBare float64 `json:"vs_fasthttp_bare,omitempty"`
	VsNethttpBare  float64 `json:"vs_nethttp_bare,omitempty"`
	P50Micros      float64 `json:"p50_us"`
	P99Micros      float64 `json:"p99_us"`
	P999Micros     float64 `json:"p999_us"`
	CPUMicrosPerRq float64 `json:"server_cpu_us_per_req"`
	AllocsPerReq   float64 `json:"server_allocs_per_req"`
	Error          string  `json:"error,omitempty"` // the cell failed: nothing else is set
}

// fill computes the row from the clients' result and the server's
// snapshots at the start and end of the measured window.
func (r *throughputRow) fill(res loadResult, before, after serverStats) {
	r.Requests = res.requests()
	r.Errors = res.errors
	for code, n := range res.statuses {
		if code != 200 {
			r.Non200 += n
		}
	}
	if secs := res.elapsed.Seconds(); secs > 0 {
		r.ReqPerSec = float64(res.answered) / secs
	}
	p := res.latencies.quantiles(50, 99, 99.9)
	r.P50Micros, r.P99Micros, r.P999Micros = p[0]/1e3, p[1]/1e3, p[2]/1e3
	if res.answered > 0 {
		r.CPUMicrosPerRq = float64(after.CPUNanos-before.CPUNanos) / 1e3 / float64(res.answered)
		r.AllocsPerReq = float64(after.Mallocs-before.Mallocs) / float64(res.answered)
	}
}

// fillRatios sets each row's throughput relative to the bare servers of the
// same connection count.
func fillRatios(rows []throughputRow) {
	base := map[string]float64{}
	for _, r := range rows {
		if r.Variant == fasthttpBare || r.Variant == nethttpBare {
			base[fmt.Sprint(r.Variant, r.Conns)] = r.ReqPerSec
		}
	}
	for i := range rows {
		r := &rows[i]
		if b := base[fmt.Sprint(fasthttpBare, r.Conns)]; b > 0 {
			r.VsFasthttpBare = r.ReqPerSec / b
		}
		if b := base[fmt.Sprint(nethttpBare, r.Conns)]; b > 0 && strings.HasPrefix(r.Variant, "nethttp-") {
			r.VsNethttpBare = r.ReqPerSec / b
		}
	}
}

// stormRow is the storm against one variant.
type stormRow struct {
	Variant   string  `json:"variant"`
	Conns     int     `json:"conns"`
	Requests  int64   `json:"requests"`
	Timeouts  int64   `json:"timeout_responses"`
	OK        int64   `json:"ok_responses"`
	Other     int64   `json:"other_responses"`
	Errors    int64   `json:"errors"`
	ReqPerSec float64 `json:"req_per_sec"`
	// Lateness of the timeout responses after the deadline, as the client
	// sees it (it includes the loopback round trip).
	LatenessP50Ms float64 `json:"lateness_p50_ms"`
	LatenessP99Ms float64 `json:"lateness_p99_ms"`
	// Handlers that returned, and how many of them more than 1 ms, 10 ms and
	// 100 ms after their deadline.
	Handlers       int64    `json:"handlers"`
	RunningAfter   [3]int64 `json:"running_after_deadline_1ms_10ms_100ms"`
	PeakGoroutines int64    `json:"peak_goroutines"`
	PeakHeapMiB    float64  `json:"peak_heap_mib"`
	Error          string   `json:"error,omitempty"` // the cell failed: nothing else is set
}

// fill computes the row from the clients' result, the server's snapshots at
// the start and end of the measured window, and settled, taken once the
// slow handlers have returned.
func (r *stormRow) fill(res loadResult, before, after, settled serverStats) {
	r.Requests = res.requests()
	r.Errors = res.errors
	r.Timeouts = res.timeouts.count()
	for code, n := range res.statuses {
		if code == 200 {
			r.OK += n
		}
	}
	r.Other = r.Requests - r.Timeouts - r.OK
	if secs := res.elapsed.Seconds(); secs > 0 {
		r.ReqPerSec = float64(res.answered) / secs
	}
	p := res.timeouts.quantiles(50, 99)
	r.LatenessP50Ms, r.LatenessP99Ms = p[0]/1e6, p[1]/1e6
	r.Handlers = settled.HandlersFinished - before.HandlersFinished
	for i := range r.RunningAfter {
		r.RunningAfter[i] = settled.Overrun[i] - before.Overrun[i]
	}
	r.PeakGoroutines = after.PeakGoroutines
	r.PeakHeapMiB = float64(after.PeakHeapBytes) / (1 << 20)
}

type burstConfig struct {
	Conns        int      `json:"conns"`
	PerConn      int      `json:"requests_per_conn"`
	TimeoutMs    int64    `json:"timeout_ms"`
	WorkMs       int64    `json:"work_ms"`
	PanicAfterMs int64    `json:"panic_after_ms"`
	Kinds        []string `json:"kinds"`
	Shared       bool     `json:"shared_process"`
}

// burstRow is the burst against one variant.
type burstRow struct {
	Variant   string  `json:"variant"`
	Conns     int     `json:"conns"`
	PerConn   int     `json:"requests_per_conn"`
	Shared    bool    `json:"shared_process"` // the server ran in the load generator's process
	Seconds   float64 `json:"seconds"`
	Responses int64   `json:"responses"`
	OK        int64   `json:"ok_responses"`
	Timeouts  int64   `json:"timeout_responses"`
	Other     int64   `json:"other_responses"`
	Errors    int64   `json:"errors"` // connections that failed
	// Lateness of the timeout responses after the deadline, as the client
	// sees it (from writing the request; it includes the loopback round
	// trip and the wait to be read under the burst).
	LatenessP50Ms float64 `json:"lateness_p50_ms"`
	LatenessP99Ms float64 `json:"lateness_p99_ms"`
	LatenessMaxMs float64 `json:"lateness_max_ms"`
	// OwnAfterDeadline counts the 200s the clients got whose handler had
	// stamped a return after its deadline: handlers that returned late
	// before the deadline checker saw them, and had their response sent.
	OwnAfterDeadline int64 `json:"own_responses_after_deadline"`
	// EscapedPanics counts the panics, all of them after the deadline,
	// that the middleware re-raised on the server goroutine (recovered
	// outside it here; a server without that recovery crashes).
	EscapedPanics int64 `json:"escaped_panics"`
	// LateReturns counts the handlers that returned or panicked after
	// their deadline, by their own stamp; MiddlewareLate how many returns
	// the middleware counted as late (Stats.LateFinished), and
	// MiddlewareTimeouts its Stats.Timeouts. Zero for
	// TimeoutWithCodeHandler, which keeps no such counters.
	LateReturns        int64  `json:"handler_late_returns"`
	MiddlewareLate     int64  `json:"middleware_late_finished"`
	MiddlewareTimeouts int64  `json:"middleware_timeouts"`
	Crashed            bool   `json:"crashed"`
	PeakGoroutines     int64  `json:"peak_goroutines"`
	Error              string `json:"error,omitempty"` // the server failed; crashed if it died
}

// fill computes the row from the clients' result and the server's
// counters before the burst and once its handlers have returned.
func (r *burstRow) fill(res burstResult, before, settled serverStats) {
	r.Seconds = res.elapsed.Seconds()
	r.Responses = res.responses
	r.OK = res.ok
	r.Timeouts = res.timeouts
	r.Other = res.other
	r.Errors = res.errors
	r.OwnAfterDeadline = res.ownLate
	r.EscapedPanics = res.escaped
	// The histogram rounds up within 0.1 %: the max is the values', and
	// no percentile is shown past it.
	p := res.lateness.quantiles(50, 99)
	if res.timeouts > 0 {
		r.LatenessMaxMs = float64(res.latenessMax) / 1e6
	}
	r.LatenessP50Ms, r.LatenessP99Ms = min(p[0]/1e6, r.LatenessMaxMs), min(p[1]/1e6, r.LatenessMaxMs)
	b, s := before.Burst, settled.Burst
	r.LateReturns = s.LateReturns - b.LateReturns
	r.MiddlewareLate = s.MwLateReturn - b.MwLateReturn
	r.MiddlewareTimeouts = s.MwTimeouts - b.MwTimeouts
	r.PeakGoroutines = settled.PeakGoroutines
}

// percentiles returns the quantiles qs (in percent) of values (ns), from an
// HDR histogram with 3 significant digits (histogram); zeros when values is
// empty. Values below 1 ns count as 1 ns.
func percentiles(values []int64, qs ...float64) []float64 {
	return histogramOf(values...).quantiles(qs...)
}

// writeMarkdown writes the report's tables, scenario by scenario.
func writeMarkdown(w io.Writer, rep report) error {
	var b strings.Builder
	switch s := rep.Interrupted; {
	case s != nil && s.Cell == "":
		fmt.Fprintf(&b, "**Interrupted** (%s) after the last cell of the %s scenario: this report holds the cells finished before it; those after it were not measured.\n\n",
			s.Signal, s.Scenario)
	case s != nil:
		fmt.Fprintf(&b, "**Interrupted** (%s) in the %s scenario at %s: this report holds the cells finished before it; that cell and the ones after it were not measured.\n\n",
			s.Signal, s.Scenario, s.Cell)
	}
	if len(rep.Throughput) > 0 || len(rep.StormRows) > 0 {
		fmt.Fprintf(&b, "Machine: %s. Each cell: %s of keep-alive load after %s of warm-up; run took %.0f s.\n\n",
			rep.Machine, rep.Duration, rep.Warmup, rep.TotalSeconds)
	} else {
		fmt.Fprintf(&b, "Machine: %s. Run took %.0f s.\n\n", rep.Machine, rep.TotalSeconds)
	}
	for _, s := range scenarios {
		s.markdown(&b, rep)
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func writeThroughput(b *strings.Builder, rep report) {
	if len(rep.Throughput) == 0 {
		return
	}
	b.WriteString("### Throughput (trivial handler)\n\n")
	b.WriteString("| variant | conns | req/s | × fasthttp-bare | × nethttp-bare | p50 | p99 | p99.9 | server CPU/req | allocs/req | errors |\n")
	b.WriteString("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, r := range rep.Throughput {
		if r.Error != "" {
			fmt.Fprintf(b, "| %s | %d | failed: %s |||||||||\n", r.Variant, r.Conns, oneLine(r.Error))
			continue
		}
		errs := fmt.Sprint(r.Errors + r.Non200)
		fmt.Fprintf(b, "| %s | %d | %.0f | %s | %s | %s | %s | %s | %.1f µs | %.1f | %s |\n",
			r.Variant, r.Conns, r.ReqPerSec, ratio(r.VsFasthttpBare), ratio(r.VsNethttpBare),
			micros(r.P50Micros), micros(r.P99Micros), micros(r.P999Micros),
			r.CPUMicrosPerRq, r.AllocsPerReq, errs)
	}
	b.WriteString("\n")
}

func writeStorm(b *strings.Builder, rep report) {
	if len(rep.StormRows) == 0 {
		return
	}
	fmt.Fprintf(b, "### Timeout storm (%d connections, handlers wait %d ms, timeout %d ms, every other handler honours its context)\n\n",
		rep.Storm.Conns, rep.Storm.WorkMs, rep.Storm.TimeoutMs)
	b.WriteString("| variant | req/s | timeout responses | lateness p50 | lateness p99 | handlers | running > +1 ms | > +10 ms | > +100 ms | peak goroutines | peak heap |\n")
	b.WriteString("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, r := range rep.StormRows {
		name := r.Variant
		if name == fasthttpBare {
			name = "floor: fasthttp-bare, 504 after 50 ms"
		}
		if r.Error != "" {
			fmt.Fprintf(b, "| %s | failed: %s |||||||||\n", name, oneLine(r.Error))
			continue
		}
		fmt.Fprintf(b, "| %s | %.0f | %d of %d | %.2f ms | %.2f ms | %d | %s | %s | %s | %d | %.1f MiB |\n",
			name, r.ReqPerSec, r.Timeouts, r.Requests, r.LatenessP50Ms, r.LatenessP99Ms, r.Handlers,
			share(r.RunningAfter[0], r.Handlers), share(r.RunningAfter[1], r.Handlers), share(r.RunningAfter[2], r.Handlers),
			r.PeakGoroutines, r.PeakHeapMiB)
	}
	b.WriteString("\n")
}

func writeBurst(b *strings.Builder, rep report) {
	if len(rep.BurstRows) == 0 {
		return
	}
	c := rep.Burst
	where := "server in a child process"
	if c.Shared {
		where = "server in the load generator's process"
	}
	fmt.Fprintf(b, "### Burst (%d connections opened at once × %d requests, timeout %d ms, %s; handlers in turn: %s)\n\n",
		c.Conns, c.PerConn, c.TimeoutMs, where, strings.Join(c.Kinds, ", "))
	b.WriteString("| variant | responses | timeout responses | lateness p50 | lateness p99 | lateness max | own 200 after deadline | panics re-raised | late returns: handler / middleware | crashed | peak goroutines | time |\n")
	b.WriteString("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|\n")
	for _, r := range rep.BurstRows {
		crashed := "no"
		if r.Crashed {
			crashed = "**yes**"
		}
		if r.Error != "" && !r.Crashed {
			fmt.Fprintf(b, "| %s | failed: %s |||||||||||\n", r.Variant, oneLine(r.Error))
			continue
		}
		mw := fmt.Sprint(r.MiddlewareLate)
		if r.Variant == fasthttpTWCH {
			mw = "–"
		}
		responses := fmt.Sprint(r.Responses)
		if lost := int64(r.Conns*r.PerConn) - r.Responses; lost > 0 {
			responses += fmt.Sprintf(" (%d missing)", lost)
		}
		fmt.Fprintf(b, "| %s | %s | %d | %.2f ms | %.2f ms | %.2f ms | %d | %d | %d / %s | %s | %d | %.1f s |\n",
			r.Variant, responses, r.Timeouts, r.LatenessP50Ms, r.LatenessP99Ms, r.LatenessMaxMs,
			r.OwnAfterDeadline, r.EscapedPanics, r.LateReturns, mw, crashed, r.PeakGoroutines, r.Seconds)
	}
	b.WriteString("\n")
}

// oneLine keeps a message from breaking a table row.
func oneLine(s string) string {
	return strings.NewReplacer("\n", " ", "|", "/").Replace(s)
}

func ratio(x float64) string {
	if x == 0 {
		return "–"
	}
	return fmt.Sprintf("%.2f", x)
}

func micros(us float64) string {
	if us >= 1000 {
		return fmt.Sprintf("%.2f ms", us/1000)
	}
	return fmt.Sprintf("%.0f µs", us)
}

func share(n, of int64) string {
	if of == 0 {
		return "0"
	}
	return fmt.Sprintf("%d (%.0f%%)", n, 100*float64(n)/float64(of))
}
