package main

import (
	"math"
	"sync"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// histogram holds durations (ns) as percentiles reads them: an HDR
// histogram from 1 ns with 3 significant digits, reaching at least a
// minute and the largest value recorded; values below 1 ns count as 1 ns.
// Its quantiles are percentiles' of the same values, exactly: a value's
// bucket does not depend on the range, which only adds buckets at the top.
// Its memory does not grow with the number of values (216 KiB up to a
// minute, 8 KiB more each time the range doubles), where one value kept a
// request took gigabytes in a cell of an hour (-duration 1h at 60 000
// requests/s: 1.7 GB, twice once the clients' were gathered).
type histogram struct {
	h *hdrhistogram.Histogram // nil until the first value
}

// histogramOf records values into a new histogram.
func histogramOf(values ...int64) histogram {
	var h histogram
	for _, v := range values {
		h.record(v)
	}
	return h
}

// record adds one value.
func (hg *histogram) record(v int64) {
	v = max(v, 1)
	if hg.h == nil || v > hg.h.HighestTrackableValue() {
		highest := max(v, 60e9)
		if hg.h != nil && hg.h.HighestTrackableValue() <= math.MaxInt64/2 {
			// A range grown to each new largest value would copy the
			// counts each time.
			highest = max(highest, 2*hg.h.HighestTrackableValue())
		}
		grown := hdrhistogram.New(1, highest, 3)
		if hg.h != nil && grown.Merge(hg.h) != 0 {
			panic("loadtest: a histogram lost values as it grew") // the same buckets, a wider range
		}
		hg.h = grown
	}
	if err := hg.h.RecordValue(v); err != nil {
		panic(err) // within the range by construction
	}
}

// count is the number of values recorded.
func (hg histogram) count() int64 {
	if hg.h == nil {
		return 0
	}
	return hg.h.TotalCount()
}

// quantiles returns the quantiles qs (in percent), zeros when there is no
// value.
func (hg histogram) quantiles(qs ...float64) []float64 {
	out := make([]float64, len(qs))
	if hg.h == nil {
		return out
	}
	for i, q := range qs {
		out[i] = float64(hg.h.ValueAtQuantile(q))
	}
	return out
}

// sharedHistogram is a histogram that the clients of a cell record into
// together, each in batches (latencyBatch).
type sharedHistogram struct {
	mu sync.Mutex
	h  histogram
}

// latencyBatchSize is how many values a client keeps before it records them
// into the shared histogram: the lock is taken once for that many
// requests, and 10 000 connections keep 10 MiB at most (two batches each).
const latencyBatchSize = 64

// latencyBatch is one client's values not yet recorded into a shared
// histogram.
type latencyBatch struct {
	into   *sharedHistogram
	values []int64
}

// add keeps v, and records the batch once it is full.
func (b *latencyBatch) add(v int64) {
	if b.values == nil {
		b.values = make([]int64, 0, latencyBatchSize)
	}
	b.values = append(b.values, v)
	if len(b.values) == cap(b.values) {
		b.flush()
	}
}

// flush records the values kept.
func (b *latencyBatch) flush() {
	if len(b.values) == 0 {
		return
	}
	b.into.mu.Lock()
	for _, v := range b.values {
		b.into.h.record(v)
	}
	b.into.mu.Unlock()
	b.values = b.values[:0]
}
