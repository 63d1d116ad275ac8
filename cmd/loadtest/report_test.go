package main

import (
	"bufio"
	"bytes"
	"errors"
	"flag"
	"io"
	"math"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/valyala/fasthttp"
)

func TestFillRatios(t *testing.T) {
	rows := []throughputRow{
		{Variant: fasthttpBare, Conns: 64, ReqPerSec: 100},
		{Variant: ftRace, Conns: 64, ReqPerSec: 95},
		{Variant: nethttpBare, Conns: 64, ReqPerSec: 50},
		{Variant: nethttpTimeout, Conns: 64, ReqPerSec: 40},
		{Variant: ftRace, Conns: 1024, ReqPerSec: 80}, // no baseline at 1024
	}
	fillRatios(rows)
	want := []struct{ fast, net float64 }{{1, 0}, {0.95, 0}, {0.5, 1}, {0.4, 0.8}, {0, 0}}
	for i, w := range want {
		if rows[i].VsFasthttpBare != w.fast || rows[i].VsNethttpBare != w.net {
			t.Errorf("%s/%d: ratios %v, %v; want %v, %v", rows[i].Variant, rows[i].Conns,
				rows[i].VsFasthttpBare, rows[i].VsNethttpBare, w.fast, w.net)
		}
	}
}

func TestPercentiles(t *testing.T) {
	var values []int64
	for i := int64(1); i <= 1000; i++ {
		values = append(values, i*int64(time.Microsecond))
	}
	p := percentiles(values, 50, 99, 99.9)
	for i, want := range []float64{500e3, 990e3, 999e3} {
		if diff := p[i]/want - 1; diff < -0.001 || diff > 0.001 {
			t.Errorf("quantile %d: %v, want %v within 0.1%%", i, p[i], want)
		}
	}
	if got := percentiles(nil, 50); got[0] != 0 {
		t.Errorf("empty: %v, want 0", got)
	}
}

// A value past the histogram's first range (60 s) still counts, with its
// value: the generator's send lag of a long cell, say.
func TestPercentiles_values_past_a_minute_count(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name   string
		values []int64
		q      float64
		want   float64
	}{
		{"the slowest of three", []int64{1e9, 2e9, 120e9}, 99, 120e9},
		{"all past a minute", []int64{90e9, 3600e9}, 50, 90e9},
		{"the longest an int64 holds", []int64{1, math.MaxInt64}, 100, math.MaxInt64},
		{"negative as 1 ns", []int64{-5, 1e6}, 50, 1},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got := percentiles(tt.values, tt.q)[0]
			if diff := got/tt.want - 1; diff < -0.001 || diff > 0.001 {
				t.Errorf("p%v of %v = %v, want %v within 0.1%%", tt.q, tt.values, got, tt.want)
			}
		})
	}
}

func TestThroughputRowFill(t *testing.T) {
	res := loadResult{
		elapsed:   2 * time.Second,
		latencies: histogramOf(1e3, 2e3, 3e3, 4e3),
		statuses:  map[int]int64{200: 3, 503: 1},
		answered:  4,
	}
	var r throughputRow
	r.fill(res, serverStats{CPUNanos: 1e6, Mallocs: 10}, serverStats{CPUNanos: 1e6 + 40e3, Mallocs: 18})
	if r.Requests != 4 || r.ReqPerSec != 2 || r.Non200 != 1 {
		t.Errorf("requests %d, req/s %v, non-200 %d; want 4, 2, 1", r.Requests, r.ReqPerSec, r.Non200)
	}
	if r.CPUMicrosPerRq != 10 || r.AllocsPerReq != 2 {
		t.Errorf("CPU %v µs/req, %v allocs/req; want 10, 2", r.CPUMicrosPerRq, r.AllocsPerReq)
	}
}

