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
// stayed busy for lifoAfter is full, but the wait of its waiters is over by
// the clock; their timers are due, but their goroutines have not run yet (a
// starved process, as under the overload that fills a queue). A newcomer
// was refused for the full queue (queue_full), so its fate depended on
// whether those goroutines had run first. By the clock they leave, refused
// as their timers would have them, and the newcomer is queued: at the head
// of the queue, as dispatch refuses them, and behind an oldest waiter whose
// share is long (its budget, from its own TimeoutFunc or deadline header,
// an hour), where dispatch stops. On a fake clock an hour ahead, so that
// the queue's decisions are the test's: the short waiters' goroutines stall
// before their timers are set. Not parallel: testHookQueued is the
// process's.
func TestLimiter_a_young_full_queue_goes_by_the_clock(t *testing.T) {
	for _, tc := range []struct {
		name string
		long int // waiters at the head with an hour's budget
	}{
		{name: "every wait over"},
		{name: "behind a longer wait", long: 1},
	} {
		for _, adaptive := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/adaptive=%v", tc.name, adaptive), func(t *testing.T) { youngFullQueue(t, adaptive, tc.long) })
		}
	}
}

func youngFullQueue(t *testing.T, adaptive bool, long int) {
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

	longs := make(chan string, long)
	reasons := make(chan string, minQueue)
	for i := range minQueue {
		answers, until := reasons, t0+int64(budget)
		if i < long {
			answers, until = longs, t0+int64(time.Hour)
		}
		go func() {
			_, reason := l.acquire(nil, t0, until, noDeadline)
			answers <- reason
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
	require.Zero(t, len(newcomer), "queued, not refused: the short waits are over")

	if resumed.CompareAndSwap(false, true) {
		close(resume)
	}
	for range minQueue - long {
		assert.NotEmpty(t, receive(t, reasons, "a short waiter's answer"), "refused, its wait over")
	}
	for range long {
		l.release(at, 0, false)
		require.Empty(t, receive(t, longs, "the oldest's answer"), "handed the freed slot")
	}
	l.release(at, 0, false)
	require.Empty(t, receive(t, newcomer, "the newcomer's answer"), "handed the freed slot")
	l.release(at, 0, false)
	assert.Zero(t, l.holding())
	assert.Zero(t, l.waiting.Load())
	assert.Zero(t, stats.waiting.Load())
	assert.Equal(t, int64(minQueue+1), stats.queued.Load())
	assert.Equal(t, int64(minQueue-long), stats.rejectedFull.Load()+stats.rejectedTimeout.Load())
}
