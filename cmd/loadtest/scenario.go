package main

import (
	"context"
	"flag"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"

	"gonum.org/v1/plot"
)

// scenario is one thing the load test measures. It defines its own flags,
// into fields of options; its variants are a selection of allVariants (the
// overload scenario's, of overloadVariants); run fills its part of the
// report, markdown writes its tables and charts draws its panels, each
// nothing when its part is empty.
type scenario interface {
	name() string
	// flags defines the scenario's flags on fs, into o, and returns what
	// runs once they are parsed: it applies the scenario's -smoke
	// defaults, and parses and checks its values.
	flags(fs *flag.FlagSet, o *options) func(smoke smokeDefault) error
	// variants are the variants it runs with o.
	variants(o options) []string
	// estimate is the expected wall time of its run with o.
	estimate(o options) time.Duration
	// run measures every cell into rep and returns how many failed; an
	// error ends the whole run.
	run(ctx context.Context, o options, rep *report) (failed int, err error)
	markdown(b *strings.Builder, rep report)
	charts(rep report) ([]*plot.Plot, error)
}

// scenarios are all scenarios, in the order they run and report.
var scenarios = []scenario{throughputScenario{}, stormScenario{}, burstScenario{}, hangupScenario{}, overloadScenario{}}

// allScenarios are the scenarios' names.
var allScenarios = func() []string {
	var out []string
	for _, s := range scenarios {
		out = append(out, s.name())
	}
	return out
}()

// failure is what a cell's progress line says of its error: "interrupted"
// once the run is stopped, which cut the cell short, else FAILED.
func failure(ctx context.Context, err error) string {
	if ctx.Err() != nil {
		return "interrupted"
	}
	return "FAILED: " + err.Error()
}

// perCell is what a cell costs besides its load: the child's start,
// dialling, snapshots.
const perCell = 250 * time.Millisecond

type throughputScenario struct{}

func (throughputScenario) name() string { return scenarioThroughput }

func (throughputScenario) flags(fs *flag.FlagSet, o *options) func(smokeDefault) error {
	conns := fs.String("conns", "64,1024", "comma-separated connection counts of the throughput scenario")
	return func(smoke smokeDefault) (err error) {
		smoke("conns", func() { *conns = "4,32" })
		o.conns, err = parseConns(*conns)
		return err
	}
}

func (throughputScenario) variants(o options) []string { return o.variants }

func (throughputScenario) estimate(o options) time.Duration {
	return time.Duration(len(o.conns)*len(o.variants)) * (o.warmup + o.duration + perCell)
}

func (throughputScenario) run(ctx context.Context, o options, rep *report) (failed int, err error) {
	// The rows as they are on return, interrupted or not: a deferred
	// call's arguments are read at the defer, when there are none yet.
	defer func() { fillRatios(rep.Throughput) }()
	for _, conns := range o.conns {
		for _, v := range o.variants {
			cell := fmt.Sprintf("%s, %d conns", v, conns)
			if ctx.Err() != nil {
				return failed, rep.stop(ctx, scenarioThroughput, cell)
			}
			row, err := measureThroughput(ctx, v, conns, o.warmup, o.duration, o.stderr)
			if err != nil {
				o.progress("  throughput %-32s %5d conns: %s", v, conns, failure(ctx, err))
				if ctx.Err() != nil {
					return failed, rep.stop(ctx, scenarioThroughput, cell) // cut short: no result
				}
				row = throughputRow{Variant: v, Conns: conns, Error: err.Error()}
				failed++
			} else {
				o.progress("  throughput %-32s %5d conns: %8.0f req/s", v, conns, row.ReqPerSec)
			}
			rep.Throughput = append(rep.Throughput, row)
		}
	}
	return failed, nil
}

func (throughputScenario) markdown(b *strings.Builder, rep report) { writeThroughput(b, rep) }

func (throughputScenario) charts(rep report) ([]*plot.Plot, error) {
	if len(rep.Throughput) == 0 {
		return nil, nil
	}
	p, err := throughputChart(rep)
	return []*plot.Plot{p}, err
}

type stormScenario struct{}

func (stormScenario) name() string { return scenarioStorm }

