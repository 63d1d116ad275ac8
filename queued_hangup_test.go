package fasttimeout

import (
	"bufio"
	"context"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/valyala/fasthttp"
)

// queuedBound bounds the tests' waits: long, so a loaded machine never
// fails them, and only a wait that can never end reaches it.
const queuedBound = 30 * time.Second

// serveConns serves h on ln until the test's cleanup and returns its
// address and the server's end of each connection, by the client's
// address: the tests look at it as the middleware would.
func serveConns(t *testing.T, ln net.Listener, h fasthttp.RequestHandler) (string, *sync.Map) {
	t.Helper()
	conns := new(sync.Map)
	return serveOn(t, &fasthttp.Server{Handler: h, ReadTimeout: queuedBound, ConnState: func(c net.Conn, s fasthttp.ConnState) {
		if s == fasthttp.StateNew {
			conns.Store(c.RemoteAddr().String(), c)
		}
	}}, ln), conns
}

// dialGet opens a connection to addr and sends GET path on it.
func dialGet(t *testing.T, addr, path string) *net.TCPConn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	conn := c.(*net.TCPConn)
	get(t, conn, path)
	return conn
}

// get sends GET path on conn.
func get(t *testing.T, conn net.Conn, path string) {
	t.Helper()
	_, err := conn.Write([]byte("GET " + path + " HTTP/1.1\r\nHost: test\r\n\r\n"))
	require.NoError(t, err)
}

// readStatus reads the next response from br, bounded, and returns its
// status and whether it closes the connection.
func readStatus(t *testing.T, conn net.Conn, br *bufio.Reader) (int, bool) {
	t.Helper()
	require.NoError(t, conn.SetReadDeadline(time.Now().Add(queuedBound)))
	var resp fasthttp.Response
	require.NoError(t, resp.Read(br))
	return resp.StatusCode(), resp.ConnectionClose()
}

