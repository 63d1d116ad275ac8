package main

import (
	"math"
	"math/rand/v2"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// wholeSetPercentiles is how the throughput and storm rows read their
// percentiles when the clients kept every value: one histogram over the
// whole set, its range the largest value (at least a minute).
func wholeSetPercentiles(values []int64, qs ...float64) []float64 {
	h := hdrhistogram.New(1, max(slices.Max(values), 60e9), 3)
	for _, v := range values {
		if err := h.RecordValue(max(v, 1)); err != nil {
			panic(err)
		}
	}
	out := make([]float64, len(qs))
	for i, q := range qs {
		out[i] = float64(h.ValueAtQuantile(q))
	}
	return out
}

// recordedSet is a set of latencies (ns) as a cell records them: most
// between 20 µs and 5 ms, a tail to 10 s (the client's deadline), some at a
// timeout's 50 ms, a few past a minute (a stalled generator) and below
// 1 ns (a lateness clamped to 0).
func recordedSet(n int) []int64 {
	rnd := rand.New(rand.NewPCG(1, 2))
	values := make([]int64, n)
	for i := range values {
		switch x := rnd.Float64(); {
		case x < 0.80:
			values[i] = int64(20e3 * math.Pow(250, rnd.Float64()))
		case x < 0.95:
			values[i] = 50e6 + rnd.Int64N(2e6)
		case x < 0.999:
			values[i] = int64(5e6 * math.Pow(2000, rnd.Float64()))
		case x < 0.9995:
			values[i] = 60e9 + rnd.Int64N(3600e9)
		default:
			values[i] = 0
		}
	}
	return values
}

// The clients of a cell record into one histogram, in batches and in any
// order, growing its range past a minute as values come: its quantiles are
// exactly those of one histogram over the whole set, as the rows were read
// when every value was kept, and so are the rows' fields.
func TestHistogram_quantiles_are_those_of_the_whole_set(t *testing.T) {
	t.Parallel()
	values := recordedSet(200_000)
	qs := []float64{0, 1, 50, 90, 99, 99.9, 99.99, 100}
	want := wholeSetPercentiles(values, qs...)
	for _, clients := range []int{1, 7, 64} {
		var shared sharedHistogram
		var wg sync.WaitGroup
		for c := range clients {
			wg.Go(func() {
				b := latencyBatch{into: &shared}
				for i := c; i < len(values); i += clients {
					b.add(values[i])
				}
				b.flush()
			})
		}
		wg.Wait()
		if got := shared.h.quantiles(qs...); !slices.Equal(got, want) {
			t.Errorf("%d clients: quantiles %v of %v, want %v", clients, qs, got, want)
		}
		if got := shared.h.count(); got != int64(len(values)) {
			t.Errorf("%d clients: %d values, want %d", clients, got, len(values))
		}
		var tr throughputRow
		tr.fill(loadResult{latencies: shared.h}, serverStats{}, serverStats{})
		if tr.P50Micros != want[2]/1e3 || tr.P99Micros != want[4]/1e3 || tr.P999Micros != want[5]/1e3 {
			t.Errorf("%d clients: throughput p50/p99/p99.9 %v/%v/%v µs, want %v/%v/%v", clients,
				tr.P50Micros, tr.P99Micros, tr.P999Micros, want[2]/1e3, want[4]/1e3, want[5]/1e3)
		}
		var sr stormRow
		sr.fill(loadResult{timeouts: shared.h}, serverStats{}, serverStats{}, serverStats{})
		if sr.LatenessP50Ms != want[2]/1e6 || sr.LatenessP99Ms != want[4]/1e6 {
			t.Errorf("%d clients: storm lateness p50/p99 %v/%v ms, want %v/%v", clients,
				sr.LatenessP50Ms, sr.LatenessP99Ms, want[2]/1e6, want[4]/1e6)
		}
	}
	if got := percentiles(values, qs...); !slices.Equal(got, want) {
		t.Errorf("percentiles: %v, want %v", got, want)
	}
}

// A client's memory does not grow with the responses it measures: a cell
// of an hour at 100 000 requests/s measured 360 million, 2.9 GB of
// latencies kept one a request (and as much again for the storm's
// lateness, and again where the clients' were gathered). Here 4 million
// responses, half of them timeouts, 48 MiB kept that way, allocate less than
// 2 MiB. Not parallel: the heap's count of bytes allocated is the
// process's.
func TestLoadClient_memory_does_not_grow_with_the_responses(t *testing.T) {
	var latencies, timeouts sharedHistogram
	c := &loadClient{statuses: map[int]int64{}, latencies: latencyBatch{into: &latencies}, timeouts: latencyBatch{into: &timeouts}}
	const n = 4 << 20
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for i := range n {
		code := 200
		if i%2 == 1 {
			code = 504
		}
		c.measure(time.Duration(i%100_000)*time.Microsecond, code, 50*time.Millisecond, 504)
	}
	c.latencies.flush()
	c.timeouts.flush()
	runtime.ReadMemStats(&after)
	if got := after.TotalAlloc - before.TotalAlloc; got > 2<<20 {
		t.Errorf("%d responses allocated %.1f MiB, want less than 2", n, float64(got)/(1<<20))
	}
	if latencies.h.count() != n || timeouts.h.count() != n/2 || c.statuses[504] != n/2 {
		t.Errorf("%d latencies, %d timeouts, statuses %v; want %d, %d, half 504", latencies.h.count(), timeouts.h.count(), c.statuses, n, n/2)
	}
}
