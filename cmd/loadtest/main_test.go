package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestMain makes the test binary a server child when the parent's tests
// start one (startChildFiles runs this executable), as main does.
func TestMain(m *testing.M) {
	if spec := os.Getenv(serveEnv); spec != "" {
		if err := serveChild(spec, os.Stdin, os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, "loadtest server:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// Every flag that cannot run, or would measure nothing, is refused by
// parseFlags with a one-line error, before any load: not found at the end
// of a run, nor run as an empty report.
func TestParseFlags_refuses_what_cannot_run(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	chart := filepath.Join(dir, "out.png")
	if err := os.WriteFile(chart+".d", nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name    string
		args    []string
		wantErr string // "" for flags that run
	}{
		{name: "a chart that is not a PNG", args: []string{"-chart", filepath.Join(dir, "out.svg")},
			wantErr: "-chart " + filepath.Join(dir, "out.svg") + ": only PNG charts are written (name the file *.png)"},
		{name: "a chart in no directory", args: []string{"-chart", filepath.Join(dir, "none", "out.png")},
			wantErr: "-chart " + filepath.Join(dir, "none", "out.png") + ": stat " + filepath.Join(dir, "none") + ": no such file or directory"},
		{name: "a chart in a file", args: []string{"-chart", filepath.Join(chart+".d", "out.png")}, // chart+".d" is a file, made above
			wantErr: "is not a directory"},
		{name: "a chart of the hangup scenario alone", args: []string{"-scenarios", "hangup", "-chart", chart},
			wantErr: "-chart: the hangup scenario draws no chart; select another scenario too"},
		{name: "a chart of PNG in capitals", args: []string{"-chart", filepath.Join(dir, "OUT.PNG")}},
		{name: "a chart of hangup and storm", args: []string{"-scenarios", "hangup,storm", "-chart", chart}},
		{name: "a render to a chart that is not a PNG", args: []string{"-render", "r.json", "-chart", "out.jpg"},
			wantErr: "only PNG charts are written"},
		{name: "a render of some scenarios", args: []string{"-render", "r.json", "-scenarios", "storm"},
			wantErr: "-render writes a saved report again and measures nothing: -scenarios does not apply"},
		{name: "a render of a smoke run", args: []string{"-smoke", "-render", "r.json", "-json"},
			wantErr: "-smoke does not apply"},
		{name: "a render as JSON with a chart", args: []string{"-render", "r.json", "-json", "-chart", chart}},
		{name: "the burst without its variants", args: []string{"-scenarios", "burst", "-variants", "nethttp-bare"},
			wantErr: "-scenarios burst runs none of -variants nethttp-bare (its variants: fasthttp-TimeoutWithCodeHandler, fasttimeout-race, fasttimeout-cooperative)"},
		{name: "the storm without its variants", args: []string{"-scenarios", "throughput,storm", "-variants", "fasttimeout-race-context"},
			wantErr: "-scenarios storm runs none of -variants"},
		{name: "the hangup without its variants", args: []string{"-scenarios", "hangup", "-variants", "fasthttp-bare,nethttp-bare"},
			wantErr: "-scenarios hangup runs none of -variants fasthttp-bare,nethttp-bare (its variants: fasttimeout-race, fasttimeout-cooperative)"},
		{name: "every scenario, variants of some", args: []string{"-variants", "nethttp-bare"}},
		// The overload's variants are -overload-variants: -variants would be ignored.
		{name: "the overload with variants", args: []string{"-scenarios", "overload", "-variants", "nethttp-bare"},
			wantErr: "-variants is a flag of the throughput, storm, burst and hangup scenarios, which -scenarios overload does not select"},
		{name: "the burst and the overload with variants", args: []string{"-scenarios", "burst,overload", "-variants", "fasttimeout-race"}},
		{name: "a window of a nanosecond", args: []string{"-duration", "1ns"}, wantErr: "-duration must be between 10ms and 1h, got 1ns"},
		{name: "a window under a millisecond", args: []string{"-duration", "999us"}, wantErr: "-duration must be between 10ms and 1h"},
		{name: "a window of 10ms", args: []string{"-duration", "10ms"}},
		{name: "an overload cell under a millisecond", args: []string{"-cell", "500us"}, wantErr: "-cell must be between 10ms and 1h, got 500µs"},
		{name: "an overload cell of 10ms", args: []string{"-cell", "10ms"}},
		{name: "a soak under a millisecond", args: []string{"-soak", "1ns"}, wantErr: "-soak must be 0 or between 10ms and 1h, got 1ns"},
		{name: "a soak past an hour", args: []string{"-soak", "61m"}, wantErr: "-soak must be 0 or between 10ms and 1h"},
		{name: "no soak", args: []string{"-soak", "0"}},

		{name: "queries that outlast the deadline", args: []string{"-db-queries", "200"},
			wantErr: "-db-queries 200 take 1s a request (5ms each), not less than -overload-timeout 1s: no request of the downstream workload could be answered in time"},
		{name: "queries that outlast the smoke's deadline", args: []string{"-smoke", "-db-queries", "20"},
			wantErr: "-db-queries 20 take 100ms a request (5ms each), not less than -overload-timeout 100ms"},
		{name: "queries within the deadline", args: []string{"-db-queries", "199"}},
		{name: "queries without the downstream workload", args: []string{"-overload-workloads", "cpu", "-db-queries", "200"}},

		// Go's literal forms, which flag.Int reads ("0x10" as 16, "010"
		// as 8), and strconv's leading "+": a count is decimal.
		{name: "storm connections in hex", args: []string{"-storm-conns", "0x10"},
			wantErr: `invalid value "0x10" for flag -storm-conns: want a decimal number`},
		{name: "burst connections with underscores", args: []string{"-burst-conns", "1_000"},
			wantErr: `invalid value "1_000" for flag -burst-conns: want a decimal number`},
		{name: "burst requests in octal", args: []string{"-burst-requests", "0o17"},
			wantErr: `invalid value "0o17" for flag -burst-requests: want a decimal number`},
		{name: "hangup connections in binary", args: []string{"-hangup-conns", "0b11"},
			wantErr: `invalid value "0b11" for flag -hangup-conns: want a decimal number`},
		{name: "hangup rounds with a plus", args: []string{"-hangup-rounds", "+2"},
			wantErr: `invalid value "+2" for flag -hangup-rounds: want a decimal number`},
		{name: "generator connections in hex", args: []string{"-max-conns", "0X10"},
			wantErr: `invalid value "0X10" for flag -max-conns: want a decimal number`},
		{name: "queries out of range", args: []string{"-db-queries", "99999999999999999999"},
			wantErr: `invalid value "99999999999999999999" for flag -db-queries: out of range`},
		{name: "negative queries", args: []string{"-db-queries", "-1"}, wantErr: "-db-queries must be between 1 and 1000, got -1"},
		{name: "throughput connections with a plus", args: []string{"-conns", "+4,32"},
			wantErr: `-conns wants a comma-separated list of decimal counts between 1 and 10000, got "+4,32"`},
		{name: "a sweep in hex", args: []string{"-overload-sweep", "0x10"},
			wantErr: `-overload-sweep wants a comma-separated list of decimal counts between 1 and 100000, got "0x10"`},
		{name: "a load as a hex float", args: []string{"-overload-loads", "0x1p2"},
			wantErr: `-overload-loads wants a comma-separated list of decimal multiples of the capacity between 0.01 and 100, got "0x1p2"`},
		{name: "a load with underscores", args: []string{"-overload-loads", "1_0"}, wantErr: "-overload-loads wants"},
		{name: "a load with a plus", args: []string{"-overload-loads", "+4"}, wantErr: "-overload-loads wants"},
		{name: "a load with an exponent", args: []string{"-overload-loads", "4e0"}, wantErr: "-overload-loads wants"},
		{name: "loads with a point", args: []string{"-overload-loads", "0.5, 2,.25,10."}},

		// A scenario's flag matters only if the scenario runs: one set for
		// a scenario left out would be ignored.
		{name: "the overload's loads with the storm alone", args: []string{"-overload-loads", "2,4", "-scenarios", "storm"},
			wantErr: "-overload-loads is a flag of the overload scenario, which -scenarios storm does not select"},
		{name: "a bad value of a scenario left out", args: []string{"-scenarios", "storm", "-overload-loads", "x"},
			wantErr: "-overload-loads is a flag of the overload scenario, which -scenarios storm does not select"},
		{name: "the throughput's connections without it", args: []string{"-scenarios", "storm,burst", "-conns", "8"},
			wantErr: "-conns is a flag of the throughput scenario, which -scenarios storm,burst does not select"},
		{name: "the storm's connections without it", args: []string{"-scenarios", "throughput", "-storm-conns", "8"},
			wantErr: "-storm-conns is a flag of the storm scenario"},
		{name: "the burst's server without the burst", args: []string{"-scenarios", "hangup", "-burst-shared=false"},
			wantErr: "-burst-shared is a flag of the burst scenario, which -scenarios hangup does not select"},
		{name: "the hangup's rounds without it", args: []string{"-scenarios", "overload", "-hangup-rounds", "3"},
			wantErr: "-hangup-rounds is a flag of the hangup scenario"},
		{name: "a soak without the overload", args: []string{"-scenarios", "throughput,storm,burst,hangup", "-soak", "60s"},
			wantErr: "-soak is a flag of the overload scenario, which -scenarios throughput,storm,burst,hangup does not select"},
		{name: "the closed-loop cells' time with the burst and the overload alone", args: []string{"-scenarios", "burst,overload", "-duration", "5s"},
			wantErr: "-duration is a flag of the throughput, storm and hangup scenarios, which -scenarios burst,overload does not select"},
		{name: "a warm-up with the overload alone", args: []string{"-scenarios", "overload", "-warmup", "1s"},
			wantErr: "-warmup is a flag of the throughput, storm and hangup scenarios"},
		{name: "a warm-up with the storm", args: []string{"-scenarios", "storm", "-warmup", "1s", "-duration", "2s"}},
		{name: "flags of two scenarios, both selected", args: []string{"-scenarios", "hangup,storm", "-hangup-rounds", "3", "-storm-conns", "8"}},
		{name: "a scenario's flag, every scenario selected", args: []string{"-overload-loads", "2", "-burst-conns", "8"}},
		{name: "a smoke run of one scenario", args: []string{"-smoke", "-scenarios", "burst"}},
		// By default a scenario that runs none of -variants is skipped:
		// a flag of its own would be ignored as well.
		{name: "the hangup's connections, -variants leaving it out", args: []string{"-variants", "fasthttp-bare,nethttp-bare", "-hangup-conns", "100"},
			wantErr: "-hangup-conns is a flag of the hangup scenario, which runs none of -variants fasthttp-bare,nethttp-bare (its variants: fasttimeout-race, fasttimeout-cooperative)"},
		{name: "the burst's server, -variants leaving it out", args: []string{"-variants", "fasthttp-bare", "-burst-shared=false"},
			wantErr: "-burst-shared is a flag of the burst scenario, which runs none of -variants fasthttp-bare"},
		{name: "the storm's connections, -variants leaving it out", args: []string{"-variants", "fasttimeout-race-context", "-storm-conns", "8"},
			wantErr: "-storm-conns is a flag of the storm scenario, which runs none of -variants fasttimeout-race-context"},
		{name: "the hangup's connections, one of its variants", args: []string{"-variants", "fasthttp-bare,fasttimeout-race", "-hangup-conns", "100"}},
		{name: "the overload's loads, any variants", args: []string{"-variants", "nethttp-bare", "-overload-loads", "2"}},

		// Every arrival of a cell costs the generator memory until the
		// cell is reported, and request ids are 32 bits: a cell may
		// schedule 30 million at most, at the most each workload's
		// capacity can be (cpu 667/s, downstream 4000/s ÷ -db-queries).
		{name: "loads of 100x for an hour", args: []string{"-overload-loads", "100", "-cell", "1h"},
			wantErr: "-overload-loads 100 with -cell 1h0m0s on the cpu workload: up to 66667 arrivals a second for 1h0m3.1s (with -cell-warmup and -overload-timeout) schedules 240.2 million in a cell, more than 30 million: offer less or measure shorter"},
		{name: "a soak of an hour with one query a request", args: []string{"-overload-workloads", "downstream", "-db-queries", "1", "-soak", "1h"},
			wantErr: "-soak 1h0m0s at 10x on the downstream workload: up to 40000 arrivals a second for 1h0m3.1s"},
		{name: "a sweep of an hour with one query a request", args: []string{"-overload-workloads", "downstream", "-db-queries", "1", "-overload-loads", "1", "-cell", "1h"},
			wantErr: "the sweep (4x the first estimate) with -cell 1h0m0s on the downstream workload: up to 16000 arrivals a second"},
		{name: "a soak of an hour at 10x", args: []string{"-soak", "1h"}},
		{name: "cells of an hour from 1x to 10x", args: []string{"-overload-loads", "1,2,4,10", "-cell", "1h"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := parseFlags(tt.args)
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("%q: %v, want it to run", tt.args, err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Fatalf("%q: error %v, want one containing %q", tt.args, err, tt.wantErr)
			case err != nil && strings.Contains(err.Error(), "\n"):
				t.Fatalf("%q: error %q, want one line", tt.args, err)
			}
		})
	}
}

// A chart that cannot be written (its directory went away during the run)
// fails the run, but the report, the run's measurements, is still written.
func TestWriteReport_a_chart_that_fails_keeps_the_report(t *testing.T) {
	t.Parallel()
	for _, asJSON := range []bool{false, true} {
		t.Run(fmt.Sprint("json=", asJSON), func(t *testing.T) {
			t.Parallel()
			var out strings.Builder
			chart := filepath.Join(t.TempDir(), "gone", "out.png")
			err := writeReport(options{json: asJSON, chart: chart}, overloadTestReport(), &out)
			if err == nil || !strings.Contains(err.Error(), "chart: ") {
				t.Errorf("error %v, want the chart's", err)
			}
			if !strings.Contains(out.String(), "fasttimeout-race-adaptive") {
				t.Errorf("report %q, want it written whole", out.String())
			}
		})
	}
}

// Counts are read in decimal, a leading zero too: flag.Int took "010" for
// 8.
func TestParseFlags_counts_are_decimal(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		flag, value string
		got         func(options) int
		want        int
	}{
		{"storm-conns", "010", func(o options) int { return o.stormConns }, 10},
		{"burst-conns", "010", func(o options) int { return o.burstConns }, 10},
		{"burst-requests", "010", func(o options) int { return o.burstReqs }, 10},
		{"hangup-conns", "0100", func(o options) int { return o.hangupConns }, 100},
		{"hangup-rounds", "010", func(o options) int { return o.hangupRounds }, 10},
		{"max-conns", "010", func(o options) int { return o.olMaxConns }, 10},
		{"db-queries", "010", func(o options) int { return o.olQueries }, 10},
		{"conns", "010", func(o options) int { return o.conns[0] }, 10},
		{"overload-sweep", "010", func(o options) int { return o.olSweep[0] }, 10},
		{"storm-conns", "", func(o options) int { return o.stormConns }, 1000}, // the default
		{"db-queries", "", func(o options) int { return o.olQueries }, 8},
	} {
		t.Run(tt.flag+"="+tt.value, func(t *testing.T) {
			t.Parallel()
			var args []string
			if tt.value != "" {
				args = []string{"-" + tt.flag, tt.value}
			}
			o, err := parseFlags(args)
			if err != nil {
				t.Fatalf("%q: %v", args, err)
			}
			if got := tt.got(o); got != tt.want {
				t.Errorf("%q: %d, want %d", args, got, tt.want)
			}
		})
	}
}

// A bad command line exits 2 with one line that points to -h, before any
// load: the context is done, so a command line wrongly taken ends at once
// (exit 1) rather than measuring.
func TestCommand_a_bad_flag_exits_2_with_one_line(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	for _, args := range [][]string{
		{"-nope"}, {"extra"}, {"-storm-conns", "0x10"}, {"-db-queries", "1_000"}, {"-conns", "+4"},
		{"-storm-conns", "0"}, {"-scenarios", "gin"}, {"-render", "r.json", "-smoke"},
	} {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			t.Parallel()
			var stdout, stderr strings.Builder
			if code := command(ctx, args, &stdout, &stderr); code != 2 {
				t.Errorf("exit %d, want 2; stderr %q", code, stderr.String())
			}
			msg := stderr.String()
			if !strings.HasPrefix(msg, "loadtest: ") || !strings.HasSuffix(msg, " (see loadtest -h)\n") || strings.Count(msg, "\n") != 1 {
				t.Errorf("stderr %q, want one line that starts with loadtest: and points to -h", msg)
			}
			if stdout.Len() > 0 {
				t.Errorf("stdout %q, want nothing", stdout.String())
			}
		})
	}
}