func TestStormRowFill(t *testing.T) {
	res := loadResult{
		elapsed:   time.Second,
		latencies: histogramOf(51e6, 52e6, 10e6),
		timeouts:  histogramOf(1e6, 2e6),
		statuses:  map[int]int64{504: 2, 200: 1},
	}
	before := serverStats{HandlersFinished: 10, Overrun: [3]int64{5, 4, 3}}
	after := serverStats{PeakGoroutines: 77, PeakHeapBytes: 3 << 20}
	settled := serverStats{HandlersFinished: 13, Overrun: [3]int64{7, 5, 3}}
	var r stormRow
	r.fill(res, before, after, settled)
	if r.Requests != 3 || r.Timeouts != 2 || r.OK != 1 || r.Other != 0 {
		t.Errorf("requests %d, timeouts %d, ok %d, other %d; want 3, 2, 1, 0", r.Requests, r.Timeouts, r.OK, r.Other)
	}
	if r.Handlers != 3 || r.RunningAfter != [3]int64{2, 1, 0} {
		t.Errorf("handlers %d, running after %v; want 3, [2 1 0]", r.Handlers, r.RunningAfter)
	}
	if r.PeakGoroutines != 77 || r.PeakHeapMiB != 3 {
		t.Errorf("peaks %d goroutines, %v MiB; want 77, 3", r.PeakGoroutines, r.PeakHeapMiB)
	}
}

func TestWriteMarkdown(t *testing.T) {
	rep := report{
		Throughput: []throughputRow{{Variant: fasthttpBare, Conns: 64, ReqPerSec: 1000, VsFasthttpBare: 1, P50Micros: 1500}},
		StormRows:  []stormRow{{Variant: fasthttpBare, Requests: 10, Timeouts: 10, Handlers: 4, RunningAfter: [3]int64{1, 0, 0}}},
	}
	var b bytes.Buffer
	if err := writeMarkdown(&b, rep); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"| fasthttp-bare | 64 | 1000 | 1.00 | – | 1.50 ms |",
		"| floor: fasthttp-bare, 504 after 50 ms |",
		"10 of 10",
		"1 (25%)",
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("markdown lacks %q:\n%s", want, b.String())
		}
	}
}

// An interrupted run's report says first where it stopped: at a cell, or
// after a scenario's last one, as the signal came between two scenarios.
func TestWriteMarkdown_an_interrupted_run(t *testing.T) {
	t.Parallel()
	rows := []throughputRow{{Variant: fasthttpBare, Conns: 64, ReqPerSec: 1000}}
	for _, tc := range []struct {
		at   interruption
		want string
	}{
		{interruption{Signal: "interrupt", Scenario: scenarioStorm, Cell: "fasttimeout-race, 64 conns"},
			"**Interrupted** (interrupt) in the storm scenario at fasttimeout-race, 64 conns: this report holds the cells finished before it; that cell and the ones after it were not measured.\n\nMachine: "},
		{interruption{Signal: "terminated", Scenario: scenarioThroughput},
			"**Interrupted** (terminated) after the last cell of the throughput scenario: this report holds the cells finished before it; those after it were not measured.\n\nMachine: "},
	} {
		var b bytes.Buffer
		if err := writeMarkdown(&b, report{Throughput: rows, Interrupted: &tc.at}); err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(b.String(), tc.want) || !strings.Contains(b.String(), "| fasthttp-bare | 64 | 1000 |") {
			t.Errorf("markdown:\n%s\nwant it to start with %q, then the throughput row", b.String(), tc.want)
		}
	}
	var b bytes.Buffer
	if err := writeMarkdown(&b, report{Throughput: rows}); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(b.String(), "Interrupted") {
		t.Errorf("a finished run's markdown says it was interrupted:\n%s", b.String())
	}
}

// requireFlagErrors checks that each of bads is refused by parseFlags with a
// one-line error.
func requireFlagErrors(t *testing.T, bads [][]string) {
	t.Helper()
	for _, bad := range bads {
		if _, err := parseFlags(bad); err == nil || strings.Contains(err.Error(), "\n") {
			t.Errorf("%q: error %v, want a one-line error", bad, err)
		}
	}
}

