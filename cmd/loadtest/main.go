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
//   - overload: open-loop arrivals at 0.5 to 10 times a server's capacity
//     (the best of a fasthttp Server.Concurrency sweep), clients that give
//     up at 1 s, CPU-bound and downstream-bound handlers that honour or
//     ignore their context; goodput, wasted work, latency of the good
//     answers and rejections per variant, and the goals of admission.
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
	"maps"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
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
	render     string // a report saved with -json, written again instead of measuring
	smoke      bool

	// The hangup scenario (hangup.go).
	hangupConns  int
	hangupRounds int

	// The overload scenario (overload.go).
	olVariants  []string
	olWorkloads []string
	olLoads     []float64
	olSweep     []int
	olCell      time.Duration
	olWarmup    time.Duration
	olTimeout   time.Duration
	olSoak      time.Duration
	olMaxConns  int
	olArrivals  string
	olQueries   int

	// stderr is where the progress lines and the server children's own
	// messages go: command's stderr (not a flag; nil writes nowhere).
	stderr io.Writer
}

const usage = `usage: loadtest [flags]

Compares fasttimeout with fasthttp.TimeoutWithCodeHandler, http.TimeoutHandler
and bare servers over 127.0.0.1. Markdown report on stdout, progress on stderr.
Counts and loads are read in decimal ("010" is 10). Ctrl-C (SIGINT) or SIGTERM
stops the run at the cell under way: it writes the report of the cells
finished before it (and its -chart), marked as interrupted at that cell. A
second one stops it at once, without a report, killing its server children.
Either way, the exit status is 128 plus the signal's number (130 for SIGINT,
143 for SIGTERM). Ctrl-Z (SIGTSTP) stops the server children with the run,
and fg or bg (SIGCONT) resumes them; the cell under way measures the pause.

flags:
`

// parseFlags parses args (without the program name). It writes nothing: it
// returns a helpError for -h, and a one-line error for anything invalid. The flags of each
// scenario are its own (scenario.flags); these are the ones they share.
func parseFlags(args []string) (options, error) {
	fs := flag.NewFlagSet("loadtest", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	var (
		o             options
		variants      = fs.String("variants", strings.Join(allVariants, ","), "comma-separated variants")
		scenarioNames = fs.String("scenarios", strings.Join(allScenarios, ","), "comma-separated scenarios: "+strings.Join(allScenarios, ", ")+"; each named must run one of -variants (overload: of -overload-variants)")
	)
	fs.DurationVar(&o.duration, "duration", 3*time.Second, "measured time of each cell (variant × connections), 10ms to 1h")
	fs.DurationVar(&o.warmup, "warmup", 500*time.Millisecond, "unmeasured load before each cell")
	fs.BoolVar(&o.json, "json", false, "write the report as JSON instead of Markdown")
	fs.StringVar(&o.chart, "chart", "", "also write a PNG chart to this file (*.png, in a directory that exists)")
	fs.StringVar(&o.render, "render", "", "measure nothing: write the report saved by -json in this file again (as Markdown, or JSON with -json, and its -chart); no other flag applies")
	fs.BoolVar(&o.smoke, "smoke", false, "tiny budget for CI: 150ms cells, 4 and 32 connections, 64 storm connections, burst of 16 × 5, overload cells of 100ms at 4x with a 100ms timeout")
	var finish []func(smokeDefault) error
	owner := map[string]string{} // a scenario's flag → its scenario
	for _, sc := range scenarios {
		shared := map[string]bool{}
		fs.VisitAll(func(f *flag.Flag) { shared[f.Name] = true })
		finish = append(finish, sc.flags(fs, &o))
		fs.VisitAll(func(f *flag.Flag) {
			if !shared[f.Name] {
				owner[f.Name] = sc.name()
			}
		})
	}
	fs.Usage = func() {} // a bad flag gets one line, from command
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			var b strings.Builder
			b.WriteString(usage)
			fs.SetOutput(&b)
			fs.PrintDefaults()
			return o, helpError{usage: b.String()}
		}
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if o.render != "" {
		// A saved report is written as it is: a flag of the measurement
		// would be ignored, and its report would not be what it asked.
		for _, name := range slices.Sorted(maps.Keys(set)) {
			if name != "render" && name != "json" && name != "chart" {
				return o, fmt.Errorf("-render writes a saved report again and measures nothing: -%s does not apply", name)
			}
		}
	}
	smoke := func(name string, apply func()) {
		if o.smoke && !set[name] {
			apply()
		}
	}
	smoke("duration", func() { o.duration = 150 * time.Millisecond })
	smoke("warmup", func() { o.warmup = 50 * time.Millisecond })
	var err error
	if o.variants, err = parseList("variant", *variants, allVariants); err != nil {
		return o, err
	}
	if o.scenarios, err = parseList("scenario", *scenarioNames, allScenarios); err != nil {
		return o, err
	}
	// A flag set for a scenario that does not run would be ignored, and
	// the report would not be what it asked for.
	for _, name := range slices.Sorted(maps.Keys(set)) { // the same error from run to run
		if sc, ok := owner[name]; ok && !slices.Contains(o.scenarios, sc) {
			return o, fmt.Errorf("-%s is a flag of the %s scenario, which -scenarios %s does not select", name, sc, strings.Join(o.scenarios, ","))
		}
	}
	// Flags that several scenarios share, but not every one: the cells of
	// the closed-loop scenarios last -duration after -warmup (the burst
	// runs to its end), and the overload has variants and cells of its own.
	for _, shared := range [...]struct {
		flags     []string
		scenarios []string
		names     string
	}{
		{[]string{"duration", "warmup"}, []string{scenarioThroughput, scenarioStorm, scenarioHangup}, "throughput, storm and hangup"},
		{[]string{"variants"}, []string{scenarioThroughput, scenarioStorm, scenarioBurst, scenarioHangup}, "throughput, storm, burst and hangup"},
	} {
		for _, name := range shared.flags {
			if set[name] && !slices.ContainsFunc(o.scenarios, func(sc string) bool { return slices.Contains(shared.scenarios, sc) }) {
				return o, fmt.Errorf("-%s is a flag of the %s scenarios, which -scenarios %s does not select", name, shared.names, strings.Join(o.scenarios, ","))
			}
		}
	}
	switch {
	case o.duration < minWindow || o.duration > maxWindow:
		return o, fmt.Errorf("-duration must be between 10ms and 1h, got %v", o.duration)
	case o.warmup < 0 || o.warmup > maxWindow:
		return o, fmt.Errorf("-warmup must be between 0 and 1h, got %v", o.warmup)
	}
	for _, f := range finish {
		if err := f(smoke); err != nil {
			return o, err
		}
	}
	if err := checkChart(o); err != nil {
		return o, err
	}
	// A scenario named in -scenarios that has none of -variants would
	// measure nothing and report nothing; by default, those are skipped,
	// and a flag of their own would be ignored.
	for _, s := range scenarios {
		if !slices.Contains(o.scenarios, s.name()) || len(s.variants(o)) > 0 {
			continue
		}
		its := strings.Join(s.variants(options{variants: allVariants}), ", ")
		if set["scenarios"] {
			return o, fmt.Errorf("-scenarios %s runs none of -variants %s (its variants: %s)",
				s.name(), strings.Join(o.variants, ","), its)
		}
		for _, name := range slices.Sorted(maps.Keys(set)) {
			if owner[name] == s.name() {
				return o, fmt.Errorf("-%s is a flag of the %s scenario, which runs none of -variants %s (its variants: %s)",
					name, s.name(), strings.Join(o.variants, ","), its)
			}
		}
	}
	return o, nil
}

