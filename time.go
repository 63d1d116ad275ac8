package fasttimeout

import (
	"math"
	"time"
)

// epoch anchors deadlines: they are stored as nanoseconds since epoch on the
// monotonic clock, so they fit an atomic int64 and need no time.Time.
var epoch = time.Now()

// noDeadline marks a call or context whose deadline is switched off.
const noDeadline = math.MaxInt64

// now returns the monotonic time since epoch in nanoseconds.
func now() int64 { return int64(time.Since(epoch)) }

// deadlineAfter returns t+d, or noDeadline-1 if that does not fit: a
// deadline too far away to matter, but still a deadline. d is not negative.
func deadlineAfter(t int64, d time.Duration) int64 {
	if t > 0 && int64(d) >= noDeadline-t {
		return noDeadline - 1
	}
	return min(t+int64(d), noDeadline-1)
}