// -h writes the usage, every flag with its default, to the stderr that
// command is given, and nothing to the process's: a caller reading what
// command writes gets it, with exit 0 and no report.
func TestCommand_h_writes_the_usage_to_its_stderr(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	for _, args := range [][]string{{"-h"}, {"-help"}, {"--h"}, {"-smoke", "-h"}, {"-h", "-nope"}} {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			t.Parallel()
			var stdout, stderr strings.Builder
			if code := command(ctx, args, &stdout, &stderr); code != 0 {
				t.Errorf("exit %d, want 0; stderr %q", code, stderr.String())
			}
			for _, want := range []string{"usage: loadtest [flags]", "it writes the report of the cells\nfinished before it (and its -chart), marked as interrupted at that cell", "second one stops it at once, without a report, killing its server children", "exit status is 128 plus the signal's number (130 for SIGINT,\n143 for SIGTERM)", "Ctrl-Z (SIGTSTP) stops the server children with the run", "\n  -overload-loads string\n", "\n  -duration duration\n"} {
				if !strings.Contains(stderr.String(), want) {
					t.Errorf("stderr %q, want the usage, with %q", stderr.String(), want)
				}
			}
			if stdout.Len() > 0 {
				t.Errorf("stdout %q, want nothing", stdout.String())
			}
		})
	}
}