// helpError is parseFlags's answer to -h: flag.ErrHelp, with the usage
// text, which command writes to its stderr (not the process's, which a
// caller of command may not be reading).
type helpError struct{ usage string }

func (e helpError) Error() string { return flag.ErrHelp.Error() }
func (e helpError) Unwrap() error { return flag.ErrHelp }

// checkChart refuses a -chart that could not be written, which writeChart
// would find only once every cell has been measured: a name other than
// *.png, a directory that is not there, or a run whose only scenario draws
// none (the hangup scenario; a report to -render may have any).
func checkChart(o options) error {
	if o.chart == "" {
		return nil
	}
	if !strings.EqualFold(filepath.Ext(o.chart), ".png") {
		return fmt.Errorf("-chart %s: only PNG charts are written (name the file *.png)", o.chart)
	}
	dir := filepath.Dir(o.chart)
	fi, err := os.Stat(dir)
	switch {
	case err != nil:
		return fmt.Errorf("-chart %s: %w", o.chart, err)
	case !fi.IsDir():
		return fmt.Errorf("-chart %s: %s is not a directory", o.chart, dir)
	case o.render == "" && !slices.ContainsFunc(o.scenarios, func(s string) bool { return s != scenarioHangup }):
		return fmt.Errorf("-chart: the hangup scenario draws no chart; select another scenario too")
	}
	return nil
}

// smokeDefault applies apply, a -smoke default, to the flag named name,
// with -smoke and unless the flag was given.
type smokeDefault func(name string, apply func())

// maxWindow bounds every measured window and warm-up (-duration, -warmup,
// -cell, -cell-warmup, -soak, and a light overload cell's -cell ÷ load²),
// so that a run stops by itself in a time its flags show.
const maxWindow = time.Hour