// parseRow parses a table row's args: with wantErr, it checks that the
// command line is refused with an error containing it, and reports false;
// without, it fails the test on any error.
func parseRow(t *testing.T, args []string, wantErr string) (options, bool) {
	t.Helper()
	o, err := parseFlags(args)
	if wantErr != "" {
		if err == nil || !strings.Contains(err.Error(), wantErr) {
			t.Errorf("error %v, want one containing %q", err, wantErr)
		}
		return o, false
	}
	if err != nil {
		t.Fatal(err)
	}
	return o, true
}

func TestParseFlags(t *testing.T) {
	o, err := parseFlags([]string{"-smoke", "-variants", "nethttp-bare, fasthttp-bare"})
	if err != nil {
		t.Fatal(err)
	}
	if o.duration != 150*time.Millisecond || len(o.conns) != 2 || o.stormConns != 64 {
		t.Errorf("smoke: %v, %v, %d", o.duration, o.conns, o.stormConns)
	}
	if got := strings.Join(o.variants, ","); got != "fasthttp-bare,nethttp-bare" {
		t.Errorf("variants %q, want them in table order", got)
	}
	o, err = parseFlags([]string{"-smoke", "-duration", "1s"})
	if err != nil || o.duration != time.Second {
		t.Errorf("an explicit -duration wins over -smoke: %v, %v", o.duration, err)
	}
	requireFlagErrors(t, [][]string{
		{"-conns", "64,x"}, {"-conns", "0"}, {"-variants", "gin"}, {"-scenarios", "soak"},
		{"-duration", "-1s"}, {"-storm-conns", "0"}, {"-nope"}, {"extra"},
	})
	if _, err := parseFlags([]string{"-h"}); !errors.Is(err, flag.ErrHelp) {
		t.Errorf("-h: %v, want flag.ErrHelp", err)
	}
}

func TestBurstResultCount(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		status  int
		headers map[string]string
		elapsed time.Duration
		want    burstResult
		late    int64 // recorded, for a timeout answer
	}{
		{name: "own 200 in time", status: 200, headers: map[string]string{lateHeader: "-1500"},
			want: burstResult{responses: 1, ok: 1}},
		{name: "own 200 after the deadline", status: 200, headers: map[string]string{lateHeader: "30000"},
			want: burstResult{responses: 1, ok: 1, ownLate: 1}},
		{name: "own 200 without a stamp", status: 200,
			want: burstResult{responses: 1, ok: 1}},
		{name: "timeout answer", status: 504, elapsed: burstTimeout + 3*time.Millisecond,
			want: burstResult{responses: 1, timeouts: 1, latenessMax: int64(3 * time.Millisecond)}, late: int64(3 * time.Millisecond)},
		{name: "timeout answer before the client's deadline", status: 504, elapsed: burstTimeout - time.Millisecond,
			want: burstResult{responses: 1, timeouts: 1}},
		{name: "re-raised panic", status: 500, headers: map[string]string{escapedHeader: "1"},
			want: burstResult{responses: 1, escaped: 1}},
		{name: "other 500", status: 500,
			want: burstResult{responses: 1, other: 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var resp fasthttp.Response
			resp.SetStatusCode(tt.status)
			for k, v := range tt.headers {
				resp.Header.Set(k, v)
			}
			var lateness sharedHistogram
			c := burstClient{late: latencyBatch{into: &lateness}}
			c.count(&resp, tt.elapsed)
			c.late.flush()
			if !reflect.DeepEqual(c.res, tt.want) {
				t.Errorf("got %+v, want %+v", c.res, tt.want)
			}
			switch n := lateness.h.count(); {
			case n != tt.want.timeouts:
				t.Errorf("%d latenesses recorded, want %d", n, tt.want.timeouts)
			case n == 1 && math.Abs(lateness.h.quantiles(100)[0]/float64(max(tt.late, 1))-1) > 0.001:
				t.Errorf("lateness %v recorded, want %d within 0.1%%", lateness.h.quantiles(100)[0], tt.late)
			}
		})
	}
}

