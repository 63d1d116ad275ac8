package main

import (
	"cmp"
	"math/rand/v2"
	"reflect"
	"runtime"
	"slices"
	"testing"
	"time"
)

// perArrivalCell is what the generator kept of a cell before it kept
// aggregates: a result for every request, every request's units at each
// end of the window, and the send lag of every measured one.
type perArrivalCell struct {
	measure, deadline     time.Duration
	first, end            int
	results               []result
	workBefore, workAfter []uint32
	sendLag               []int64
	workers               int
}

// fillPerArrival is overloadRow.fill as it was when the generator kept a
// result for each request: the reference the aggregates must agree with.
func fillPerArrival(r *overloadRow, d perArrivalCell) {
	n := max(d.end-d.first, 0)
	r.Arrivals = int64(n)
	r.Connections = d.workers
	good := map[int]bool{}
	var latencies, lags []int64
	got := make([]outcome, n)
	for i := range got {
		got[i] = outCut
	}
	for _, res := range d.results {
		if res.outcome == outGood {
			good[int(res.id)] = true
		}
		i := int(res.id) - d.first
		if i < 0 || i >= n {
			continue
		}
		got[i] = res.outcome
		if res.outcome == outGood {
			latencies = append(latencies, int64(res.latency))
		}
		if res.outcome != outDropped {
			lags = append(lags, int64(res.lag))
		}
	}
	for _, o := range got {
		*r.counter(o)++
		if o == outNotRun {
			r.NotRun++
		}
	}
	for id := range min(len(d.workBefore), len(d.workAfter)) {
		units := int64(d.workAfter[id]) - int64(d.workBefore[id])
		r.Work += units
		if !good[id] {
			r.Wasted += units
		}
	}
	if secs := d.measure.Seconds(); secs > 0 {
		r.GoodputPerSec = float64(r.Good) / secs
		r.SentPerSec = float64(r.Arrivals-r.notSent()) / secs
	}
	if r.Work > 0 {
		r.WastedShare = float64(r.Wasted) / float64(r.Work)
	}
	p := percentiles(latencies, 50, 99)
	r.P50Ms, r.P99Ms = p[0]/1e6, p[1]/1e6
	r.SendLagP99Ms = percentiles(d.sendLag, 99)[0] / 1e6
	r.PickupLagP99Ms = percentiles(lags, 99)[0] / 1e6
	lagBound := generatorLag * float64(d.deadline) / 1e6
	r.GeneratorBehind = float64(r.notSent()) > generatorNotSent*float64(r.Arrivals) ||
		r.SendLagP99Ms > lagBound || r.PickupLagP99Ms > lagBound
}

// cellEvent is one thing that happens in a simulated cell, in time order.
type cellEvent struct {
	at   float64 // seconds
	kind int     // one of the event kinds below
	id   uint32
}

const (
	eventSend = iota // the generator sends the request
	eventUnit        // its handler does a unit of work
	eventDone        // its answer comes, or its client gives up
	eventMark        // the window starts, or ends
)

