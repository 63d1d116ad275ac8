package main

import (
	"context"
	"strings"
	"time"

	"gonum.org/v1/plot"
)

// scenario is one thing the load test measures. Its flags are fields of
// options, its variants a selection of allVariants (the overload
// scenario's, of overloadVariants); run fills its part of the report,
// markdown writes its tables and charts draws its panels, each nothing when
// its part is empty.
type scenario interface {
	name() string
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

// perCell is what a cell costs besides its load: the child's start,
// dialling, snapshots.
const perCell = 250 * time.Millisecond

type throughputScenario struct{}

func (throughputScenario) name() string { return scenarioThroughput }

func (throughputScenario) estimate(o options) time.Duration {
	return time.Duration(len(o.conns)*len(o.variants)) * (o.warmup + o.duration + perCell)
}

func (throughputScenario) run(ctx context.Context, o options, rep *report) (failed int, err error) {
	defer fillRatios(rep.Throughput)
	for _, conns := range o.conns {
		for _, v := range o.variants {
			if err := ctx.Err(); err != nil {
				return failed, err
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

func (stormScenario) estimate(o options) time.Duration {
	return time.Duration(len(stormVariants(o.variants))) * (o.warmup + o.duration + perCell + stormWork)
}

func (stormScenario) run(ctx context.Context, o options, rep *report) (failed int, err error) {
	for _, v := range stormVariants(o.variants) {
		if err := ctx.Err(); err != nil {
			return failed, err
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

// estimate: a burst connection's requests take about burstTimeout each,
// more when the burst saturates the machine.
func (burstScenario) estimate(o options) time.Duration {
	perBurst := perCell + time.Duration(o.burstReqs)*burstTimeout*max(1, time.Duration(o.burstConns)/256)
	return time.Duration(len(burstVariants(o.variants))) * perBurst
}

func (burstScenario) run(ctx context.Context, o options, rep *report) (failed int, err error) {
	for _, v := range burstVariants(o.variants) {
		if err := ctx.Err(); err != nil {
			return failed, err
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

func (hangupScenario) name() string                     { return scenarioHangup }
func (hangupScenario) estimate(o options) time.Duration { return hangupEstimate(o) }
func (hangupScenario) run(ctx context.Context, o options, rep *report) (int, error) {
	return runHangup(ctx, o, rep)
}
func (hangupScenario) markdown(b *strings.Builder, rep report) { writeHangupMarkdown(b, rep.Hangup) }
func (hangupScenario) charts(report) ([]*plot.Plot, error)     { return nil, nil }

type overloadScenario struct{}

func (overloadScenario) name() string                     { return scenarioOverload }
func (overloadScenario) estimate(o options) time.Duration { return overloadEstimate(o) }
func (overloadScenario) run(ctx context.Context, o options, rep *report) (int, error) {
	return runOverload(ctx, o, rep)
}
func (overloadScenario) markdown(b *strings.Builder, rep report) {
	writeOverloadMarkdown(b, rep.Overload)
}
func (overloadScenario) charts(rep report) ([]*plot.Plot, error) { return overloadCharts(rep.Overload) }