// A request that waits for the only slot, whose client hangs up meanwhile
// (FIN, RST, half-close), is answered 499 without running when the slot
// comes: counted in ClientGone and LeftWaiting, told to OnHangup, neither
// a latency nor a timeout to the adaptive limit, its slot free for the next
// request. A
// client that is still there (its next request pipelined behind, unread)
// is served, and so is one gone with IgnoreHangups. Inside a New that
// ignores hang-ups, the inner New looks, and the outer one sends its 499;
// inside one that watches, the inner New does not run a request the outer
// New has seen gone: each counts its own, the outer a hang-up while its
// handler ran, the inner one left waiting. Inside one that watches but has
// not started to (a cooperative handler that never asked for Context), the
// inner New looks, as nobody else has.
func TestAdmission_a_queued_request_whose_client_hung_up_does_not_run(t *testing.T) {
	if !hangupSupported {
		t.Skip("hang-ups are seen on Linux only")
	}
	hangups := map[string]func(*net.TCPConn) error{
		"close":      (*net.TCPConn).Close,
		"reset":      func(c *net.TCPConn) error { _ = c.SetLinger(0); return c.Close() },
		"half-close": (*net.TCPConn).CloseWrite,
	}
	type row struct {
		name      string
		hangup    string // "": the client stays and pipelines its next request
		adaptive  bool
		ignore    bool // IgnoreHangups
		nested    bool // inside a New that ignores hang-ups
		watched   bool // inside a New that watches them
		unstarted bool // inside a cooperative New that watches them, whose handler never asks for Context: its watch never starts
		wantsGone bool
	}
	rows := []row{
		{name: "pipelined", adaptive: true},
		{name: "ignored", hangup: "close", ignore: true},
		{name: "close/watched outside", hangup: "close", nested: true, watched: true},
	}
	for _, h := range []string{"close", "reset", "half-close"} {
		rows = append(rows,
			row{name: h, hangup: h, wantsGone: true},
			row{name: h + "/adaptive", hangup: h, adaptive: true, wantsGone: true},
			row{name: h + "/nested", hangup: h, nested: true, wantsGone: true},
			row{name: h + "/watched outside, unstarted", hangup: h, nested: true, watched: true, unstarted: true, wantsGone: true})
	}
	for _, mode := range []Mode{Racing, Cooperative} {
		for _, tc := range rows {
			if tc.unstarted && mode == Racing {
				continue // its watch starts on its timer, HangupDelay in: the scheduler says when
			}
			t.Run(mode.String()+"/"+tc.name, func(t *testing.T) {
				t.Parallel()
				stats := new(Stats)
				s := newSlotHolder()
				type hangup struct {
					after time.Duration
					cause error // of Context(ctx)
				}
				hangupsSeen := make(chan hangup, 2)
				cfg := Config{
					Timeout: 5 * time.Minute, Mode: mode, Stats: stats, MaxConcurrency: 1,
					AdaptiveConcurrency: tc.adaptive, IgnoreHangups: tc.ignore,
					OnHangup: func(ctx *fasthttp.RequestCtx, after time.Duration) {
						seen := hangup{after: after}
						if !tc.unstarted { // the outer New's context, whose watch would start
							seen.cause = context.Cause(Context(ctx))
						}
						hangupsSeen <- seen
					},
				}
				h := New(s.serve, cfg)
				type answer struct {
					status int
					cause  error // of Context around the outermost New
				}
				answered := make(chan answer, 4) // what the outermost handler leaves
				if tc.nested {
					inner := h
					outer := New(func(ctx *fasthttp.RequestCtx) {
						if tc.watched && !tc.unstarted {
							Context(ctx) // watched in cooperative mode too
						}
						inner(ctx)
					}, Config{Timeout: 5 * time.Minute, Mode: mode, Stats: stats, IgnoreHangups: !tc.watched})
					h = func(ctx *fasthttp.RequestCtx) {
						outer(ctx)
						// Not after the watch of the outer New saw the hang-up:
						// a racing one gone owns no ctx.
						if string(ctx.Path()) == "/second" && (!tc.watched || tc.unstarted) {
							answered <- answer{ctx.Response.StatusCode(), context.Cause(Context(ctx))}
						}
					}
				}
				addr, conns := serveConns(t, tcpListener(t), h)
				free := sync.OnceFunc(func() { close(s.release) })
				t.Cleanup(free) // before the server's shutdown, should the test fail first

				first := dialGet(t, addr, "/first")
				require.Eventually(t, func() bool { return s.runs.Load() == 1 }, queuedBound, time.Millisecond, "the first handler holds the slot")
				second := dialGet(t, addr, "/second")
				require.Eventually(t, func() bool { return stats.Snapshot().Queued == 1 }, queuedBound, time.Millisecond, "the second request waits")
				if tc.hangup == "" {
					get(t, second, "/third") // unread in the socket: the server goroutine waits
				} else {
					server, ok := conns.Load(second.LocalAddr().String())
					require.True(t, ok)
					require.NoError(t, hangups[tc.hangup](second))
					// The hang-up has reached the server's socket.
					require.Eventually(t, func() bool { return peerGone(server.(net.Conn)) }, queuedBound, time.Millisecond)
					if tc.watched && !tc.unstarted {
						require.Eventually(t, func() bool { return stats.Snapshot().ClientGone == 1 }, queuedBound, time.Millisecond, "the outer New's watch")
					}
				}
				l := s.limiter.Load()
				free()
				status, _ := readStatus(t, first, bufio.NewReader(first))
				assert.Equal(t, fasthttp.StatusOK, status)

				switch {
				case tc.hangup == "":
					br := bufio.NewReader(second)
					for range 2 {
						status, _ := readStatus(t, second, br)
						assert.Equal(t, fasthttp.StatusOK, status)
					}
				case tc.hangup == "half-close":
					status, closes := readStatus(t, second, bufio.NewReader(second))
					want := StatusClientClosedRequest
					if !tc.wantsGone {
						want = fasthttp.StatusOK
					}
					assert.Equal(t, want, status)
					assert.Equal(t, tc.wantsGone, closes, "Connection: close")
				}
				// The second request is over: run, or answered.
				require.Eventually(t, func() bool {
					return s.runs.Load() >= 2 || stats.Snapshot().LeftWaiting > 0
				}, queuedBound, time.Millisecond)
				third := dialGet(t, addr, "/next")
				status, _ = readStatus(t, third, bufio.NewReader(third))
				assert.Equal(t, fasthttp.StatusOK, status, "the slot is free")
				require.Eventually(t, func() bool { return stats.Snapshot().InFlight == 0 && l.holding() == 0 }, queuedBound, time.Millisecond)

				got := stats.Snapshot()
				ran := int64(s.runs.Load())
				switch {
				case tc.watched && !tc.unstarted:
					assert.EqualValues(t, 2, ran, "the second handler never ran")
					assert.EqualValues(t, 2, got.ClientGone, "the outer New's and the inner New's")
					assert.EqualValues(t, 1, got.LeftWaiting, "the inner New's")
					// Context is the outer call's, whose watch saw the hang-up.
					assert.ErrorIs(t, receive(t, hangupsSeen, "OnHangup").cause, ErrClientGone)
				case tc.wantsGone:
					assert.EqualValues(t, 2, ran, "the second handler never ran")
					assert.EqualValues(t, 1, got.LeftWaiting)
					if assert.EqualValues(t, 1, got.ClientGone) {
						seen := receive(t, hangupsSeen, "OnHangup")
						assert.Positive(t, seen.after)
						if tc.nested {
							// Context is the outer call's, which does not watch;
							// around it, the inner New's answer is the request's.
							got := receive(t, answered, "the outer New's answer")
							assert.Equal(t, StatusClientClosedRequest, got.status)
							assert.ErrorIs(t, got.cause, ErrClientGone, "Context around the outermost New")
						} else {
							assert.ErrorIs(t, seen.cause, ErrClientGone)
						}
					}
				default:
					want := 3 // first, second, next
					if tc.hangup == "" {
						want = 4 // and the pipelined third
					}
					assert.EqualValues(t, want, ran)
					assert.Zero(t, got.ClientGone)
					assert.Zero(t, got.LeftWaiting)
				}
				assert.Empty(t, hangupsSeen, "OnHangup once at most")
				assert.Zero(t, got.Timeouts)
				if tc.adaptive {
					// Every handler returned in time and is one sample (a
					// window samples every return until it is busy); the
					// one that did not run is neither that nor a drop.
					assert.Equal(t, ran, l.served.Load(), "samples")
					assert.Zero(t, l.drops.Load(), "drops")
				}
			})
		}
	}
}

