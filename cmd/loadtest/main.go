// Command loadtest compares fasttimeout with fasthttp's and net/http's
// timeout handlers end to end over 127.0.0.1, and stops by itself.
//
// Each variant server runs in a child process of this binary, so that the
// server's CPU time and allocations per request are measured apart from the
// load generator's. The scenarios:
//
//   - throughput: a trivial handler under keep-alive load from N
//     connections; requests/s, latency percentiles, server CPU and
//     allocations per request.
//   - storm: slow handlers (200 ms of waiting, half of them honouring their
//     context) behind a 50 ms timeout; how late the timeout responses are,
//     how long handlers run past their deadline, peak goroutines and heap.
//   - burst: many keep-alive connections opened at once with mixed handlers
//     (fast, ignoring or honouring their context, panicking late, body
//     streams) behind a 40 ms timeout; how late the timeout responses are,
//     how many handlers returned after their deadline and still had their
//     own response sent, re-raised panics, crashes, peak goroutines.
//   - hangup: 10 000 slow requests in flight; the server's CPU with
//     fasttimeout's hang-up watch on and off, and how soon a client's
//     hang-up is seen, idle and under that load.
//
// The report is Markdown on stdout (-json for JSON); progress goes to
// stderr. See README.md.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"
)

// serveEnv, when set in the environment, makes the binary a variant server:
// its value is "scenario/variant".
const serveEnv = "FASTTIMEOUT_LOADTEST_SERVE"

// options are the parsed command-line flags.
type options struct {
	duration   time.Duration
	warmup     time.Duration
	conns      []int
	variants   []string
	scenarios  []string
	stormConns int
	burstConns int
	burstReqs  int
	shared     bool
	json       bool
	chart      string
	smoke      bool

	// The hangup scenario (hangup.go).
	hangupConns  int
	hangupRounds int
}

const usage = `usage: loadtest [flags]

Compares fasttimeout with fasthttp.TimeoutWithCodeHandler, http.TimeoutHandler
and bare servers over 127.0.0.1. Markdown report on stdout, progress on stderr.

flags:
`

// parseFlags parses args (without the program name). It returns flag.ErrHelp
// for -h, and a one-line error for anything invalid.
func parseFlags(args []string) (options, error) {
	fs := flag.NewFlagSet("loadtest", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	var (
		o         options
		conns     = fs.String("conns", "64,1024", "comma-separated connection counts of the throughput scenario")
		variants  = fs.String("variants", strings.Join(allVariants, ","), "comma-separated variants")
		scenarios = fs.String("scenarios", "throughput,storm,burst,hangup", "comma-separated scenarios: throughput, storm, burst, hangup")
	)
	fs.DurationVar(&o.duration, "duration", 3*time.Second, "measured time of each cell (variant × connections)")
	fs.DurationVar(&o.warmup, "warmup", 500*time.Millisecond, "unmeasured load before each cell")
	fs.IntVar(&o.stormConns, "storm-conns", 1000, "connections (concurrent slow requests) of the storm scenario")
	fs.IntVar(&o.burstConns, "burst-conns", 512, "connections opened at once by the burst scenario")
	fs.IntVar(&o.burstReqs, "burst-requests", 50, "requests each burst connection sends, one after the other")
	fs.BoolVar(&o.shared, "burst-shared", true, "run the burst's server in this process, its goroutines sharing the Ps with the clients' (false: a child process)")
	fs.IntVar(&o.hangupConns, "hangup-conns", 10000, "connections (concurrent slow requests) of the hangup scenario")
	fs.IntVar(&o.hangupRounds, "hangup-rounds", 2, "pairs of CPU windows, watch on and off, per variant of the hangup scenario")
	fs.BoolVar(&o.json, "json", false, "write the report as JSON instead of Markdown")
	fs.StringVar(&o.chart, "chart", "", "also write a PNG chart to this file")
	fs.BoolVar(&o.smoke, "smoke", false, "tiny budget for CI: 150ms cells, 4 and 32 connections, 64 storm connections, burst of 16 × 5")
	fs.Usage = func() {} // a bad flag gets one line, from main
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(os.Stderr, usage)
			fs.SetOutput(os.Stderr)
			fs.PrintDefaults()
		}
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if o.smoke {
		if !set["duration"] {
			o.duration = 150 * time.Millisecond
		}
		if !set["warmup"] {
			o.warmup = 50 * time.Millisecond
		}
		if !set["conns"] {
			*conns = "4,32"
		}
		if !set["storm-conns"] {
			o.stormConns = 64
		}
		if !set["burst-conns"] {
			o.burstConns = 16
		}
		if !set["burst-requests"] {
			o.burstReqs = 5
		}
		if !set["hangup-conns"] {
			o.hangupConns = 64
		}
		if !set["hangup-rounds"] {
			o.hangupRounds = 1
		}
	}
	var err error
	if o.conns, err = parseConns(*conns); err != nil {
		return o, err
	}
	if o.variants, err = parseList("variant", *variants, allVariants); err != nil {
		return o, err
	}
	if o.scenarios, err = parseList("scenario", *scenarios, []string{scenarioThroughput, scenarioStorm, scenarioBurst, scenarioHangup}); err != nil {
		return o, err
	}
	switch {
	case o.duration <= 0 || o.duration > time.Hour:
		return o, fmt.Errorf("-duration must be between 0 and 1h, got %v", o.duration)
	case o.warmup < 0 || o.warmup > time.Hour:
		return o, fmt.Errorf("-warmup must be between 0 and 1h, got %v", o.warmup)
	case o.stormConns <= 0 || o.stormConns > maxConns:
		return o, fmt.Errorf("-storm-conns must be between 1 and %d, got %d", maxConns, o.stormConns)
	case o.burstConns <= 0 || o.burstConns > maxConns:
		return o, fmt.Errorf("-burst-conns must be between 1 and %d, got %d", maxConns, o.burstConns)
	case o.burstReqs <= 0 || o.burstReqs > maxBurstRequests:
		return o, fmt.Errorf("-burst-requests must be between 1 and %d, got %d", maxBurstRequests, o.burstReqs)
	case o.hangupConns <= 0 || o.hangupConns > maxConns:
		return o, fmt.Errorf("-hangup-conns must be between 1 and %d, got %d", maxConns, o.hangupConns)
	case o.hangupRounds <= 0 || o.hangupRounds > 100:
		return o, fmt.Errorf("-hangup-rounds must be between 1 and 100, got %d", o.hangupRounds)
	}
	return o, nil
}

