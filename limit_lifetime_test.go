package fasttimeout_test

import (
	"errors"
	"net"
	"runtime"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/fasthttputil"

	"github.com/fasttimeout/fasttimeout"
)

// collectBound is how long a middleware nothing refers to any more may
// take to leave Stats.ConcurrencyLimit: its idle workers retire about a
// second after their last request, then a garbage collection must find it.
// Nothing is expected to come close.
const collectBound = 30 * time.Second

// TestStats_ConcurrencyLimit_forgets_a_middleware_once_collected: a handler
// built again with New on the same Stats (a configuration reload) replaces
// the old one, whose limit stops counting once nothing can reach it: its
// server stopped, its idle workers retired, its watched contexts and
// hang-up watches gone, and a garbage collection found it. One still
// referenced counts on, though its workers have retired as well. Before,
// a middleware counted for good, and the sum grew with every reload.
func TestStats_ConcurrencyLimit_forgets_a_middleware_once_collected(t *testing.T) {
	t.Parallel()
	const keptLimit = 3
	for _, tc := range []struct {
		name           string
		adaptive       bool
		maxConcurrency int
		nested         bool // inside a New of a fixed limit of 7, on the same Stats
	}{
		{"adaptive", true, 0, false},
		{"adaptive_ceiling_10", true, 10, false},
		{"fixed_7", false, 7, false},
		{"adaptive_nested", true, 0, true},
	} {
		for _, mode := range allModes {
			for _, loopback := range []bool{false, true} {
				name := tc.name + "/" + mode.String() + "/in-memory"
				if loopback {
					name = tc.name + "/" + mode.String() + "/loopback"
				}
				t.Run(name, func(t *testing.T) {
					t.Parallel()
					stats := new(fasttimeout.Stats)
					kept := fasttimeout.New(contextHandler, fasttimeout.Config{Mode: mode, MaxConcurrency: keptLimit, Stats: stats})
					serveAndStop(t, kept, stats, loopback, false)
					require.EqualValues(t, keptLimit, stats.Snapshot().ConcurrencyLimit)

					serveAndStop(t, dropped(mode, tc.adaptive, tc.maxConcurrency, tc.nested, stats), stats, loopback, tc.adaptive)
					require.Greater(t, stats.Snapshot().ConcurrencyLimit, int64(keptLimit), "both count")

					awaitLimit(t, stats, keptLimit, "the dropped middleware still counts")
					for range 3 {
						runtime.GC()
					}
					require.Never(t, func() bool { return stats.Snapshot().ConcurrencyLimit != keptLimit },
						100*time.Millisecond, 10*time.Millisecond, "the middleware still referenced stopped counting")
					runtime.KeepAlive(kept)
				})
			}
		}
	}
}

// TestStats_ConcurrencyLimit_counts_a_middleware_still_referenced: a
// middleware that can still serve counts, through any number of garbage
// collections, while others built beside it and dropped are forgotten.
func TestStats_ConcurrencyLimit_counts_a_middleware_still_referenced(t *testing.T) {
	t.Parallel()
	for _, adaptive := range []bool{false, true} {
		for _, mode := range allModes {
			name := "fixed/" + mode.String()
			if adaptive {
				name = "adaptive/" + mode.String()
			}
			t.Run(name, func(t *testing.T) {
				t.Parallel()
				stats := new(fasttimeout.Stats)
				kept := fasttimeout.New(contextHandler, fasttimeout.Config{Mode: mode, AdaptiveConcurrency: adaptive, MaxConcurrency: 5, Stats: stats})
				serveAndStop(t, kept, stats, false, adaptive)
				want := stats.Snapshot().ConcurrencyLimit
				require.Positive(t, want)
				// Dropped at once, never served: the first collection
				// finds them, in the cycles that find kept referenced.
				for range 3 {
					fasttimeout.New(contextHandler, fasttimeout.Config{Mode: mode, MaxConcurrency: 1000, Stats: stats})
				}
				awaitLimit(t, stats, want, "the dropped middlewares still count")
				for range 5 {
					runtime.GC()
					require.Equal(t, want, stats.Snapshot().ConcurrencyLimit)
				}
				require.Never(t, func() bool { return stats.Snapshot().ConcurrencyLimit != want },
					100*time.Millisecond, 10*time.Millisecond, "the middleware still referenced stopped counting")
				runtime.KeepAlive(kept)
			})
		}
	}
}

