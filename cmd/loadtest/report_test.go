package main

import (
	"bytes"
	"flag"
	"strings"
	"testing"
	"time"
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

func TestThroughputRowFill(t *testing.T) {
	res := loadResult{
		elapsed:   2 * time.Second,
		latencies: []int64{1e3, 2e3, 3e3, 4e3},
		statuses:  map[int]int64{200: 3, 503: 1},
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
		latencies: []int64{51e6, 52e6, 10e6},
		timeouts:  []int64{1e6, 2e6},
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
	for _, bad := range [][]string{
		{"-conns", "64,x"}, {"-conns", "0"}, {"-variants", "gin"}, {"-scenarios", "soak"},
		{"-duration", "-1s"}, {"-storm-conns", "0"}, {"-nope"}, {"extra"},
	} {
		if _, err := parseFlags(bad); err == nil || strings.Contains(err.Error(), "\n") {
			t.Errorf("%q: error %v, want a one-line error", bad, err)
		}
	}
	if _, err := parseFlags([]string{"-h"}); err != flag.ErrHelp {
		t.Errorf("-h: %v, want flag.ErrHelp", err)
	}
}
