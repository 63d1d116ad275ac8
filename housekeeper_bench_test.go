package fasttimeout

import (
	"fmt"
	"testing"
	"time"

	"github.com/valyala/fasthttp"
)

// BenchmarkHousekeeperScan is one tick of the housekeeper over n watched
// cooperative contexts, none of them due: what cooperative deadlines cost
// per Precision (1 ms by default) while requests are in flight. Compare
// BenchmarkDeadlineTimer, what a timer per request would cost instead.
func BenchmarkHousekeeperScan(b *testing.B) {
	for _, n := range []int{100, 1000, 10000} {
		b.Run(fmt.Sprintf("contexts=%d", n), func(b *testing.B) {
			h := newHousekeeper(DefaultPrecision)
			deadline := now() + int64(time.Hour)
			for i := range n { // as many connections, without starting the goroutine
				ctx := new(fasthttp.RequestCtx)
				c := newRequestContext(ctx, deadline)
				c.shard = uint8(i % contextShards)
				s := &h.shards[c.shard]
				c.slot = len(s.contexts)
				s.contexts = append(s.contexts, c)
			}
			t := now()
			for b.Loop() {
				if !h.expireContexts(t) {
					b.Fatal("a context expired")
				}
			}
		})
	}
}

// BenchmarkDeadlineTimer is the timer a request that finishes in time would
// arm and stop if each cooperative context had one, as each racing call has.
func BenchmarkDeadlineTimer(b *testing.B) {
	tm := time.AfterFunc(time.Hour, func() {})
	defer tm.Stop()
	for b.Loop() {
		tm.Reset(time.Second)
		tm.Stop()
	}
}

// BenchmarkNow is one reading of the monotonic clock. The racing fast path
// reads it three times per request (at admission, at the handler's return,
// and in the runtime's timer reset), twice on a busy connection that keeps
// its timer (see worker.arm): on some virtual machines a reading is a
// sizeable share of the path.
func BenchmarkNow(b *testing.B) {
	var sum int64
	for b.Loop() {
		sum += now()
	}
	if sum == 0 {
		b.Fatal("the clock did not move")
	}
}