func TestBurstRowFill(t *testing.T) {
	t.Parallel()
	var timeouts []int64
	for i := int64(1); i <= 100; i++ {
		timeouts = append(timeouts, i*int64(time.Millisecond))
	}
	res := burstResult{elapsed: 1500 * time.Millisecond, responses: 160, ok: 55, ownLate: 4,
		timeouts: int64(len(timeouts)), lateness: histogramOf(timeouts...), latenessMax: slices.Max(timeouts), escaped: 3, other: 2, errors: 1}
	before := serverStats{Burst: burstServerStats{LateReturns: 10, MwLateReturn: 9, MwTimeouts: 9}}
	settled := serverStats{PeakGoroutines: 1200, Burst: burstServerStats{LateReturns: 117, MwLateReturn: 109, MwTimeouts: 109}}
	r := burstRow{Variant: ftRace, Conns: 32, PerConn: 5}
	r.fill(res, before, settled)
	want := burstRow{
		Variant: ftRace, Conns: 32, PerConn: 5, Seconds: 1.5,
		Responses: 160, OK: 55, Timeouts: 100, Other: 2, Errors: 1,
		OwnAfterDeadline: 4, EscapedPanics: 3,
		LateReturns: 107, MiddlewareLate: 100, MiddlewareTimeouts: 100,
		PeakGoroutines: 1200,
	}
	lat := [3]float64{r.LatenessP50Ms, r.LatenessP99Ms, r.LatenessMaxMs}
	r.LatenessP50Ms, r.LatenessP99Ms, r.LatenessMaxMs = 0, 0, 0
	if !reflect.DeepEqual(r, want) {
		t.Errorf("got  %+v\nwant %+v", r, want)
	}
	for i, w := range []float64{50, 99, 100} {
		if d := lat[i]/w - 1; d < -0.001 || d > 0.001 {
			t.Errorf("lateness %d: %v ms, want %v within 0.1%%", i, lat[i], w)
		}
	}
}

func TestWriteMarkdownBurst(t *testing.T) {
	t.Parallel()
	rep := report{
		Burst: burstConfig{Conns: 512, PerConn: 50, TimeoutMs: 40, Kinds: burstKinds, Shared: true},
		BurstRows: []burstRow{
			{Variant: fasthttpTWCH, Conns: 512, PerConn: 50, Responses: 25600, Timeouts: 15360, LatenessP50Ms: 2.5, LatenessP99Ms: 17.65, LatenessMaxMs: 35.8, LateReturns: 15360, PeakGoroutines: 2066, Seconds: 1.4},
			{Variant: ftRace, Conns: 512, PerConn: 50, Responses: 25590, Timeouts: 15325, OwnAfterDeadline: 31, EscapedPanics: 4, LateReturns: 15360, MiddlewareLate: 15325},
			{Variant: ftCooperative, Conns: 512, PerConn: 50, Crashed: true, Error: "server died: EOF"},
			{Variant: ftRace, Conns: 512, PerConn: 50, Error: "every connection failed"},
		},
	}
	var b bytes.Buffer
	if err := writeMarkdown(&b, rep); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"### Burst (512 connections opened at once × 50 requests, timeout 40 ms, server in the load generator's process; handlers in turn: fast, ignore, honour, panic, stream)",
		"| fasthttp-TimeoutWithCodeHandler | 25600 | 15360 | 2.50 ms | 17.65 ms | 35.80 ms | 0 | 0 | 15360 / – | no | 2066 | 1.4 s |",
		"| fasttimeout-race | 25590 (10 missing) | 15325 |",
		"| 31 | 4 | 15360 / 15325 | no |",
		"| fasttimeout-cooperative | 0 (25600 missing) |",
		"| **yes** |",
		"| fasttimeout-race | failed: every connection failed |",
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("markdown lacks %q:\n%s", want, b.String())
		}
	}
	if strings.Contains(b.String(), "Each cell") {
		t.Errorf("a burst-only report mentions cells:\n%s", b.String())
	}
}

func TestBurstVariants(t *testing.T) {
	t.Parallel()
	got := burstVariants(allVariants)
	want := []string{fasthttpTWCH, ftRace, ftCooperative}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("burstVariants(all) = %v, want %v", got, want)
	}
	if got := burstVariants([]string{fasthttpBare, nethttpTimeout}); len(got) != 0 {
		t.Errorf("burstVariants without burst variants = %v, want none", got)
	}
}