// maxBurstRequests bounds the requests of each burst connection, and so the
// burst's time: at most about burstWork each.
const maxBurstRequests = 1000

// maxConns bounds connection counts: each costs two file descriptors here.
const maxConns = 10000

func parseConns(s string) ([]int, error) {
	var out []int
	for f := range strings.SplitSeq(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n <= 0 || n > maxConns {
			return nil, fmt.Errorf("-conns wants a comma-separated list of counts between 1 and %d, got %q", maxConns, s)
		}
		if !slices.Contains(out, n) {
			out = append(out, n)
		}
	}
	return out, nil
}

// parseList parses a comma-separated subset of known, kept in known's order.
func parseList(what, s string, known []string) ([]string, error) {
	want := map[string]bool{}
	for f := range strings.SplitSeq(s, ",") {
		f = strings.TrimSpace(f)
		if !slices.Contains(known, f) {
			return nil, fmt.Errorf("unknown %s %q (known: %s)", what, f, strings.Join(known, ", "))
		}
		want[f] = true
	}
	var out []string
	for _, k := range known {
		if want[k] {
			out = append(out, k)
		}
	}
	return out, nil
}

func main() {
	if spec := os.Getenv(serveEnv); spec != "" {
		if err := serveChild(spec, os.Stdin, os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, "loadtest server:", err)
			os.Exit(1)
		}
		return
	}
	o, err := parseFlags(os.Args[1:])
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "loadtest:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, o, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "loadtest:", err)
		os.Exit(1)
	}
}