func (stormScenario) flags(fs *flag.FlagSet, o *options) func(smokeDefault) error {
	decimalVar(fs, &o.stormConns, "storm-conns", 1000, "`n` connections (concurrent slow requests) of the storm scenario")
	return func(smoke smokeDefault) error {
		smoke("storm-conns", func() { o.stormConns = 64 })
		if o.stormConns <= 0 || o.stormConns > maxConns {
			return fmt.Errorf("-storm-conns must be between 1 and %d, got %d", maxConns, o.stormConns)
		}
		return nil
	}
}

func (stormScenario) variants(o options) []string { return stormVariants(o.variants) }

func (stormScenario) estimate(o options) time.Duration {
	return time.Duration(len(stormVariants(o.variants))) * (o.warmup + o.duration + perCell + stormWork)
}

func (stormScenario) run(ctx context.Context, o options, rep *report) (failed int, err error) {
	for _, v := range stormVariants(o.variants) {
		cell := fmt.Sprintf("%s, %d conns", v, o.stormConns)
		if ctx.Err() != nil {
			return failed, rep.stop(ctx, scenarioStorm, cell)
		}
		row, err := measureStorm(ctx, v, o.stormConns, o.warmup, o.duration, o.stderr)
		if err != nil {
			o.progress("  storm      %-32s %5d conns: %s", v, o.stormConns, failure(ctx, err))
			if ctx.Err() != nil {
				return failed, rep.stop(ctx, scenarioStorm, cell) // cut short: no result
			}
			row = stormRow{Variant: v, Conns: o.stormConns, Error: err.Error()}
			failed++
		} else {
			o.progress("  storm      %-32s %5d conns: lateness p99 %.2f ms", v, o.stormConns, row.LatenessP99Ms)
		}
		rep.StormRows = append(rep.StormRows, row)
	}
	return failed, nil
}

func (stormScenario) markdown(b *strings.Builder, rep report) { writeStorm(b, rep) }

func (stormScenario) charts(rep report) ([]*plot.Plot, error) {
	if len(rep.StormRows) == 0 {
		return nil, nil
	}
	p, err := stormChart(rep)
	return []*plot.Plot{p}, err
}

type burstScenario struct{}

func (burstScenario) name() string { return scenarioBurst }

func (burstScenario) flags(fs *flag.FlagSet, o *options) func(smokeDefault) error {
	decimalVar(fs, &o.burstConns, "burst-conns", 512, "`n` connections opened at once by the burst scenario")
	decimalVar(fs, &o.burstReqs, "burst-requests", 50, "`n` requests each burst connection sends, one after the other")
	fs.BoolVar(&o.shared, "burst-shared", true, "run the burst's server in this process, its goroutines sharing the Ps with the clients' (false: a child process)")
	return func(smoke smokeDefault) error {
		smoke("burst-conns", func() { o.burstConns = 16 })
		smoke("burst-requests", func() { o.burstReqs = 5 })
		switch {
		case o.burstConns <= 0 || o.burstConns > maxConns:
			return fmt.Errorf("-burst-conns must be between 1 and %d, got %d", maxConns, o.burstConns)
		case o.burstReqs <= 0 || o.burstReqs > maxBurstRequests:
			return fmt.Errorf("-burst-requests must be between 1 and %d, got %d", maxBurstRequests, o.burstReqs)
		}
		return nil
	}
}

func (burstScenario) variants(o options) []string { return burstVariants(o.variants) }

// estimate: a burst connection's requests take about burstTimeout each,
// more when the burst saturates the machine.
func (burstScenario) estimate(o options) time.Duration {
	perBurst := perCell + time.Duration(o.burstReqs)*burstTimeout*max(1, time.Duration(o.burstConns)/256)
	return time.Duration(len(burstVariants(o.variants))) * perBurst
}

func (burstScenario) run(ctx context.Context, o options, rep *report) (failed int, err error) {
	for _, v := range burstVariants(o.variants) {
		cell := fmt.Sprintf("%s, %d conns", v, o.burstConns)
		if ctx.Err() != nil {
			return failed, rep.stop(ctx, scenarioBurst, cell)
		}
		row, err := measureBurst(ctx, v, o.burstConns, o.burstReqs, o.shared, o.stderr)
		if err != nil {
			o.progress("  burst      %-32s %5d conns: %s", v, o.burstConns, failure(ctx, err))
			if ctx.Err() != nil {
				return failed, rep.stop(ctx, scenarioBurst, cell) // cut short: no result
			}
			if row.Error == "" {
				row.Error = err.Error()
			}
			failed++
		} else {
			o.progress("  burst      %-32s %5d conns: lateness p99 %.2f ms, max %.2f ms, own 200s after deadline %d, re-raised panics %d",
				v, o.burstConns, row.LatenessP99Ms, row.LatenessMaxMs, row.OwnAfterDeadline, row.EscapedPanics)
		}
		rep.BurstRows = append(rep.BurstRows, row)
	}
	return failed, nil
}

