package main

import (
	"bytes"
	"log"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/valyala/fasthttp"
)

// fakeAfter records the functions lateLog schedules instead of running
// them after a delay; the test runs them, standing in for the clock.
type fakeAfter struct {
	delays []time.Duration
	funcs  []func()
}

func (f *fakeAfter) after(d time.Duration, fn func()) {
	f.delays = append(f.delays, d)
	f.funcs = append(f.funcs, fn)
}

func newTestLateLog() (*lateLog, *bytes.Buffer, *fakeAfter) {
	var buf bytes.Buffer
	l := newLateLog(log.New(&buf, "", 0))
	fake := new(fakeAfter)
	l.after = fake.after
	return l, &buf, fake
}

func lateRequest(uri string) *fasthttp.RequestCtx {
	var ctx fasthttp.RequestCtx
	ctx.Request.SetRequestURI(uri)
	return &ctx
}

func TestLateLog_one_line_per_period(t *testing.T) {
	t.Parallel()
	type late struct {
		uri string
		by  time.Duration
	}
	tests := []struct {
		name  string
		lates []late
		want  string
	}{
		{
			name:  "one late return that ran on",
			lates: []late{{"/sleep/3", 2950 * time.Millisecond}},
			want: "late handlers: 1 returned late (after their deadline or client's hang-up) in the last 1s, the worst 2.95s late (GET /sleep/3); " +
				"0 stopped within 2ms of it (honoured their context), 1 ran on (ignored it)\n",
		},
		{
			name:  "honoured, at the threshold and just past it",
			lates: []late{{"/async_sleep/9", 300 * time.Microsecond}, {"/async_sleep/9", 2 * time.Millisecond}, {"/async_sleep/8", 2*time.Millisecond + time.Microsecond}},
			want: "late handlers: 3 returned late (after their deadline or client's hang-up) in the last 1s, the worst 2.001ms late (GET /async_sleep/8); " +
				"2 stopped within 2ms of it (honoured their context), 1 ran on (ignored it)\n",
		},
		{
			name: "a burst: the worst is kept, whatever the order",
			lates: func() []late {
				var ls []late
				for i := range 2000 {
					ls = append(ls, late{"/async_sleep/5", time.Duration(i%3) * 500 * time.Microsecond})
				}
				ls[700] = late{"/sleep/7", 6700 * time.Millisecond}
				ls[1500] = late{"/sleep/1", 700 * time.Millisecond}
				return ls
			}(),
			want: "late handlers: 2000 returned late (after their deadline or client's hang-up) in the last 1s, the worst 6.7s late (GET /sleep/7); " +
				"1998 stopped within 2ms of it (honoured their context), 2 ran on (ignored it)\n",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			l, buf, fake := newTestLateLog()
			for _, x := range tt.lates {
				l.record(lateRequest(x.uri), x.by)
			}
			require.Empty(t, buf.String(), "nothing is logged before the period ends")
			require.Equal(t, []time.Duration{time.Second}, fake.delays, "one line scheduled, a period ahead")
			fake.funcs[0]()
			require.Equal(t, tt.want, buf.String())
		})
	}
}

func TestLateLog_periods_start_afresh(t *testing.T) {
	t.Parallel()
	l, buf, fake := newTestLateLog()
	l.record(lateRequest("/sleep/1"), 900*time.Millisecond)
	fake.funcs[0]()
	require.Len(t, fake.funcs, 1)

	l.record(lateRequest("/async_sleep/1"), time.Millisecond)
	require.Len(t, fake.funcs, 2, "the first late return after a line schedules the next")
	fake.funcs[1]()
	lines := strings.Split(strings.TrimSuffix(buf.String(), "\n"), "\n")
	require.Len(t, lines, 2)
	require.Contains(t, lines[1], "late handlers: 1 returned late (after their deadline or client's hang-up) in the last 1s, the worst 1ms late (GET /async_sleep/1); 1 stopped")

	fake.funcs[1]() // a period with nothing late: no line
	require.Len(t, strings.Split(strings.TrimSuffix(buf.String(), "\n"), "\n"), 2)
}
