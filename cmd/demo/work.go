package main

import (
	"crypto/sha256"
	"encoding/hex"
	"math"
	"sync"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/fasttimeout/fasttimeout"
)

const (
	// maxWork bounds the ms of /work/{ms}.
	maxWork = time.Minute
	// workChunk is about the CPU time between two looks at the context:
	// short enough that a cancelled request stops at once, long enough
	// that looking costs nothing.
	workChunk = 100 * time.Microsecond
)

// hashesPerChunk is how many SHA-256 hashes of a 32-byte block take about
// workChunk of CPU on this machine, measured once.
var hashesPerChunk = sync.OnceValue(func() int {
	// The fastest of several runs: a run slowed by other processes would
	// make every chunk too short.
	const n = 1000
	best := time.Duration(math.MaxInt64)
	var sum [32]byte
	for range 5 {
		start := time.Now()
		for range n {
			sum = sha256.Sum256(sum[:])
		}
		best = min(best, time.Since(start))
	}
	return max(1, int(int64(n)*int64(workChunk)/max(1, int64(best))))
})

// serveWork is CPU-bound work that honours its context: it hashes for
// about ms milliseconds of CPU, measured in hashes (so a request slowed by
// others sharing the CPU still does its whole share), and stops as soon as
// its context is done. It answers
// {"cpu_ms":1.6,"hashes":8000,"digest":"<the first 8 bytes, hex>"}.
func serveWork(ctx *fasthttp.RequestCtx, ms string) {
	d, ok := parseMillis(ctx, ms)
	if !ok {
		return
	}
	reqCtx := fasttimeout.Context(ctx)
	hashes, digest, finished := burnCPU(reqCtx.Done(), d)
	if !finished {
		answerCancelled(ctx, reqCtx)
		return
	}
	writeJSON(ctx, fasthttp.StatusOK, worked{
		CPUMillis: float64(d) / float64(time.Millisecond),
		Hashes:    hashes,
		Digest:    hex.EncodeToString(digest[:8]),
	})
}

type worked struct {
	CPUMillis float64 `json:"cpu_ms"`
	Hashes    int     `json:"hashes"`
	Digest    string  `json:"digest"`
}

// burnCPU chains SHA-256 hashes for about d of CPU, looking at done every
// workChunk of them. It returns the number of hashes made, the last one,
// and whether it did all its work (false: done was closed first).
func burnCPU(done <-chan struct{}, d time.Duration) (hashes int, digest [32]byte, finished bool) {
	total := hashesFor(d)
	for hashes < total {
		select {
		case <-done:
			return hashes, digest, false
		default:
		}
		chunk := min(hashesPerChunk(), total-hashes)
		for range chunk {
			digest = sha256.Sum256(digest[:])
		}
		hashes += chunk
	}
	return hashes, digest, true
}

// hashesFor is the number of hashes that take about d of CPU.
func hashesFor(d time.Duration) int {
	chunk := int64(workChunk)
	return int((int64(hashesPerChunk())*int64(d) + chunk - 1) / chunk)
}

// parseMillis parses ms, a number of milliseconds between 0 and maxWork
// ("20", "1.6"). On bad input it answers 400 and returns false.
func parseMillis(ctx *fasthttp.RequestCtx, ms string) (time.Duration, bool) {
	return parseAmount(ctx, "ms", ms, time.Millisecond, "milliseconds", maxWork)
}