func (burstScenario) markdown(b *strings.Builder, rep report) { writeBurst(b, rep) }

func (burstScenario) charts(rep report) ([]*plot.Plot, error) {
	if len(rep.BurstRows) == 0 {
		return nil, nil
	}
	p, err := burstChart(rep)
	return []*plot.Plot{p}, err
}

type hangupScenario struct{}

func (hangupScenario) name() string { return scenarioHangup }

func (hangupScenario) flags(fs *flag.FlagSet, o *options) func(smokeDefault) error {
	decimalVar(fs, &o.hangupConns, "hangup-conns", 10000, "`n` connections (concurrent slow requests) of the hangup scenario")
	decimalVar(fs, &o.hangupRounds, "hangup-rounds", 2, "`n` pairs of CPU windows, watch on and off, per variant of the hangup scenario")
	return func(smoke smokeDefault) error {
		smoke("hangup-conns", func() { o.hangupConns = 64 })
		smoke("hangup-rounds", func() { o.hangupRounds = 1 })
		switch {
		case o.hangupConns <= 0 || o.hangupConns > maxConns:
			return fmt.Errorf("-hangup-conns must be between 1 and %d, got %d", maxConns, o.hangupConns)
		case o.hangupRounds <= 0 || o.hangupRounds > 100:
			return fmt.Errorf("-hangup-rounds must be between 1 and 100, got %d", o.hangupRounds)
		}
		return nil
	}
}
func (hangupScenario) variants(o options) []string      { return hangupVariants(o.variants) }
func (hangupScenario) estimate(o options) time.Duration { return hangupEstimate(o) }
func (hangupScenario) run(ctx context.Context, o options, rep *report) (int, error) {
	return runHangup(ctx, o, rep)
}
func (hangupScenario) markdown(b *strings.Builder, rep report) { writeHangupMarkdown(b, rep.Hangup) }
func (hangupScenario) charts(report) ([]*plot.Plot, error)     { return nil, nil }

type overloadScenario struct{}

func (overloadScenario) name() string { return scenarioOverload }

