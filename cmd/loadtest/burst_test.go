package main

import (
	"context"
	"os"
	"runtime"
	"testing"
	"time"

	"github.com/valyala/fasthttp"
)

// TestMeasureBurst runs a tiny burst against each variant's server in this
// process. It asserts only what holds whatever the machine's speed: every
// request is answered, and the handlers that run past the deadline by
// construction (ignoring, honouring and panicking: 80 ms and 70 ms against
// 40 ms) never get their own 200.
func TestMeasureBurst(t *testing.T) {
	const conns, perConn = 4, 5
	for _, v := range burstVariants(allVariants) {
		t.Run(v, func(t *testing.T) {
			row, err := measureBurst(context.Background(), v, conns, perConn, true, os.Stderr)
			if err != nil {
				t.Fatal(err)
			}
			if row.Responses != conns*perConn || row.Errors != 0 || row.Crashed {
				t.Errorf("responses %d of %d, errors %d, crashed %v", row.Responses, conns*perConn, row.Errors, row.Crashed)
			}
			slow := int64(conns * perConn * 3 / len(burstKinds))
			if row.Timeouts+row.EscapedPanics < slow {
				t.Errorf("%d timeout answers and %d re-raised panics; want at least %d together", row.Timeouts, row.EscapedPanics, slow)
			}
			if row.Other != 0 {
				t.Errorf("%d unexpected responses", row.Other)
			}
		})
	}
}

// A burst client's memory does not grow with the timeout answers it
// counts: their lateness kept one an answer came to some 160 MB at the
// most the flags allow (10 000 connections × 1 000 requests, and the
// clients' gathered). Here 4 million responses, half of them timeouts,
// 16 MiB kept that way, allocate less than 2 MiB. Not parallel: the
// heap's count of bytes allocated is the process's.
func TestBurstClient_memory_does_not_grow_with_the_responses(t *testing.T) {
	var lateness sharedHistogram
	c := &burstClient{late: latencyBatch{into: &lateness}}
	var ok, timeout fasthttp.Response
	ok.Header.Set(lateHeader, "-1500") // as every 200 of the burst's handlers
	timeout.SetStatusCode(fasthttp.StatusGatewayTimeout)
	const n = 4 << 20
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for i := range n {
		resp := &ok
		if i%2 == 1 {
			resp = &timeout
		}
		c.count(resp, burstTimeout+time.Duration(i%100_000)*time.Microsecond)
	}
	c.late.flush()
	runtime.ReadMemStats(&after)
	if got := after.TotalAlloc - before.TotalAlloc; got > 2<<20 {
		t.Errorf("%d responses allocated %.1f MiB, want less than 2", n, float64(got)/(1<<20))
	}
	if c.res.timeouts != n/2 || lateness.h.count() != n/2 || c.res.latenessMax != int64(99_999*time.Microsecond) {
		t.Errorf("%d timeouts, %d latenesses, the latest %d ns; want %d, %d, %d", c.res.timeouts, lateness.h.count(), c.res.latenessMax, n/2, n/2, 99_999*time.Microsecond)
	}
}
