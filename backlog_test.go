package fasttimeout

import (
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
)

func TestNextShed(t *testing.T) {
	t.Parallel()
	const target = int64(50 * time.Millisecond)
	share := func(f float64) uint32 { return uint32(f * (1 << 32)) }
	for _, c := range []struct {
		name    string
		p       uint32
		latency int64
		want    float64
	}{
		{"a wait at the target changes nothing", share(0.3), target, 0.3},
		{"a wait twice the target raises it by a step", 0, 2 * target, shedStep},
		{"a wait far above raises it by four steps at most", 0, 100 * target, 4 * shedStep},
		{"no wait lowers it by a step", share(0.3), 0, 0.3 - shedStep},
		{"never below zero", 0, 0, 0},
		{"never above its ceiling", share(maxShed), 100 * target, maxShed},
	} {
		got := float64(nextShed(c.p, c.latency, target)) / (1 << 32)
		assert.InDelta(t, c.want, got, 1e-6, c.name)
	}
}

func TestBacklogTarget(t *testing.T) {
	t.Parallel()
	assert.Equal(t, int64(50*time.Millisecond), backlogTarget(time.Second))
	assert.Equal(t, int64(20*time.Millisecond), backlogTarget(time.Millisecond))
	assert.Equal(t, int64(250*time.Millisecond), backlogTarget(time.Hour))
}

// TestLimiter_refuses_for_a_backlog: while the run queue is backed up, an
// adaptive limiter refuses that share of requests at once, even below its
// limit; a fixed limit does not look at the run queue.
func TestLimiter_refuses_for_a_backlog(t *testing.T) {
	t.Parallel()
	for _, adaptive := range []bool{true, false} {
		l := newLimiter(1000, adaptive, time.Second, new(Stats))
		l.limit.Store(1000)
		at := now()
		l.shedAt.Store(at) // no update during the test
		l.shed.Store(1 << 32 / 10 * 9)
		refused := 0
		for range 200 {
			_, reason := l.acquire(at, at+int64(time.Second))
			if reason != "" {
				assert.Equal(t, RejectedQueueFull, reason)
				refused++
				continue
			}
			l.release(at, 0, false)
		}
		if adaptive {
			assert.Greater(t, refused, 100, "about 180 of 200 refused")
			assert.Less(t, refused, 200, "some get through, to keep measuring")
		} else {
			assert.Zero(t, refused)
		}
	}
}

// TestRunQueueLatency: goroutines that wait for a P are seen. Not parallel:
// it measures the whole process.
func TestRunQueueLatency(t *testing.T) {
	runQueue.mu.Lock() // no limiter reads in between
	defer runQueue.mu.Unlock()
	readRunQueue()
	// All start at once and wait in the run queue for one another: most of
	// the scheduling events of the interval wait for milliseconds, however
	// many short ones the rest of the process adds.
	start := make(chan struct{})
	var wg sync.WaitGroup
	for range 300 {
		wg.Go(func() {
			<-start
			for begin := time.Now(); time.Since(begin) < 3*time.Millisecond; {
			}
		})
	}
	close(start)
	wg.Wait()
	assert.GreaterOrEqual(t, readRunQueue(), int64(time.Millisecond), "300 goroutines of 3 ms of CPU each, on at most a few Ps")
}