// A run writes its progress, from the first line to the last, to the
// stderr that command is given, and its report to the stdout: a caller
// reading what command writes gets both. One throughput cell of 10 ms.
func TestCommand_writes_its_progress_to_its_stderr(t *testing.T) {
	t.Parallel()
	var stdout, stderr strings.Builder
	args := []string{"-scenarios", "throughput", "-variants", "fasthttp-bare", "-conns", "1", "-duration", "10ms", "-warmup", "0"}
	if code := command(context.Background(), args, &stdout, &stderr); code != 0 {
		t.Fatalf("exit %d; stderr %q", code, stderr.String())
	}
	lines := strings.Split(strings.TrimSuffix(stderr.String(), "\n"), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[0], "loadtest: ") || !strings.Contains(lines[0], "budget about") ||
		!strings.HasPrefix(lines[1], "  throughput fasthttp-bare ") || !strings.HasPrefix(lines[2], "loadtest: done in ") {
		t.Errorf("stderr %q, want the budget, the cell and the end, one line each", stderr.String())
	}
	if !strings.Contains(stdout.String(), "| fasthttp-bare | 1 |") {
		t.Errorf("stdout %q, want the report's row", stdout.String())
	}
}

// A throughput row gives its requests/s over fasthttp-bare's at the same
// connection count: 1 for fasthttp-bare itself. Two cells of 10 ms.
func TestCommand_throughput_rows_have_their_ratio_to_fasthttp_bare(t *testing.T) {
	t.Parallel()
	var stdout, stderr strings.Builder
	args := []string{"-json", "-scenarios", "throughput", "-variants", fasthttpBare + "," + ftRace, "-conns", "1", "-duration", "10ms", "-warmup", "0"}
	if code := command(context.Background(), args, &stdout, &stderr); code != 0 {
		t.Fatalf("exit %d; stderr %q", code, stderr.String())
	}
	var rep report
	if err := json.Unmarshal([]byte(stdout.String()), &rep); err != nil {
		t.Fatalf("stdout %q: %v", stdout.String(), err)
	}
	if len(rep.Throughput) != 2 || rep.Throughput[0].VsFasthttpBare != 1 || rep.Throughput[1].VsFasthttpBare <= 0 {
		t.Errorf("throughput %+v, want fasthttp-bare at 1x itself and %s at some ratio of it", rep.Throughput, ftRace)
	}
}