func (overloadScenario) flags(fs *flag.FlagSet, o *options) func(smokeDefault) error {
	variants := fs.String("overload-variants", strings.Join(overloadVariantNames(false), ","), "comma-separated variants of the overload scenario: "+strings.Join(overloadVariantNames(true), ", "))
	workloads := fs.String("overload-workloads", strings.Join(allWorkloads, ","), "comma-separated workloads of the overload scenario: "+strings.Join(allWorkloads, ", "))
	loads := fs.String("overload-loads", "0.5,1,2,4,10", "comma-separated offered loads of the overload scenario, × capacity, 0.01 to 100")
	sweep := fs.String("overload-sweep", "8,16,32,64,128", "comma-separated fasthttp Server.Concurrency values swept to find the capacity")
	fs.DurationVar(&o.olCell, "cell", 3*time.Second, "measured time of each overload cell, 10ms to 1h; below 1x capacity, this ÷ load², which may not pass 1h")
	fs.DurationVar(&o.olWarmup, "cell-warmup", 2*time.Second, "unmeasured load before each overload cell")
	fs.DurationVar(&o.olTimeout, "overload-timeout", time.Second, "the overload servers' timeout and their clients' deadline")
	fs.DurationVar(&o.olSoak, "soak", 0, "also run each overload variant with admission (or, if none is selected, each selected one) this long at 10x capacity (e.g. 60s; 0: none, else 10ms to 1h), for memory, goroutines and answers given twice")
	decimalVar(fs, &o.olMaxConns, "max-conns", 10000, "at most `n` connections opened by the overload generator (one request out on each)")
	fs.StringVar(&o.olArrivals, "arrivals", "poisson", "arrivals of the overload scenario: poisson or uniform")
	decimalVar(fs, &o.olQueries, "db-queries", 8, "`n` queries each request of the downstream workload makes, one after the other (1 to 1000, taking less than -overload-timeout)")
	return func(smoke smokeDefault) (err error) {
		smoke("cell", func() { o.olCell = 100 * time.Millisecond })
		smoke("cell-warmup", func() { o.olWarmup = 50 * time.Millisecond })
		smoke("overload-timeout", func() { o.olTimeout = 100 * time.Millisecond })
		smoke("overload-loads", func() { *loads = "4" })
		smoke("overload-sweep", func() { *sweep = "16" })
		if o.olVariants, err = parseList("overload variant", *variants, overloadVariantNames(true)); err != nil {
			return err
		}
		if o.olWorkloads, err = parseList("workload", *workloads, allWorkloads); err != nil {
			return err
		}
		if o.olLoads, err = parseLoads(*loads); err != nil {
			return err
		}
		if o.olSweep, err = parseCounts("-overload-sweep", *sweep, 1, 100000); err != nil {
			return err
		}
		switch {
		case o.olCell < minWindow || o.olCell > maxWindow:
			return fmt.Errorf("-cell must be between 10ms and 1h, got %v", o.olCell)
		case o.olWarmup < 0 || o.olWarmup > maxWindow:
			return fmt.Errorf("-cell-warmup must be between 0 and 1h, got %v", o.olWarmup)
		case o.olTimeout < 10*time.Millisecond || o.olTimeout > time.Minute:
			return fmt.Errorf("-overload-timeout must be between 10ms and 1m, got %v", o.olTimeout)
		case o.olSoak != 0 && (o.olSoak < minWindow || o.olSoak > maxWindow):
			return fmt.Errorf("-soak must be 0 or between 10ms and 1h, got %v", o.olSoak)
		case o.olMaxConns <= 0 || o.olMaxConns > maxConns:
			return fmt.Errorf("-max-conns must be between 1 and %d, got %d", maxConns, o.olMaxConns)
		case o.olArrivals != "poisson" && o.olArrivals != "uniform":
			return fmt.Errorf("-arrivals must be poisson or uniform, got %q", o.olArrivals)
		case o.olQueries <= 0 || o.olQueries > 1000:
			return fmt.Errorf("-db-queries must be between 1 and 1000, got %d", o.olQueries)
		}
		// A downstream request holds a slot for each query in turn: if
		// that alone takes the deadline, no answer is good, and every
		// cell of the workload measures nothing but its collapse.
		if q := time.Duration(o.olQueries) * dbQuery; slices.Contains(o.olWorkloads, workloadDB) && q >= o.olTimeout {
			return fmt.Errorf("-db-queries %d take %v a request (%v each), not less than -overload-timeout %v: no request of the downstream workload could be answered in time",
				o.olQueries, q, dbQuery, o.olTimeout)
		}
		if err := checkLightCells(o.olLoads[0], o.olCell); err != nil {
			return err
		}
		return checkOverloadArrivals(*o)
	}
}

func (overloadScenario) variants(o options) []string      { return o.olVariants }
func (overloadScenario) estimate(o options) time.Duration { return overloadEstimate(o) }
func (overloadScenario) run(ctx context.Context, o options, rep *report) (int, error) {
	return runOverload(ctx, o, rep)
}
func (overloadScenario) markdown(b *strings.Builder, rep report) {
	writeOverloadMarkdown(b, rep.Overload)
}
func (overloadScenario) charts(rep report) ([]*plot.Plot, error) { return overloadCharts(rep.Overload) }

// checkLightCells refuses a lightest load whose cell would measure longer
// than maxWindow (-cell ÷ load²), rather than cut the cell short: its
// length is what holds a light cell's p99 to the precision its goal needs,
// and a cut cell would be judged on noise, where the report says it was
// not.
func checkLightCells(lightest float64, cell time.Duration) error {
	d := overloadConfig{CellMs: cell.Milliseconds()}.cellAt(lightest)
	if d <= maxWindow {
		return nil
	}
	least := math.Ceil(100*math.Sqrt(float64(cell)/float64(maxWindow))) / 100
	longest := time.Duration(float64(maxWindow) * lightest * lightest).Round(time.Millisecond)
	return fmt.Errorf("-overload-loads %v with -cell %v measures a cell for %v (-cell ÷ load² below 1x), more than 1h: offer at least %v, or a -cell of at most %v",
		lightest, cell, d, least, longest)
}
