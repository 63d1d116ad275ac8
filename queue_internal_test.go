package fasttimeout

import (
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestLimiter_a_young_full_queue_goes_by_the_clock: a queue that has not yet
// stayed busy for lifoAfter is full, but the wait of every waiter in it is
// over by the clock; their timers are due, but their goroutines have not run
// yet (a starved process, as under the overload that fills a queue). A
// newcomer was refused for the full queue (queue_full), so its fate
// depended on whether those goroutines had run first. By the clock they
// leave, refused as their timers would have them, as dispatch refuses them,
// and the newcomer is queued. On a fake clock an hour ahead, so that the
// queue's decisions are the test's: the waiters' goroutines stall before
// their timers are set. Not parallel: testHookQueued is the process's.
func TestLimiter_a_young_full_queue_goes_by_the_clock(t *testing.T) {
	for _, adaptive := range []bool{false, true} {
		t.Run(fmt.Sprintf("adaptive=%v", adaptive), func(t *testing.T) { youngFullQueue(t, adaptive) })
	}
}

func youngFullQueue(t *testing.T, adaptive bool) {
	stats := new(Stats)
	l := newLimiter(1, adaptive, time.Second, stats, new(atomic.Int64))
	require.True(t, l.tryAcquire())
	t0 := int64(time.Hour)
	const budget = 2 * time.Millisecond // a share of 200 µs
	resume := make(chan struct{})
	stall := func(hooked *limiter, _ chan bool, deadline int64) {
		if hooked == l && deadline == t0+int64(budget) { // the waiters, not the newcomer
			<-resume
		}
	}
	testHookQueued.Store(&stall)
	t.Cleanup(func() { testHookQueued.Store(nil) })
	var resumed atomic.Bool
	t.Cleanup(func() {
		if resumed.CompareAndSwap(false, true) {
			close(resume) // should the test fail first
		}
	})

	reasons := make(chan string, minQueue)
	for i := range minQueue {
		go func() {
			_, reason := l.acquire(nil, t0, t0+int64(budget), noDeadline)
			reasons <- reason
		}()
		require.Eventually(t, func() bool { return stats.waiting.Load() == int64(i+1) }, 10*time.Second, time.Millisecond)
	}

	// After the waiters' share, within lifoAfter: oldest first still.
	at := t0 + int64(budget/waitShare) + 1
	require.Less(t, at-t0, int64(lifoAfter))
	newcomer := make(chan string, 1)
	go func() {
		_, reason := l.acquire(nil, at, at+int64(time.Hour), noDeadline)
		newcomer <- reason
	}()
	require.Eventually(t, func() bool { return len(newcomer) == 1 || stats.queued.Load() > minQueue }, 10*time.Second, time.Millisecond,
		"the newcomer queued or refused")
	l.release(at, 0, false)
	require.Empty(t, receive(t, newcomer, "the newcomer's answer"), "queued, then handed the freed slot")

	if resumed.CompareAndSwap(false, true) {
		close(resume)
	}
	for range minQueue {
		assert.NotEmpty(t, receive(t, reasons, "a waiter's answer"), "refused, its wait over")
	}
	l.release(at, 0, false)
	assert.Zero(t, l.holding())
	assert.Zero(t, l.waiting.Load())
	assert.Zero(t, stats.waiting.Load())
	assert.Equal(t, int64(minQueue+1), stats.queued.Load())
	assert.Equal(t, int64(minQueue), stats.rejectedFull.Load()+stats.rejectedTimeout.Load())
}

// TestLimiter_a_young_full_queue_goes_by_the_clock_behind_a_longer_wait: as
// above, but the oldest waiter's share is long (its budget, from its own
// TimeoutFunc or deadline header, an hour) while every waiter behind it
// has a wait that is over by the clock. The newcomer was refused for the
// full queue (queue_full): only the waiters at the head were looked at,
// and the first of them still had time to wait. Those whose wait is over
// leave refused wherever they are in the queue, and the newcomer is
// queued. Not parallel: testHookQueued is the process's.
func TestLimiter_a_young_full_queue_goes_by_the_clock_behind_a_longer_wait(t *testing.T) {
	for _, adaptive := range []bool{false, true} {
		t.Run(fmt.Sprintf("adaptive=%v", adaptive), func(t *testing.T) { youngFullQueueBehindALongerWait(t, adaptive) })
	}
}

func youngFullQueueBehindALongerWait(t *testing.T, adaptive bool) {
	stats := new(Stats)
	l := newLimiter(1, adaptive, time.Second, stats, new(atomic.Int64))
	require.True(t, l.tryAcquire())
	t0 := int64(time.Hour)
	const budget = 2 * time.Millisecond // a share of 200 µs
	resume := make(chan struct{})
	stall := func(hooked *limiter, _ chan bool, deadline int64) {
		if hooked == l && deadline == t0+int64(budget) { // the short waiters, not the others
			<-resume
		}
	}
	testHookQueued.Store(&stall)
	t.Cleanup(func() { testHookQueued.Store(nil) })
	var resumed atomic.Bool
	t.Cleanup(func() {
		if resumed.CompareAndSwap(false, true) {
			close(resume) // should the test fail first
		}
	})

	first := make(chan string, 1)
	go func() {
		_, reason := l.acquire(nil, t0, t0+int64(time.Hour), noDeadline)
		first <- reason
	}()
	require.Eventually(t, func() bool { return stats.waiting.Load() == 1 }, 10*time.Second, time.Millisecond)
	reasons := make(chan string, minQueue-1)
	for i := 1; i < minQueue; i++ {
		go func() {
			_, reason := l.acquire(nil, t0, t0+int64(budget), noDeadline)
			reasons <- reason
		}()
		require.Eventually(t, func() bool { return stats.waiting.Load() == int64(i+1) }, 10*time.Second, time.Millisecond)
	}

	// After the short waiters' share, within lifoAfter: oldest first still.
	at := t0 + int64(budget/waitShare) + 1
	require.Less(t, at-t0, int64(lifoAfter))
	newcomer := make(chan string, 1)
	go func() {
		_, reason := l.acquire(nil, at, at+int64(time.Hour), noDeadline)
		newcomer <- reason
	}()
	require.Eventually(t, func() bool { return len(newcomer) == 1 || stats.queued.Load() > minQueue }, 10*time.Second, time.Millisecond,
		"the newcomer queued or refused")
	require.Empty(t, func() string {
		select {
		case r := <-newcomer:
			return r
		default:
			return ""
		}
	}(), "queued, not refused: the waits behind the oldest are over")

	if resumed.CompareAndSwap(false, true) {
		close(resume)
	}
	for range minQueue - 1 {
		assert.NotEmpty(t, receive(t, reasons, "a short waiter's answer"), "refused, its wait over")
	}
	l.release(at, 0, false) // to the oldest
	require.Empty(t, receive(t, first, "the oldest's answer"), "handed the freed slot")
	l.release(at, 0, false) // to the newcomer
	require.Empty(t, receive(t, newcomer, "the newcomer's answer"), "handed the freed slot")
	l.release(at, 0, false)
	assert.Zero(t, l.holding())
	assert.Zero(t, l.waiting.Load())
	assert.Zero(t, stats.waiting.Load())
	assert.Equal(t, int64(minQueue+1), stats.queued.Load())
	assert.Equal(t, int64(minQueue-1), stats.rejectedFull.Load()+stats.rejectedTimeout.Load())
}