// The aggregates of a cell (the tally, and the work attributed to the
// good answers as the requests come and go) give the same row as a result
// and every request's units at both ends of the window did, on a
// generated cell: every outcome, warm-up and tail, requests out at either
// end of the window, handlers that work on after their client gave up,
// requests of the window without a result, ids beyond the shared file.
func TestOverloadRowFill_the_aggregates_give_the_per_arrival_figures(t *testing.T) {
	t.Parallel()
	for seed := range uint64(8) {
		rng := rand.New(rand.NewPCG(seed, 1))
		const (
			ids      = 4000
			perSec   = 1000.0
			deadline = 0.2 // seconds
		)
		first, end := 800+rng.IntN(200), 3000+rng.IntN(200)
		sh := sharedForTest(t, ids-50) // the last ids' units overflow
		var results []result
		var sendLag []int64
		events := []cellEvent{{at: float64(first) / perSec, kind: eventMark}, {at: float64(end) / perSec, kind: eventMark}}
		for id := range uint32(ids) {
			arrived := float64(id) / perSec
			measured := int(id) >= first && int(id) < end
			if measured {
				sendLag = append(sendLag, rng.Int64N(int64(5*time.Millisecond)))
			}
			o := outcome(rng.IntN(int(outcomes)))
			if rng.IntN(3) == 0 {
				o = outGood // most cells answer most
			}
			if measured && rng.IntN(100) == 0 {
				o = outCut // sent, and no result: still out when the run ended
			}
			lag := time.Duration(rng.Int64N(int64(20 * time.Millisecond)))
			res := result{id: id, outcome: o, lag: lag}
			switch o {
			case outDropped:
				res.lag = 0
			case outUnsent:
				res.lag = time.Duration(deadline*float64(time.Second)) + lag
			}
			sent := o != outDropped && o != outUnsent && o != outConnect
			answered := arrived + deadline // given up
			if o < outGiveUp {
				latency := lag + time.Duration(rng.Int64N(int64(deadline*float64(time.Second))-int64(lag)))
				answered = arrived + latency.Seconds()
				res.latency = latency
			}
			if sent {
				from := arrived + lag.Seconds()
				events = append(events, cellEvent{at: from, kind: eventSend, id: id})
				if o != outCut || !measured {
					events = append(events, cellEvent{at: answered, kind: eventDone, id: id})
				}
				// A good answer's handler returned before it; another's
				// may work on, a racing handler after its timeout answer.
				until := answered
				if o != outGood {
					until += rng.Float64() * 3 * deadline
				}
				for range rng.IntN(8) {
					events = append(events, cellEvent{at: from + rng.Float64()*(until-from)*0.999, kind: eventUnit, id: id})
				}
			}
			if o != outCut || !measured {
				results = append(results, res)
			}
		}
		slices.SortStableFunc(events, func(a, b cellEvent) int { return cmp.Compare(a.at, b.at) })
		outcomeOf := map[uint32]outcome{}
		for _, r := range results {
			outcomeOf[r.id] = r.outcome
		}

		// The run, with the aggregates; the copies of every request's
		// units for the reference.
		ww := newWindowWork(sh)
		var copies [][]uint32
		for _, e := range events {
			switch e.kind {
			case eventSend:
				ww.sending(e.id)
			case eventUnit:
				sh.addWork(int(e.id), 1)
			case eventDone:
				ww.done(e.id, outcomeOf[e.id] == outGood)
			case eventMark:
				ww.mark()
				c := make([]uint32, len(sh.work))
				for i := range c {
					c[i] = sh.work[i].Load()
				}
				copies = append(copies, c)
			}
		}
		slices.Reverse(results) // any order
		var want, got overloadRow
		fillPerArrival(&want, perArrivalCell{measure: time.Duration(end-first) * time.Millisecond, deadline: 200 * time.Millisecond,
			first: first, end: end, results: results, workBefore: copies[0], workAfter: copies[1], sendLag: sendLag, workers: 7})
		work, good := ww.window()
		got.fill(cellData{measure: time.Duration(end-first) * time.Millisecond, deadline: 200 * time.Millisecond,
			arrivals: int64(end - first), tally: tallyOf(first, end, results), sendLag: histogramOf(sendLag...),
			work: work, goodWork: good, workers: 7})
		if !reflect.DeepEqual(got, want) {
			t.Errorf("seed %d: aggregates\n%+v\nper arrival\n%+v", seed, got, want)
		}
		if want.Cut == 0 || want.Wasted == 0 || want.Wasted == want.Work || want.Good == 0 {
			t.Errorf("seed %d: the cell lacks a case: %+v", seed, want)
		}
		if len(ww.out) != int(want.Cut) || len(ww.at[0])+len(ww.at[1]) > 2*len(ww.out) {
			t.Errorf("seed %d: %d requests out at the end, %d and %d units kept; want the %d cut, and theirs at most",
				seed, len(ww.out), len(ww.at[0]), len(ww.at[1]), want.Cut)
		}
	}
}

// The generator's memory does not grow with the arrivals: a result kept
// for each took 1-2 GB in an hour's soak at 10x. Here 4 million arrivals,
// 96 MiB of results kept that way, each sent, answered and counted as a
// worker does it, allocate less than 2 MiB. Not parallel: the heap's count
// of bytes allocated is the process's.
func TestOpenLoop_memory_does_not_grow_with_the_arrivals(t *testing.T) {
	g := newOpenLoop("127.0.0.1:1", time.Second, 1)
	g.work = newWindowWork(sharedForTest(t, 1024))
	g.work.mark() // in the window
	w := &loadWorker{g: g}
	const n = 4 << 20
	at := time.Now()
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for i := range n {
		a := arrival{id: uint32(i), at: at, measured: true}
		o := outcome(i % int(outcomes))
		g.work.sending(a.id)
		g.work.done(a.id, o == outGood)
		w.record(a, o, time.Duration(i%100_000)*time.Microsecond, time.Duration(i%1000)*time.Microsecond)
	}
	runtime.ReadMemStats(&after)
	if got := after.TotalAlloc - before.TotalAlloc; got > 2<<20 {
		t.Errorf("%d arrivals allocated %.1f MiB, want less than 2", n, float64(got)/(1<<20))
	}
	if got := g.tally.recorded(); got != n {
		t.Errorf("%d results counted, want %d", got, n)
	}
	if len(g.work.out)+len(g.work.at[0])+len(g.work.at[1]) != 0 {
		t.Errorf("%d requests out, %d and %d units kept; want none once all are done", len(g.work.out), len(g.work.at[0]), len(g.work.at[1]))
	}
}