func TestParseFlagsBurst(t *testing.T) {
	t.Parallel()
	tests := []struct {
		args           []string
		conns, perConn int
		shared         bool
		wantErr        string
	}{
		{args: nil, conns: 512, perConn: 50, shared: true},
		{args: []string{"-smoke"}, conns: 16, perConn: 5, shared: true},
		{args: []string{"-smoke", "-burst-conns", "100"}, conns: 100, perConn: 5, shared: true},
		{args: []string{"-burst-requests", "7", "-burst-shared=false"}, conns: 512, perConn: 7},
		{args: []string{"-burst-conns", "0"}, wantErr: "-burst-conns must be between 1 and 10000, got 0"},
		{args: []string{"-burst-conns", "10001"}, wantErr: "-burst-conns must be between 1 and 10000"},
		{args: []string{"-burst-requests", "0"}, wantErr: "-burst-requests must be between 1 and 1000, got 0"},
		{args: []string{"-burst-requests", "1001"}, wantErr: "-burst-requests must be between 1 and 1000"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			t.Parallel()
			o, ok := parseRow(t, tt.args, tt.wantErr)
			if !ok {
				return
			}
			if o.burstConns != tt.conns || o.burstReqs != tt.perConn || o.shared != tt.shared {
				t.Errorf("burst %d × %d, shared %v; want %d × %d, shared %v", o.burstConns, o.burstReqs, o.shared, tt.conns, tt.perConn, tt.shared)
			}
			if !contains(o.scenarios, scenarioBurst) {
				t.Errorf("scenarios %v lack the burst", o.scenarios)
			}
		})
	}
}