// minWindow is the shortest measured window (-duration, -cell, -soak).
// Shorter ones measure nothing: the hangup and overload scenarios keep
// whole milliseconds (a -duration of 500µs made CPU windows of 0 ms,
// reported at over 1600 % of a core; a -soak under 1 ms, none at all), and a
// throughput cell of 1 ns read 0 requests/s.
const minWindow = 10 * time.Millisecond

// maxBurstRequests bounds the requests of each burst connection, and so the
// burst's time: at most about burstWork each.
const maxBurstRequests = 1000

// maxConns bounds connection counts: each costs two file descriptors here.
const maxConns = 10000

func parseConns(s string) ([]int, error) { return parseCounts("-conns", s, 1, maxConns) }

// parseCounts parses a comma-separated list of distinct decimal counts
// between lo and hi, kept in its order.
func parseCounts(flag, s string, lo, hi int) ([]int, error) {
	var out []int
	for f := range strings.SplitSeq(s, ",") {
		n, err := parseDecimal(strings.TrimSpace(f))
		if err != nil || n < lo || n > hi {
			return nil, fmt.Errorf("%s wants a comma-separated list of decimal counts between %d and %d, got %q", flag, lo, hi, s)
		}
		if !slices.Contains(out, n) {
			out = append(out, n)
		}
	}
	return out, nil
}

// parseLoads parses the offered loads of the overload scenario: distinct
// decimal multiples of the capacity between 0.01 and 100, in increasing
// order.
func parseLoads(s string) ([]float64, error) {
	var out []float64
	for f := range strings.SplitSeq(s, ",") {
		f = strings.TrimSpace(f)
		// Digits and a point only: strconv.ParseFloat also reads Go's
		// literals ("0x1p2" is 4, "1_0" is 10), a sign and an exponent.
		x, err := strconv.ParseFloat(f, 64)
		if strings.Trim(f, "0123456789.") != "" || err != nil || !(x >= 0.01 && x <= 100) {
			return nil, fmt.Errorf("-overload-loads wants a comma-separated list of decimal multiples of the capacity between 0.01 and 100, got %q", s)
		}
		if !slices.Contains(out, x) {
			out = append(out, x)
		}
	}
	slices.Sort(out)
	return out, nil
}

// decimal is a count given as a flag: decimal digits only, unlike
// flag.Int, which reads Go's literals and takes "010" for 8, "0x10" for
// 16, "1_000" for 1000. (cmd/gateway and cmd/demo, modules of their own,
// read their counts alike.)
type decimal int

// decimalVar defines a count flag, as fs.IntVar does, read by decimal.
func decimalVar(fs *flag.FlagSet, p *int, name string, value int, usage string) {
	*p = value
	fs.Var((*decimal)(p), name, usage)
}

func (d *decimal) Set(s string) error {
	n, err := parseDecimal(s)
	if err != nil {
		return err
	}
	*d = decimal(n)
	return nil
}

func (d *decimal) String() string { return strconv.Itoa(int(*d)) }

