package main

import (
	"slices"
	"strings"
	"testing"
	"time"
)

func TestHangupSchedule(t *testing.T) {
	for _, tc := range []struct {
		rounds int
		want   []bool
	}{
		{1, []bool{true, false}},
		{2, []bool{true, false, false, true}},
		{3, []bool{true, false, false, true, true, false}},
	} {
		if got := hangupSchedule(tc.rounds); !slices.Equal(got, tc.want) {
			t.Errorf("%d rounds: %v, want %v", tc.rounds, got, tc.want)
		}
	}
}

func TestHangupRows(t *testing.T) {
	stats := func(cpuMs, gone, inFlight int64) hangupStats {
		return hangupStats{CPUNanos: cpuMs * 1e6, ClientGone: gone, InFlight: inFlight}
	}
	windows := []hangupWindow{ // on, off, off, on; 1 s each
		newHangupWindow(true, time.Second, 500, stats(0, 0, 100), stats(300, 0, 99)),
		newHangupWindow(false, time.Second, 400, stats(1000, 0, 100), stats(1200, 0, 100)),
		newHangupWindow(false, time.Second, 600, stats(2000, 0, 98), stats(2100, 0, 100)),
		newHangupWindow(true, time.Second, 500, stats(3000, 2, 100), stats(3500, 3, 100)),
	}
	on, off, diff := hangupRows(ftRace, windows)
	for _, tc := range []struct {
		name           string
		row            hangupRow
		watch          bool
		cpu, reqPerSec float64
		windows        []float64
		inFlight, gone int64
	}{
		{"on", on, true, 40, 500, []float64{30, 50}, 99, 1},
		{"off", off, false, 15, 500, []float64{20, 10}, 98, 0},
	} {
		r := tc.row
		if r.Variant != ftRace || r.Watch != tc.watch || r.CPUPercent != tc.cpu || r.ReqPerSec != tc.reqPerSec ||
			!slices.Equal(r.WindowsPct, tc.windows) || r.InFlight != tc.inFlight || r.ClientGone != tc.gone {
			t.Errorf("%s: %+v; want watch %v, CPU %v, req/s %v, windows %v, in flight %d, gone %d",
				tc.name, r, tc.watch, tc.cpu, tc.reqPerSec, tc.windows, tc.inFlight, tc.gone)
		}
	}
	if diff.OnPct != 40 || diff.OffPct != 15 || diff.DiffPct != 25 || !slices.Equal(diff.PairsPct, []float64{10, 40}) {
		t.Errorf("diff %+v; want 40 − 15 = 25, pairs [10 40]", diff)
	}
}

func TestSummarizeProbes(t *testing.T) {
	const t0, ms = int64(1.7e18), int64(time.Millisecond) // Unix nanoseconds
	probes := []probeResult{
		{Started: t0, Closed: t0 + 1*ms, Noticed: t0 + 5*ms},                // closed before the watch: 4 ms
		{Started: t0, Closed: t0 + 10*ms, Noticed: t0 + 11*ms},              // watched: 1 ms
		{Started: t0, Closed: t0 + 20*ms, Noticed: t0 + 22*ms, Reset: true}, // watched: 2 ms
		{Closed: t0 + 5*ms, Reset: true},                                    // never reached its handler
		{Started: t0, Closed: t0 + 7*ms},                                    // not noticed
	}
	r := summarizeProbes(probes)
	want := noticeRow{Probes: 5, Resets: 2, Noticed: 3, NotStarted: 1, Watched: 2}
	if r.Probes != want.Probes || r.Resets != want.Resets || r.Noticed != want.Noticed ||
		r.NotStarted != want.NotStarted || r.Watched != want.Watched {
		t.Errorf("counts %+v; want %+v", r, want)
	}
	for _, tc := range []struct {
		name      string
		got, want float64
	}{
		{"p50", r.P50Ms, 2}, {"p99", r.P99Ms, 4}, {"max", r.MaxMs, 4},
		{"watched p99", r.WatchedP99Ms, 2}, {"watched max", r.WatchedMaxMs, 2},
	} {
		if d := tc.got/tc.want - 1; d < -0.001 || d > 0.001 {
			t.Errorf("%s: %v ms, want %v within 0.1%%", tc.name, tc.got, tc.want)
		}
	}
	if empty := summarizeProbes(nil); empty != (noticeRow{}) {
		t.Errorf("no probes: %+v, want zeros", empty)
	}
}

