package main

import (
	"bytes"
	"log"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestGoneLog_first_at_once_the_rest_summed_up(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		afters []time.Duration
		want   string
	}{
		{"one", []time.Duration{1234 * time.Millisecond},
			"client gone after 1.234s: GET /async_sleep/10\n"},
		{"three", []time.Duration{1200 * time.Millisecond, time.Second, 3 * time.Millisecond},
			"client gone after 1.2s: GET /async_sleep/10\nclients gone: 2 more in the last 1s\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var buf bytes.Buffer
			l := newGoneLog(log.New(&buf, "", 0))
			fake := new(fakeAfter)
			l.after = fake.after
			for _, d := range tt.afters {
				l.record(lateRequest("/async_sleep/10"), d)
			}
			require.Len(t, fake.funcs, 1, "one period scheduled")
			fake.funcs[0]()
			require.Equal(t, tt.want, buf.String())

			buf.Reset()
			l.record(lateRequest("/sleep/3"), 2*time.Second)
			require.Equal(t, "client gone after 2s: GET /sleep/3\n", buf.String(), "a new period logs its first at once")
		})
	}
}
