package main

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/valyala/fasthttp"

	"github.com/fasttimeout/fasttimeout"
)

func TestWork(t *testing.T) {
	t.Parallel()

	t.Run("answers_200_with_the_work_done", func(t *testing.T) {
		t.Parallel()
		d := startDemo(t, 30*time.Second)
		for _, tc := range []struct {
			path string
			ms   float64
			cpu  time.Duration
		}{
			{"/work/2", 2, 2 * time.Millisecond},
			{"/work/1.6", 1.6, 1600 * time.Microsecond},
			{"/work/0.01", 0.01, 10 * time.Microsecond},
			{"/work/0", 0, 0},
		} {
			status, contentType, body := d.get(t, tc.path)
			require.Equal(t, fasthttp.StatusOK, status, tc.path)
			require.Equal(t, "application/json", contentType, tc.path)
			var got worked
			require.NoError(t, json.Unmarshal([]byte(body), &got), body)
			require.Equal(t, tc.ms, got.CPUMillis, tc.path)
			require.Equal(t, hashesFor(tc.cpu), got.Hashes, tc.path)
			require.Len(t, got.Digest, 16, tc.path)
		}
	})

	t.Run("bad_ms_answers_400_json", func(t *testing.T) {
		t.Parallel()
		d := startDemo(t, time.Second)
		for _, path := range []string{"/work/abc", "/work/-1", "/work/60001", "/work/", "/work/NaN", "/work/Inf", "/work/1/2",
			"/work/1_000", "/work/0x1p4"} { // Go's literal forms: 1000 and 16 to strconv.ParseFloat
			d.requireBadRequest(t, path, "ms must be a number of milliseconds from 0 to 60000")
		}
	})

	// A minute of work past a timeout of 50 ms: the answer is 504 at the
	// deadline, and the handler stops working soon after (it would run a
	// minute, longer than the test waits, if it did not).
	for _, mode := range []fasttimeout.Mode{fasttimeout.Racing, fasttimeout.Cooperative} {
		t.Run("past_the_timeout_answers_504_and_stops/"+mode.String(), func(t *testing.T) {
			t.Parallel()
			opts := defaultOptions(50 * time.Millisecond)
			opts.mode = mode
			d := startDemoWith(t, new(fasttimeout.Stats), opts)
			status, contentType, body := d.get(t, "/work/60000")
			require.Equal(t, fasthttp.StatusGatewayTimeout, status)
			require.Equal(t, fasttimeout.DefaultContentType, contentType)
			require.Equal(t, fasttimeout.DefaultBody, body)
			eventually(t, "the handler returns", func() bool {
				c := d.stats.Snapshot()
				return c.LateFinished == 1 && c.LateRunning == 0 && c.InFlight == 0
			})
		})
	}
}

func TestBurnCPU(t *testing.T) {
	t.Parallel()

	t.Run("does_all_its_work", func(t *testing.T) {
		t.Parallel()
		hashes, digest, finished := burnCPU(nil, time.Millisecond)
		require.True(t, finished)
		require.Equal(t, hashesFor(time.Millisecond), hashes)
		require.Equal(t, 10*hashesPerChunk(), hashes, "ten chunks of 100µs")
		require.NotEqual(t, [32]byte{}, digest)
	})

	t.Run("does_nothing_once_done", func(t *testing.T) {
		t.Parallel()
		done := make(chan struct{})
		close(done)
		hashes, _, finished := burnCPU(done, maxWork)
		require.False(t, finished)
		require.Zero(t, hashes)
	})

	t.Run("stops_when_done_closes", func(t *testing.T) {
		t.Parallel()
		done := make(chan struct{})
		type result struct {
			hashes   int
			finished bool
		}
		results := make(chan result, 1)
		go func() {
			hashes, _, finished := burnCPU(done, maxWork)
			results <- result{hashes, finished}
		}()
		close(done)
		select {
		case r := <-results:
			require.False(t, r.finished)
			require.Less(t, r.hashes, hashesFor(maxWork))
		case <-time.After(30 * time.Second):
			t.Fatal("burnCPU did not stop when done closed")
		}
	})
}
