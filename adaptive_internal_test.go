package fasttimeout

import (
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestLimiter_a_window_after_an_idle_spell_starts_with_its_first_event: a
// window that had no event for a while starts with its first one, a return
// in time or a timeout, not after the idle spell. The first event set the
// start after counting itself, so a second one counted in between, on
// another core, went by the start of the idle spell and closed the window
// at once on those two events: whether two slow returns after a quiet
// spell halved the limit and called a probe, or two timeouts halved it,
// depended on which goroutine ran first. Not parallel: testHookCounted is
// the process's.
func TestLimiter_a_window_after_an_idle_spell_starts_with_its_first_event(t *testing.T) {
	const slow = 50 * time.Millisecond // over the target of the unloaded latency, 2 ms
	events := map[string]func(l *limiter, t int64){
		"return": func(l *limiter, t int64) { l.sample(t, slow) },
		"timeout": func(l *limiter, t int64) {
			l.late.Add(1) // as settle counts it before the drop
			l.drop(t, t-int64(time.Second))
		},
	}
	for _, first := range []string{"return", "timeout"} {
		for _, second := range []string{"return", "timeout"} {
			t.Run(first+" then "+second, func(t *testing.T) {
				l, clock, limit := afterAClose(t)
				clock += int64(10 * time.Second) // idle
				var nested atomic.Bool
				hook := func(hooked *limiter) {
					// The second event comes on another core just as the
					// first has counted itself.
					if hooked == l && !nested.Swap(true) {
						events[second](l, clock+int64(time.Microsecond))
					}
				}
				testHookCounted.Store(&hook)
				t.Cleanup(func() { testHookCounted.Store(nil) })
				events[first](l, clock)
				require.True(t, nested.Load(), "the second event ran")
				assert.Equal(t, int64(2), l.count.Load()+l.drops.Load(), "the window of the two events, a microsecond long, is still open")
				assert.Equal(t, limit, l.limit.Load(), "the limit, which two events cannot move")
			})
		}
	}
}

// TestLimiter_a_window_starts_no_earlier_than_the_last_closed: a return read
// its time before the last window closed, and counted itself after (its
// goroutine descheduled in between, or the whole process stalled): it
// started the new window at its time, before the close, so the window was
// due that much early, and the next return closed it on those two.
func TestLimiter_a_window_starts_no_earlier_than_the_last_closed(t *testing.T) {
	t.Parallel()
	l, clock, limit := afterAClose(t)
	const stale = 3 * maxWindow / 4
	l.sample(clock-int64(stale), 50*time.Millisecond)             // read its time before the close
	l.sample(clock+int64(maxWindow-stale)+1, 50*time.Millisecond) // a quarter of a window after the close
	assert.Equal(t, int64(2), l.count.Load(), "the window, open for a quarter of maxWindow, is still open")
	assert.Equal(t, limit, l.limit.Load(), "the limit, which two returns cannot move")
}

// afterAClose returns a warmed adaptive limiter whose last window has just
// closed, at clock, and its limit then.
func afterAClose(t *testing.T) (l *limiter, clock, limit int64) {
	t.Helper()
	l = seeded(newLimiter(1000, true, time.Second, new(Stats), new(atomic.Int64)))
	clock = warm(t, l, int64(time.Hour)) + int64(maxWindow)
	l.adapt(clock) // the last window closes
	require.Zero(t, l.count.Load()+l.drops.Load(), "a new window, empty")
	return l, clock, l.limit.Load()
}
