package fasttimeout

import (
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/valyala/fasthttp"
)

// TestHousekeeper_watch_racing_its_stop races a context's watch against
// the housekeeper deciding to stop for lack of anything to watch. Whoever
// comes second must see the other: the housekeeper keeps running, or the
// watch starts a new one. Otherwise the context would never be cancelled at
// its deadline.
func TestHousekeeper_watch_racing_its_stop(t *testing.T) {
	t.Parallel()
	const rounds = 500
	var started []*housekeeper // whose watch started a goroutine, to wait for its exit
	for i := range rounds {
		h := newHousekeeper(time.Millisecond)
		h.running.Store(true) // as if its goroutine were running, and now retiring
		b := newRequestContext(new(fasthttp.RequestCtx), now()+int64(time.Hour))
		b.shard = uint8(i % contextShards)

		var stopped bool
		var wg sync.WaitGroup
		ready := make(chan struct{})
		wg.Go(func() {
			<-ready
			stopped = !h.retireIdle(now())
		})
		wg.Go(func() {
			<-ready
			h.watch(b)
		})
		close(ready)
		wg.Wait()

		require.True(t, h.running.Load(), "round %d: a context is watched and no housekeeper runs (stopped: %v)", i, stopped)
		h.unwatch(b)
		if stopped {
			started = append(started, h) // the watch started a goroutine
		}
	}
	for _, h := range started { // each exits once it has rested with nothing to watch
		require.Eventually(t, func() bool { return !h.running.Load() }, 30*time.Second, time.Millisecond)
	}
	t.Logf("%d of %d rounds stopped the housekeeper before the watch", len(started), rounds)
}