// parseDecimal parses a count: decimal digits, after a minus sign (so that
// a negative count is told its range), but not a plus, which
// strconv.ParseInt takes.
func parseDecimal(s string) (int, error) {
	n, err := strconv.ParseInt(s, 10, strconv.IntSize)
	switch {
	case errors.Is(err, strconv.ErrRange):
		return 0, errors.New("out of range")
	case err != nil || strings.HasPrefix(s, "+"):
		return 0, errors.New("want a decimal number")
	}
	return int(n), nil
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
	// Room for both signals, should they come before stopOnSignals reads
	// the first: Notify drops what does not fit.
	signals := make(chan os.Signal, 2)
	signal.Notify(signals, os.Interrupt, syscall.SIGTERM)
	ctx, cancel := context.WithCancelCause(context.Background())
	go stopOnSignals(signals, cancel, os.Stderr)
	suspendWithChildren()
	os.Exit(command(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

// stopOnSignals cancels the run at the first Ctrl-C (SIGINT) or SIGTERM
// (kill, a CI timeout), which ends the cell under way and stops its server
// child (up to a load client's 10 s for a request in flight, then up to 5 s,
// the overload's 1 s, 30 s while it writes a profile, for the child to
// exit), and then writes the report of the cells finished before it. At the
// second, it kills the server children still running and ends the process
// at once, with 128 plus the signal's number (130, 143), what a
// shell reports for a process that signal killed: a second signal means
// the user wants out now, and the children must not outlive the run.
func stopOnSignals(signals <-chan os.Signal, cancel context.CancelCauseFunc, stderr io.Writer) {
	sig := <-signals
	// Said before the cancel, after which the run may write its last line
	// and exit: this one must not come after it, nor be lost.
	progressTo(stderr, "loadtest: %v: stopping the run and its server children (again to stop at once)", sig)
	cancel(interrupted{sig})
	sig = <-signals
	killChildren()
	progressTo(stderr, "loadtest: %v again: stopping at once, server children killed", sig)
	os.Exit(interrupted{sig}.status())
}

// interrupted is the cause of a run stopped by a signal: no server failed.
type interrupted struct{ sig os.Signal }

func (e interrupted) Error() string {
	return fmt.Sprintf("%v: the run stopped before its end, its report holds the cells finished", e.sig)
}

// status is the exit status of a process that sig stopped: 128 plus its
// number, as a shell reports for a process that signal killed.
func (e interrupted) status() int {
	if s, ok := e.sig.(syscall.Signal); ok {
		return 128 + int(s)
	}
	return 1
}

// command runs the load test that args (without the program name) ask
// for, and returns the exit status: 0 with the usage on stderr for -h, 2
// with one line on stderr for a bad command line, 1 if the run failed,
// 128 plus the signal's number if one stopped it (ctx's cause).
func command(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if _, ok := stderr.(*os.File); !ok {
		// The progress lines and the children's messages come from
		// several goroutines; an *os.File (the process's) takes them as
		// they are, and is handed to the children as it is.
		stderr = &syncWriter{w: stderr}
	}
	o, err := parseFlags(args)
	o.stderr = stderr
	var help helpError
	switch {
	case errors.As(err, &help):
		// Asked for: exit 0, on stderr as the flag package does.
		_, _ = io.WriteString(stderr, help.usage)
		return 0
	case err != nil:
		// Every bad flag: -h tells the forms and ranges taken.
		fmt.Fprintf(stderr, "loadtest: %v (see loadtest -h)\n", err)
		return 2
	}
	if err := run(ctx, o, stdout); err != nil {
		fmt.Fprintln(stderr, "loadtest:", err)
		var stop interrupted
		if errors.As(err, &stop) {
			return stop.status()
		}
		return 1
	}
	return 0
}

// run measures every selected cell and writes the report.
func run(ctx context.Context, o options, stdout io.Writer) error {
	if o.render != "" {
		b, err := os.ReadFile(o.render)
		if err != nil {
			return err
		}
		var rep report
		if err := json.Unmarshal(b, &rep); err != nil {
			return fmt.Errorf("%s: %w", o.render, err)
		}
		return writeReport(o, rep, stdout)
	}
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
	o.progress("loadtest: %s, budget about %v", rep.Machine, estimate(o).Round(time.Second))
	start := time.Now()
	failed := 0 // cells whose server failed; reported, and the exit code is 1
	for _, s := range scenarios {
		if !slices.Contains(o.scenarios, s.name()) {
			continue
		}
		n, err := s.run(ctx, o, &rep)
		if ctx.Err() != nil {
			// The cell under way was cut short, not failed: the report
			// holds what was finished, and the run ends with the signal.
			if rep.Interrupted == nil { // after the scenario's last cell
				_ = rep.stop(ctx, s.name(), "")
			}
			rep.TotalSeconds = time.Since(start).Seconds()
			if err := writeReport(o, rep, stdout); err != nil {
				o.progress("loadtest: %v", err)
			}
			return context.Cause(ctx)
		}
		if err != nil {
			return err
		}
		failed += n
	}
	rep.TotalSeconds = time.Since(start).Seconds()
	o.progress("loadtest: done in %v", time.Since(start).Round(time.Millisecond))
	err := writeReport(o, rep, stdout)
	if err == nil && failed > 0 {
		err = fmt.Errorf("%d cells failed (see the report)", failed)
	}
	return err
}

// writeReport writes rep on stdout, as JSON with -json, else as Markdown,
// and then its chart with -chart: a chart that fails does not take the
// measurements with it.
func writeReport(o options, rep report, stdout io.Writer) error {
	var err error
	if o.json {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		err = enc.Encode(rep)
	} else {
		err = writeMarkdown(stdout, rep)
	}
	if err != nil || o.chart == "" {
		return err
	}
	if err := writeChart(o.chart, rep); err != nil {
		return fmt.Errorf("chart: %w", err)
	}
	o.progress("loadtest: chart written to %s", o.chart)
	return nil
}

// estimate is the expected wall time of a run, for the progress line.
func estimate(o options) time.Duration {
	var d time.Duration
	for _, s := range scenarios {
		if slices.Contains(o.scenarios, s.name()) {
			d += s.estimate(o)
		}
	}
	return d
}

// progress writes a line of progress on o.stderr.
func (o options) progress(format string, args ...any) {
	progressTo(o.stderr, format, args...)
}

// progressTo writes a line of progress on w; nil writes nowhere.
func progressTo(w io.Writer, format string, args ...any) {
	if w != nil {
		fmt.Fprintf(w, format+"\n", args...)
	}
}

// syncWriter serialises the writes to w.
type syncWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
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