// run measures every selected cell and writes the report.
func run(ctx context.Context, o options, stdout io.Writer) error {
	rep := report{
		Machine:  currentMachine(),
		Duration: o.duration.String(),
		Warmup:   o.warmup.String(),
		Storm: stormConfig{
			Conns:     o.stormConns,
			WorkMs:    stormWork.Milliseconds(),
			TimeoutMs: stormTimeout.Milliseconds(),
		},
		Burst: burstConfig{
			Conns:        o.burstConns,
			PerConn:      o.burstReqs,
			TimeoutMs:    burstTimeout.Milliseconds(),
			WorkMs:       burstWork.Milliseconds(),
			PanicAfterMs: burstPanicAfter.Milliseconds(),
			Kinds:        burstKinds,
			Shared:       o.shared,
		},
	}
	progress("loadtest: %s, budget about %v", rep.Machine, estimate(o).Round(time.Second))
	start := time.Now()
	failed := 0 // cells whose server failed; reported, and the exit code is 1
	if slices.Contains(o.scenarios, scenarioThroughput) {
		for _, conns := range o.conns {
			for _, v := range o.variants {
				if err := ctx.Err(); err != nil {
					return err
				}
				row, err := measureThroughput(ctx, v, conns, o.warmup, o.duration)
				if err != nil {
					row = throughputRow{Variant: v, Conns: conns, Error: err.Error()}
					failed++
					progress("  throughput %-32s %5d conns: FAILED: %v", v, conns, err)
				} else {
					progress("  throughput %-32s %5d conns: %8.0f req/s", v, conns, row.ReqPerSec)
				}
				rep.Throughput = append(rep.Throughput, row)
			}
		}
		fillRatios(rep.Throughput)
	}
	if slices.Contains(o.scenarios, scenarioStorm) {
		for _, v := range stormVariants(o.variants) {
			if err := ctx.Err(); err != nil {
				return err
			}
			row, err := measureStorm(ctx, v, o.stormConns, o.warmup, o.duration)
			if err != nil {
				row = stormRow{Variant: v, Conns: o.stormConns, Error: err.Error()}
				failed++
				progress("  storm      %-32s %5d conns: FAILED: %v", v, o.stormConns, err)
			} else {
				progress("  storm      %-32s %5d conns: lateness p99 %.2f ms", v, o.stormConns, row.LatenessP99Ms)
			}
			rep.StormRows = append(rep.StormRows, row)
		}
	}
	if slices.Contains(o.scenarios, scenarioBurst) {
		for _, v := range burstVariants(o.variants) {
			if err := ctx.Err(); err != nil {
				return err
			}
			row, err := measureBurst(ctx, v, o.burstConns, o.burstReqs, o.shared)
			if err != nil {
				if row.Error == "" {
					row.Error = err.Error()
				}
				failed++
				progress("  burst      %-32s %5d conns: FAILED: %v", v, o.burstConns, err)
			} else {
				progress("  burst      %-32s %5d conns: lateness p99 %.2f ms, max %.2f ms, own 200s after deadline %d, re-raised panics %d",
					v, o.burstConns, row.LatenessP99Ms, row.LatenessMaxMs, row.OwnAfterDeadline, row.EscapedPanics)
			}
			rep.BurstRows = append(rep.BurstRows, row)
		}
	}
	if slices.Contains(o.scenarios, scenarioHangup) {
		n, err := runHangup(ctx, o, &rep)
		if err != nil {
			return err
		}
		failed += n
	}
	rep.TotalSeconds = time.Since(start).Seconds()
	progress("loadtest: done in %v", time.Since(start).Round(time.Millisecond))
	var err error
	if o.chart != "" {
		if err := writeChart(o.chart, rep); err != nil {
			return fmt.Errorf("chart: %w", err)
		}
		progress("loadtest: chart written to %s", o.chart)
	}
	if o.json {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		err = enc.Encode(rep)
	} else {
		err = writeMarkdown(stdout, rep)
	}
	if err == nil && failed > 0 {
		err = fmt.Errorf("%d cells failed (see the report)", failed)
	}
	return err
}

// estimate is the expected wall time of a run, for the progress line.
func estimate(o options) time.Duration {
	const perCell = 250 * time.Millisecond // child start, dialling, snapshots
	cells := 0
	if slices.Contains(o.scenarios, scenarioThroughput) {
		cells += len(o.conns) * len(o.variants)
	}
	storm := 0
	if slices.Contains(o.scenarios, scenarioStorm) {
		storm = len(stormVariants(o.variants))
	}
	burst := 0
	if slices.Contains(o.scenarios, scenarioBurst) {
		burst = len(burstVariants(o.variants))
	}
	// A burst connection's requests take about burstTimeout each, more
	// when the burst saturates the machine.
	perBurst := perCell + time.Duration(o.burstReqs)*burstTimeout*max(1, time.Duration(o.burstConns)/256)
	return time.Duration(cells)*(o.warmup+o.duration+perCell) +
		time.Duration(storm)*(o.warmup+o.duration+perCell+stormWork) +
		time.Duration(burst)*perBurst +
		hangupEstimate(o)
}

func progress(format string, args ...any) {
	fmt.Fprintf(os.Stderr, format+"\n", args...)
}

// currentMachine describes this machine for the report.
func currentMachine() machine {
	m := machine{CPUs: runtime.NumCPU(), GoVersion: runtime.Version(), OS: runtime.GOOS + "/" + runtime.GOARCH}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range strings.SplitSeq(string(b), "\n") {
			if name, ok := strings.CutPrefix(line, "model name"); ok {
				m.CPU = strings.TrimSpace(strings.TrimLeft(name, " \t:"))
				break
			}
		}
	}
	return m
}