func TestParseHangupSpec(t *testing.T) {
	cfg := hangupConfig{WorkMs: 2000}
	v, work, err := parseHangupSpec(hangupSpec(ftCooperative, cfg))
	if err != nil || v != ftCooperative || work != 2*time.Second {
		t.Errorf("round trip: %q, %v, %v", v, work, err)
	}
	for _, bad := range []string{"", "fasttimeout-race", "fasttimeout-race/", "fasttimeout-race/0", "/100", "x/1s"} {
		if _, _, err := parseHangupSpec(bad); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
}

func TestProbeID(t *testing.T) {
	for _, tc := range []struct {
		path string
		id   int
		ok   bool
	}{
		{"/probe/17", 17, true},
		{"/probe/", 0, false},
		{"/probe/x", 0, false},
		{"/", 0, false},
		{"/probes/1", 0, false},
	} {
		if id, ok := probeID([]byte(tc.path)); id != tc.id || ok != tc.ok {
			t.Errorf("%q: %d, %v; want %d, %v", tc.path, id, ok, tc.id, tc.ok)
		}
	}
}

func TestHangupVariants(t *testing.T) {
	got := hangupVariants([]string{fasthttpBare, ftRace, ftRaceContext, ftCooperative, nethttpBare})
	if !slices.Equal(got, []string{ftRace, ftCooperative}) {
		t.Errorf("%v, want the two modes of fasttimeout", got)
	}
}

func TestWriteHangupMarkdown(t *testing.T) {
	h := &hangupReport{
		Config: hangupConfig{Conns: 10000, WorkMs: 2000, TimeoutMs: 4000, WindowMs: 3000, Rounds: 2},
		Rows: []hangupRow{
			{Variant: ftRace, Watch: true, InFlight: 9990, ReqPerSec: 4990, CPUPercent: 41.26, WindowsPct: []float64{41, 41.5},
				Idle:   &noticeRow{Probes: 300, Resets: 100, Noticed: 300, P50Ms: 0.2, P99Ms: 4.5, MaxMs: 5.1, Watched: 240, WatchedP99Ms: 0.9, WatchedMaxMs: 1.2, ServerLagMs: 0.3},
				Loaded: &noticeRow{Probes: 300, Resets: 100, Noticed: 299, NotStarted: 1, P50Ms: 0.5, P99Ms: 7, MaxMs: 9.5}},
			{Variant: ftRace, InFlight: 10000, ReqPerSec: 5000, CPUPercent: 40, WindowsPct: []float64{40.5, 39.5}},
			{Variant: ftRaceContext, InFlight: 8000, WindowsPct: []float64{1}},
			{Variant: ftCooperative, Watch: true, Error: "server died\nbadly"},
			{Variant: ftCooperative, Error: "server died\nbadly"},
		},
		Diffs: []hangupDiff{{Variant: ftRace, OnPct: 41.26, OffPct: 40, DiffPct: 1.26, PairsPct: []float64{0.5, 2}}},
	}
	var b strings.Builder
	writeHangupMarkdown(&b, h)
	for _, want := range []string{
		"10000 connections",
		"| fasttimeout-race | on | 9990 | 4990 | 41.3 % | 41.0, 41.5 | 0 | 0 |",
		"| fasttimeout-race | off (IgnoreHangups) | 10000 | 5000 | 40.0 % | 40.5, 39.5 |",
		"| fasttimeout-race-context | off (IgnoreHangups) | 8000 (load not held) |",
		"| fasttimeout-cooperative | on | failed: server died badly |",
		"| fasttimeout-race | 41.3 % | 40.0 % | +1.3 | +0.5, +2.0 |",
		"| fasttimeout-race | idle | 300 | 100 | 300 | 0 | 0.20 ms | 4.50 ms | 5.10 ms | 240 | 0.90 ms | 1.20 ms | 0.30 ms |",
		"| fasttimeout-race | 10000 slow requests | 300 | 100 | 299 | 1 | 0.50 ms | 7.00 ms | 9.50 ms |",
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("markdown lacks %q:\n%s", want, b.String())
		}
	}
	var none strings.Builder
	writeHangupMarkdown(&none, nil)
	if none.Len() != 0 {
		t.Errorf("no scenario: %q, want nothing", none.String())
	}
}

func TestParseHangupFlags(t *testing.T) {
	for _, tc := range []struct {
		args          []string
		conns, rounds int
	}{
		{nil, 10000, 2},
		{[]string{"-smoke"}, 64, 1},
		{[]string{"-smoke", "-hangup-conns", "500", "-hangup-rounds", "3"}, 500, 3},
	} {
		o, err := parseFlags(tc.args)
		if err != nil || o.hangupConns != tc.conns || o.hangupRounds != tc.rounds {
			t.Errorf("%q: %d conns, %d rounds, %v; want %d, %d", tc.args, o.hangupConns, o.hangupRounds, err, tc.conns, tc.rounds)
		}
	}
	requireFlagErrors(t, [][]string{
		{"-hangup-conns", "0"}, {"-hangup-conns", "10001"}, {"-hangup-rounds", "0"}, {"-hangup-rounds", "101"},
	})
}