// A request that got its slot at once is not looked at: its client's
// hang-up before it started (the look would see it) does not stop it.
func TestAdmission_a_request_that_did_not_wait_is_not_looked_at(t *testing.T) {
	if !hangupSupported {
		t.Skip("hang-ups are seen on Linux only")
	}
	for _, mode := range []Mode{Racing, Cooperative} {
		t.Run(mode.String(), func(t *testing.T) {
			t.Parallel()
			stats := new(Stats)
			var ran atomic.Int32
			h := New(func(*fasthttp.RequestCtx) { ran.Add(1) }, Config{
				Timeout: 5 * time.Minute, Mode: mode, Stats: stats, MaxConcurrency: 1,
				// Before admission: the client's half-close has reached
				// the server's socket when the request asks for its slot.
				TimeoutFunc: func(ctx *fasthttp.RequestCtx) time.Duration {
					assert.Eventually(t, func() bool { return peerGone(ctx.Conn()) }, queuedBound, time.Millisecond)
					return 0
				},
			})
			addr, _ := serveConns(t, tcpListener(t), h)
			conn := dialGet(t, addr, "/")
			require.NoError(t, conn.CloseWrite())
			status, _ := readStatus(t, conn, bufio.NewReader(conn))
			assert.Equal(t, fasthttp.StatusOK, status)
			assert.EqualValues(t, 1, ran.Load())
			assert.Zero(t, stats.Snapshot().ClientGone)
		})
	}
}