// A server child's own messages (here why it did not start) go to the
// stderr it was started with, as the progress lines do.
func TestStartChild_its_messages_go_to_the_given_stderr(t *testing.T) {
	t.Parallel()
	var stderr strings.Builder
	srv, err := startChild(scenarioThroughput, "no-such-variant", &stderr)
	if err == nil {
		srv.stop()
		t.Fatal("a server of no variant started")
	}
	if msg := stderr.String(); !strings.HasPrefix(msg, "loadtest server: ") || !strings.Contains(msg, "no-such-variant") {
		t.Errorf("stderr %q, want the child's message", msg)
	}
}

// The command lines that the README, docs/ and .ci/run give (redirections
// left out) pass parseFlags as they are.
func TestParseFlags_documented_command_lines_run(t *testing.T) {
	t.Parallel()
	for _, line := range []string{
		// README.md
		"-chart loadtest.png",
		"-smoke",
		"-json -scenarios storm",
		"-scenarios burst",
		"-scenarios hangup",
		"-scenarios overload -chart overload.png",
		"-scenarios overload -cell 1s -cell-warmup 1s",
		"-scenarios overload -overload-variants fasttimeout-race-adaptive -soak 60s",
		"-scenarios hangup -hangup-rounds 16",
		"-scenarios overload -json",
		"-render testdata/overload.json -chart ../../docs/loadtest-overload.png",
		"-scenarios overload -overload-variants fasttimeout-race-adaptive -overload-sweep 8,64 -overload-loads 10 -soak 60s",
		// docs/benchmarks.md
		"-scenarios throughput,storm,burst -chart ../../docs/loadtest.png",
		"-scenarios storm -variants fasthttp-bare,fasthttp-TimeoutWithCodeHandler,fasttimeout-race",
		// docs/overload.md
		"-scenarios overload",
		"-scenarios overload -overload-loads 4 -overload-workloads cpu -cell-warmup 1ms -cell 1s -overload-variants fasthttp-Concurrency,fasttimeout-race-adaptive,fasttimeout-cooperative-adaptive",
		"-scenarios overload -overload-loads 0.5,2,4,10 -overload-variants fasthttp-Concurrency,fasthttp-TimeoutWithCodeHandler,fasttimeout-race-adaptive,fasttimeout-cooperative-adaptive",
		"-scenarios overload -overload-workloads downstream -overload-loads 1,2,4 -overload-sweep 32 -overload-variants fasthttp-Concurrency,fasttimeout-race-adaptive,fasttimeout-cooperative-adaptive",
		"-scenarios overload -overload-workloads downstream -overload-loads 2,4 -overload-sweep 32 -cell-warmup 0s -cell 2s -overload-variants fasthttp-Concurrency,fasttimeout-race-adaptive,fasttimeout-cooperative-adaptive",
		"-scenarios overload -overload-workloads downstream -overload-loads 1,2,4 -overload-sweep 64 -overload-variants fasthttp-Concurrency,fasttimeout-race-adaptive,fasttimeout-cooperative-adaptive",
		"-scenarios overload -overload-workloads cpu -overload-loads 2,4,10 -overload-sweep 128 -overload-variants fasthttp-Concurrency,fasttimeout-race-adaptive,fasttimeout-cooperative-adaptive",
		"-scenarios overload -overload-workloads cpu -overload-loads 4,10 -overload-sweep 128 -overload-variants fasthttp-Concurrency,fasttimeout-race-adaptive,fasttimeout-cooperative-adaptive",
		"-scenarios overload -overload-workloads cpu -overload-loads 4 -overload-sweep 8 -overload-variants fasttimeout-race-adaptive,fasttimeout-race-adaptive-queuestart",
		// docs/hangups.md
		"-scenarios hangup -hangup-rounds 16",
		// .ci/run
		"-smoke",
	} {
		t.Run(line, func(t *testing.T) {
			t.Parallel()
			if _, err := parseFlags(strings.Fields(line)); err != nil {
				t.Errorf("%s: %v", line, err)
			}
		})
	}
}