func TestWriteChartBurst(t *testing.T) {
	t.Parallel()
	rep := report{
		Burst: burstConfig{Conns: 16, PerConn: 5, TimeoutMs: 40},
		BurstRows: []burstRow{
			{Variant: fasthttpTWCH, LatenessP50Ms: 1, LatenessP99Ms: 2, LatenessMaxMs: 3},
			{Variant: ftRace, LatenessP50Ms: 2, LatenessP99Ms: 40, LatenessMaxMs: 70},
			{Variant: ftCooperative, Error: "failed"},
		},
	}
	path := filepath.Join(t.TempDir(), "burst.png")
	if err := writeChart(path, rep); err != nil {
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

// A run whose throughput cells all failed still gets its chart, and so
// its report, which is written after the chart.
func TestWriteChart_throughput_all_failed(t *testing.T) {
	t.Parallel()
	rep := report{
		Throughput: []throughputRow{{Variant: fasthttpBare, Conns: 64, Error: "server did not start"}},
		StormRows:  []stormRow{{Variant: fasthttpBare, LatenessP50Ms: 1, LatenessP99Ms: 2}},
	}
	path := filepath.Join(t.TempDir(), "chart.png")
	var err error
	func() {
		defer func() {
			if v := recover(); v != nil {
				t.Fatalf("writeChart panicked: %v", v)
			}
		}()
		err = writeChart(path, rep)
	}()
	if err != nil {
		t.Fatal(err)
	}
}

// A failed storm cell has no lateness: the chart leaves it out rather than
// drawing it as 0 ms, the best result.
func TestStormChart_failed_cell(t *testing.T) {
	t.Parallel()
	rep := report{StormRows: []stormRow{
		{Variant: fasthttpBare, LatenessP50Ms: 1, LatenessP99Ms: 2},
		{Variant: ftRace, Error: "server did not start"},
	}}
	p, err := stormChart(rep)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, tick := range p.X.Tick.Marker.Ticks(p.X.Min, p.X.Max) {
		names = append(names, tick.Label)
	}
	if !reflect.DeepEqual(names, []string{"floor (fasthttp-bare)"}) {
		t.Errorf("storm chart bars %q, want the floor's only", names)
	}
	rep.StormRows = rep.StormRows[1:]
	if _, err := stormChart(rep); err != nil {
		t.Errorf("storm chart of failed cells only: %v", err)
	}
}

// The rate counts every answer read in the window, and the server's CPU
// in the window is shared by all of them: the measured responses (for the
// latencies) leave out each connection's first answer in the window, whose
// request was sent before it, so with one connection that answers in
// 500 ms, a 1 s window holds 2 answers and 1 measured response.
func TestRowFill_rate_counts_every_answer_in_the_window(t *testing.T) {
	t.Parallel()
	res := loadResult{elapsed: time.Second, latencies: histogramOf(500e6), timeouts: histogramOf(450e6),
		statuses: map[int]int64{504: 1}, answered: 2}
	var tr throughputRow
	tr.fill(res, serverStats{CPUNanos: 0}, serverStats{CPUNanos: 2e6})
	if tr.ReqPerSec != 2 || tr.CPUMicrosPerRq != 1000 || tr.Requests != 1 {
		t.Errorf("throughput: %v req/s, %v µs of CPU per request, %d measured; want 2, 1000, 1", tr.ReqPerSec, tr.CPUMicrosPerRq, tr.Requests)
	}
	var sr stormRow
	sr.fill(res, serverStats{}, serverStats{}, serverStats{})
	if sr.ReqPerSec != 2 || sr.Requests != 1 || sr.Timeouts != 1 {
		t.Errorf("storm: %v req/s, %d measured, %d timeouts; want 2, 1, 1", sr.ReqPerSec, sr.Requests, sr.Timeouts)
	}
}

// loadClient counts every answer it reads in the window, and measures
// those whose request it also sent in the window. The server here answers
// each request when the test says, and the test moves the phase between
// answers: the first request is sent in the warm-up and answered in the
// window, the second sent and answered in it, the third answered after.
func TestLoadClient_window(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	got, answer := make(chan struct{}), make(chan struct{})
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		defer conn.Close()
		br := bufio.NewReader(conn)
		for {
			var req fasthttp.Request
			if err := req.Read(br); err != nil {
				return
			}
			got <- struct{}{}
			<-answer
			if _, err := io.WriteString(conn, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"); err != nil {
				return
			}
		}
	}()
	var phase atomic.Int32 // phaseWarmup
	var latencies sharedHistogram
	c := &loadClient{statuses: map[int]int64{}, latencies: latencyBatch{into: &latencies}}
	done := make(chan struct{})
	go func() { c.run(ln.Addr().String(), &phase, 0, 0); close(done) }()
	next := func() {
		select {
		case <-got:
		case <-done:
			t.Fatalf("the client ended early: %v", c.err)
		}
	}
	next() // the first request, sent in the warm-up
	phase.Store(phaseMeasure)
	answer <- struct{}{}
	next() // the second, sent in the window
	answer <- struct{}{}
	next() // the third
	phase.Store(phaseDone)
	answer <- struct{}{}
	<-done
	if c.err != nil {
		t.Fatal(c.err)
	}
	if c.answered != 2 || latencies.h.count() != 1 || c.statuses[200] != 1 {
		t.Errorf("%d answered in the window, %d measured, statuses %v; want 2, 1, 200: 1", c.answered, latencies.h.count(), c.statuses)
	}
}

// The burst's lateness max is the slowest timeout answer's, not the top of
// its histogram bucket (up to 0.1 % above it), and no percentile is shown
// past it.
func TestBurstRowFill_max_is_exact(t *testing.T) {
	t.Parallel()
	res := burstResult{timeouts: 2, lateness: histogramOf(int64(time.Millisecond), 34_540_000), latenessMax: 34_540_000}
	var r burstRow
	r.fill(res, serverStats{}, serverStats{})
	if r.LatenessMaxMs != 34.54 || r.LatenessP99Ms > r.LatenessMaxMs || r.LatenessP50Ms > r.LatenessMaxMs {
		t.Errorf("lateness p50 %v, p99 %v, max %v ms; want max 34.54 and neither percentile above it",
			r.LatenessP50Ms, r.LatenessP99Ms, r.LatenessMaxMs)
	}
}
