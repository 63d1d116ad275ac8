package fasttimeout

import (
	"math"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
)

func TestResolve_rounds_RetryAfter_up_to_whole_seconds(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		retryAfter time.Duration
		want       string
	}{
		{0, "1"}, // the default
		{time.Nanosecond, "1"},
		{time.Second, "1"},
		{1500 * time.Millisecond, "2"},
		{3 * time.Second, "3"},
		{math.MaxInt64, "9223372037"}, // adding a second first would overflow: "-9223372035"
	} {
		got := Config{RetryAfter: tc.retryAfter}.resolve().retryAfterHeader
		assert.Equal(t, tc.want, got, "RetryAfter %v", tc.retryAfter)
	}
}
