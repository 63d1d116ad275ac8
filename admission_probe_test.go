package fasttimeout_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/valyala/fasthttp"

	"github.com/fasttimeout/fasttimeout"
)

// TestAdmission_a_probe_without_load_gives_way_to_a_request_past_MaxQueueAge:
// the probe a new adaptive limit starts with (4 slots) gives way to the first
// request it holds back too long, so that a server started under light load
// does not keep holding its requests. With MaxQueueAge shorter than a
// waiter's share of its budget, the wait of such a request ends at
// MaxQueueAge: it gets the timeout response (its caller has given up), and
// the probe must give way all the same. It did not: every request that came
// while the probe's handlers ran waited out its MaxQueueAge and got 504,
// for as long as those handlers ran.
func TestAdmission_a_probe_without_load_gives_way_to_a_request_past_MaxQueueAge(t *testing.T) {
	t.Parallel()
	for _, mode := range allModes {
		t.Run(mode.String(), func(t *testing.T) {
			t.Parallel()
			b := newBlocker()
			stats := new(fasttimeout.Stats)
			s := serve(t, fasttimeout.New(b.handle, fasttimeout.Config{
				Mode: mode,
				// A waiter's share is a second; its caller gives up sooner.
				Timeout:             10 * time.Second,
				MaxQueueAge:         200 * time.Millisecond,
				AdaptiveConcurrency: true,
				Stats:               stats,
			}))
			t.Cleanup(b.free) // before the server's shutdown, should the test fail
			var held []<-chan *fasthttp.Response
			for range 4 { // the probe's slots
				held = append(held, async(t, s, "/block"))
				receive(t, b.entered, "the start of /block")
			}
			require.Equal(t, int64(4), stats.Snapshot().ConcurrencyLimit, "the starting probe")

			resp := do(t, s, "GET", "/")
			require.Equal(t, fasthttp.StatusGatewayTimeout, resp.StatusCode(), "held past MaxQueueAge: %s", resp.Body())
			got := stats.Snapshot()
			require.Equal(t, int64(1), got.Queued, "it waited for a slot")
			require.Equal(t, int64(1), got.SpentBudgets)

			resp = do(t, s, "GET", "/")
			assert.Equal(t, fasthttp.StatusOK, resp.StatusCode(), "the probe gave way: %s; %+v", resp.Body(), stats.Snapshot())

			b.free()
			for _, h := range held {
				assert.Equal(t, fasthttp.StatusOK, receive(t, h, "the answer to /block").StatusCode())
			}
		})
	}
}