// dropped returns a handler of the given limit on stats, nested in a New of
// a fixed limit if nested, that the caller is to drop.
func dropped(mode fasttimeout.Mode, adaptive bool, maxConcurrency int, nested bool, stats *fasttimeout.Stats) fasthttp.RequestHandler {
	h := fasttimeout.New(contextHandler, fasttimeout.Config{
		Mode: mode, AdaptiveConcurrency: adaptive, MaxConcurrency: maxConcurrency, Stats: stats,
	})
	if nested {
		h = fasttimeout.New(h, fasttimeout.Config{Mode: mode, MaxConcurrency: 7, Stats: stats})
	}
	return h
}

// awaitLimit collects garbage until stats's summed limit is want, for up
// to collectBound, and fails the test with what it is otherwise.
func awaitLimit(t *testing.T, stats *fasttimeout.Stats, want int64, what string) {
	t.Helper()
	assert.Eventually(t, func() bool {
		runtime.GC()
		return stats.Snapshot().ConcurrencyLimit == want
	}, collectBound, 10*time.Millisecond)
	require.Equal(t, want, stats.Snapshot().ConcurrencyLimit, what)
}

// contextHandler answers "ok" after asking for its context, which in
// cooperative mode the housekeeper watches; the first requests run past
// HangupDelay, so that over loopback their client is watched for a hang-up.
func contextHandler(ctx *fasthttp.RequestCtx) {
	_ = fasttimeout.Context(ctx).Err()
	if ctx.ConnRequestNum() <= 2 {
		time.Sleep(2 * fasttimeout.HangupDelay)
	}
	ctx.SetBodyString("ok")
}

// serveAndStop serves 10 requests through h over a real server, in memory
// or over loopback, and with untilMoved more until stats's summed limit has
// moved (h's adaptive limit closed its first window: what it adds to the
// sum changed since New), then stops the server and keeps no reference to
// it. The server's worker pool keeps a stopped server until it next looks,
// MaxIdleWorkerDuration later: short here.
func serveAndStop(t *testing.T, h fasthttp.RequestHandler, stats *fasttimeout.Stats, loopback, untilMoved bool) {
	t.Helper()
	var ln net.Listener
	var dial fasthttp.DialFunc
	if loopback {
		tcp, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		ln = tcp
		dial = func(string) (net.Conn, error) { return net.Dial("tcp", tcp.Addr().String()) }
	} else {
		mem := fasthttputil.NewInmemoryListener()
		ln = mem
		dial = func(string) (net.Conn, error) { return mem.Dial() }
	}
	server := &fasthttp.Server{Handler: h, MaxIdleWorkerDuration: 10 * time.Millisecond, ReadTimeout: 10 * time.Second}
	served := make(chan error, 1)
	go func() { served <- server.Serve(ln) }()
	client := &fasthttp.Client{Dial: dial, MaxIdemponentCallAttempts: 1}

	start := stats.Snapshot().ConcurrencyLimit
	for i := 0; i < 10 || untilMoved && stats.Snapshot().ConcurrencyLimit == start; i++ {
		require.Less(t, i, 10_000, "the limit never moved")
		code, body, err := client.GetTimeout(nil, "http://test/", stressBound)
		require.NoError(t, err)
		if code == fasthttp.StatusOK {
			require.Equal(t, "ok", string(body))
		}
	}
	client.CloseIdleConnections()
	require.NoError(t, server.Shutdown())
	_ = ln.Close()
	select {
	case err := <-served:
		if err != nil && !errors.Is(err, fasthttputil.ErrInmemoryListenerClosed) {
			assert.NoError(t, err)
		}
	case <-time.After(stressBound):
		t.Fatal("Serve did not return")
	}
}
