package fasttimeout_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/valyala/fasthttp"

	"github.com/fasttimeout/fasttimeout"
)

// requireHangups skips where the system cannot watch connections.
func requireHangups(t *testing.T) {
	t.Helper()
	if runtime.GOOS != "linux" {
		t.Skip("hang-ups are watched on Linux only")
	}
}

// ended is how a request's context ended, as its handler saw it.
type ended struct {
	err, cause error
}

// reportEnd returns a handler bounded by New with cfg that reports its
// start on started and then, once its context ends (or after stressBound),
// how it ended on ends.
func reportEnd(cfg fasttimeout.Config) (h fasthttp.RequestHandler, started <-chan struct{}, ends <-chan ended) {
	startedC, endsC := make(chan struct{}, 1), make(chan ended, 1)
	h = fasttimeout.New(func(ctx *fasthttp.RequestCtx) {
		c := fasttimeout.Context(ctx)
		startedC <- struct{}{}
		select {
		case <-c.Done():
		case <-time.After(stressBound):
		}
		endsC <- ended{c.Err(), context.Cause(c)}
	}, cfg)
	return h, startedC, endsC
}

// waitEnd waits, bounded, for the handler to report how its context ended.
func waitEnd(t *testing.T, ends <-chan ended) ended {
	t.Helper()
	return receive(t, ends, "end of the handler's context")
}

// sendRaw dials addr over TCP and writes requests as they are; the test's
// cleanup closes the connection if the test has not.
func sendRaw(t *testing.T, addr, requests string) *net.TCPConn {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close() })
	_, err = conn.Write([]byte(requests))
	require.NoError(t, err)
	return conn.(*net.TCPConn)
}

// rawRequest is a GET of path, as a client writes it.
func rawRequest(path string) string {
	return "GET " + path + " HTTP/1.1\r\nHost: hangup.test\r\n\r\n"
}

// hangupServer serves, over loopback TCP, a handler that reports when it
// started and how its context ended, then returns: it honours its context.
func hangupServer(t *testing.T, cfg fasttimeout.Config) (s *stressLoopback, started <-chan struct{}, ends <-chan ended) {
	startc := make(chan struct{}, 16)
	endc := make(chan ended, 16)
	s = startStressLoopback(t, fasttimeout.New(func(ctx *fasthttp.RequestCtx) {
		c := fasttimeout.Context(ctx)
		startc <- struct{}{}
		select {
		case <-c.Done():
		case <-time.After(stressBound):
		}
		endc <- ended{c.Err(), context.Cause(c)}
		ctx.SetBodyString("own")
	}, cfg))
	return s, startc, endc
}

// The client hangs up while its handler runs: FIN, RST or half-close, in
// both modes. The context ends with context.Canceled and cause
// ErrClientGone, the hang-up is counted (not as a timeout), and the late
// handler is seen returning.
func TestHangup_client_gone_cancels_the_context(t *testing.T) {
	requireHangups(t)
	hangups := map[string]func(*net.TCPConn) error{
		"close":      (*net.TCPConn).Close,
		"reset":      func(c *net.TCPConn) error { _ = c.SetLinger(0); return c.Close() },
		"half-close": (*net.TCPConn).CloseWrite,
	}
	for _, mode := range []fasttimeout.Mode{fasttimeout.Racing, fasttimeout.Cooperative} {
		for name, hangUp := range hangups {
			t.Run(mode.String()+"/"+name, func(t *testing.T) {
				t.Parallel()
				var stats fasttimeout.Stats
				lates := make(chan time.Duration, 1)
				afters := make(chan time.Duration, 1)
				causes := make(chan error, 1) // of the context OnHangup sees
				s, started, ends := hangupServer(t, fasttimeout.Config{
					Timeout: time.Minute, Mode: mode, Stats: &stats,
					OnLateReturn: func(_ *fasthttp.RequestCtx, late time.Duration) { lates <- late },
					OnHangup: func(ctx *fasthttp.RequestCtx, after time.Duration) {
						causes <- context.Cause(fasttimeout.Context(ctx))
						afters <- after
					},
				})
				conn := sendRaw(t, s.addr, rawRequest("/slow"))
				receive(t, started, "the handler's start")
				require.NoError(t, hangUp(conn))

				e := waitEnd(t, ends)
				assert.ErrorIs(t, e.err, context.Canceled)
				assert.ErrorIs(t, e.cause, fasttimeout.ErrClientGone)
				assert.ErrorIs(t, receive(t, causes, "the context's cause"), fasttimeout.ErrClientGone)
				after := receive(t, afters, "the handler's return")
				assert.Positive(t, after, "the hang-up came after the request started")
				assert.Less(t, after, stressBound)
				late := receive(t, lates, "OnLateReturn's lateness")
				assert.GreaterOrEqual(t, late, time.Duration(0), "lateness is counted from the hang-up")
				assert.Less(t, late, stressBound)
				require.Eventually(t, func() bool { return stats.Snapshot().InFlight == 0 }, stressBound, 5*time.Millisecond)
				got := stats.Snapshot()
				assert.EqualValues(t, 1, got.ClientGone)
				assert.Zero(t, got.UnwatchedClients, "the socket was watched")
				assert.Zero(t, got.Timeouts)
				assert.EqualValues(t, 1, got.LateFinished)
				assert.Zero(t, got.LateRunning)
				if name == "half-close" {
					// The client can still read: it gets 499 and the
					// connection closes.
					resp := readResponse(t, conn)
					assert.Equal(t, fasttimeout.StatusClientClosedRequest, resp.StatusCode())
					assert.True(t, resp.ConnectionClose())
				}
			})
		}
	}
}

// readResponse reads one response from conn, bounded.
func readResponse(t *testing.T, conn net.Conn) *fasthttp.Response {
	t.Helper()
	require.NoError(t, conn.SetReadDeadline(time.Now().Add(stressBound)))
	resp := new(fasthttp.Response)
	require.NoError(t, resp.Read(bufio.NewReader(conn)))
	return resp
}

// A client that stays, a pipelined request waiting unread in the socket, a
// timeout: none of them is a hang-up.
func TestHangup_only_a_hang_up_is_a_hang_up(t *testing.T) {
	requireHangups(t)
	for _, mode := range []fasttimeout.Mode{fasttimeout.Racing, fasttimeout.Cooperative} {
		t.Run("pipelined request in the socket/"+mode.String(), func(t *testing.T) {
			t.Parallel()
			var stats fasttimeout.Stats
			release := make(chan struct{})
			s := startStressLoopback(t, fasttimeout.New(func(ctx *fasthttp.RequestCtx) {
				c := fasttimeout.Context(ctx)
				if string(ctx.Path()) == "/slow" {
					select {
					case <-c.Done():
						ctx.SetBodyString("cancelled: " + fmt.Sprint(context.Cause(c)))
						return
					case <-release:
					}
				}
				ctx.SetBodyString("own " + string(ctx.Path()))
			}, fasttimeout.Config{Timeout: time.Minute, Mode: mode, Stats: &stats}))
			conn := sendRaw(t, s.addr, rawRequest("/slow")+rawRequest("/next"))
			// Long enough past HangupDelay for the watch to have started:
			// what is checked is that nothing fires, so the wait is
			// only a chance given to a wrong hang-up.
			require.Eventually(t, func() bool { return stats.Snapshot().InFlight == 1 }, stressBound, 5*time.Millisecond)
			time.Sleep(10 * fasttimeout.HangupDelay)
			close(release)

			br := bufio.NewReader(conn)
			for _, want := range []string{"own /slow", "own /next"} {
				var resp fasthttp.Response
				require.NoError(t, conn.SetReadDeadline(time.Now().Add(stressBound)))
				require.NoError(t, resp.Read(br))
				assert.Equal(t, want, string(resp.Body()))
			}
			assert.Zero(t, stats.Snapshot().ClientGone)
		})

		t.Run("timeout still says ErrTimeout/"+mode.String(), func(t *testing.T) {
			t.Parallel()
			var stats fasttimeout.Stats
			s, started, ends := hangupServer(t, fasttimeout.Config{Timeout: actInTime, Mode: mode, Stats: &stats}) // the handler must run
			conn := sendRaw(t, s.addr, rawRequest("/slow"))
			receive(t, started, "the handler's start")
			e := waitEnd(t, ends)
			assert.ErrorIs(t, e.err, context.DeadlineExceeded)
			assert.ErrorIs(t, e.cause, fasttimeout.ErrTimeout)
			assert.Equal(t, fasttimeout.DefaultStatusCode, readResponse(t, conn).StatusCode())
			require.Eventually(t, func() bool { return stats.Snapshot().InFlight == 0 }, stressBound, 5*time.Millisecond)
			assert.Zero(t, stats.Snapshot().ClientGone)
			assert.EqualValues(t, 1, stats.Snapshot().Timeouts)
		})

		t.Run("a timeout under 100 ms is not watched/"+mode.String(), func(t *testing.T) {
			t.Parallel()
			var stats fasttimeout.Stats
			s, started, ends := hangupServer(t, fasttimeout.Config{Timeout: 90 * time.Millisecond, Mode: mode, Stats: &stats})
			// A loaded machine can stall a request for its 90 ms before
			// the middleware, which then answers it without running the
			// handler (Stats.SpentBudgets): such a request is sent again.
			const maxTries = 20
			for try := 1; ; try++ {
				conn := sendRaw(t, s.addr, rawRequest("/slow"))
				spent := int64(try - 1)
				require.Eventually(t, func() bool { return len(started) > 0 || stats.Snapshot().SpentBudgets > spent },
					stressBound, time.Millisecond, "the handler's start")
				if len(started) > 0 {
					receive(t, started, "the handler's start")
					require.NoError(t, conn.Close())
					break
				}
				require.Less(t, try, maxTries, "the budget of every request was spent before its handler could run")
			}
			e := waitEnd(t, ends)
			assert.ErrorIs(t, e.cause, fasttimeout.ErrTimeout, "the deadline ends it soon anyway")
			assert.Zero(t, stats.Snapshot().ClientGone)
		})

		t.Run("IgnoreHangups/"+mode.String(), func(t *testing.T) {
			t.Parallel()
			var stats fasttimeout.Stats
			s, started, ends := hangupServer(t, fasttimeout.Config{Timeout: actInTime, Mode: mode, Stats: &stats, IgnoreHangups: true}) // the handler must run
			conn := sendRaw(t, s.addr, rawRequest("/slow"))
			receive(t, started, "the handler's start")
			require.NoError(t, conn.Close())
			e := waitEnd(t, ends)
			assert.ErrorIs(t, e.cause, fasttimeout.ErrTimeout, "only the deadline ends it")
			assert.Zero(t, stats.Snapshot().ClientGone)
		})
	}
}

// Requests slower than HangupDelay, one after another on new connections
// that close after their response, so that descriptor numbers and workers
// are reused: no request is ever taken for gone because of an earlier
// connection's close.
func TestHangup_no_stale_watch_reaches_a_later_request(t *testing.T) {
	requireHangups(t)
	for _, mode := range []fasttimeout.Mode{fasttimeout.Racing, fasttimeout.Cooperative} {
		t.Run(mode.String(), func(t *testing.T) {
			t.Parallel()
			var stats fasttimeout.Stats
			s := startStressLoopback(t, fasttimeout.New(func(ctx *fasthttp.RequestCtx) {
				c := fasttimeout.Context(ctx)
				select {
				case <-c.Done():
					ctx.SetBodyString("cancelled")
				case <-time.After(2 * fasttimeout.HangupDelay):
					ctx.SetBodyString("own")
				}
			}, fasttimeout.Config{Timeout: time.Minute, Mode: mode, Stats: &stats}))
			for i := range 30 {
				conn := sendRaw(t, s.addr, rawRequest("/"))
				resp := readResponse(t, conn)
				require.Equal(t, "own", string(resp.Body()), "request %d", i)
				require.NoError(t, conn.Close())
			}
			assert.Zero(t, stats.Snapshot().ClientGone)
		})
	}
}

// A racing handler that ignores its context runs on after its client hung
// up: it is late, counts against MaxLateHandlers, and is seen returning.
func TestHangup_late_handler_after_a_hang_up(t *testing.T) {
	requireHangups(t)
	t.Parallel()
	var stats fasttimeout.Stats
	started := make(chan struct{}, 1)
	release := make(chan struct{})
	lates := make(chan time.Duration, 1)
	s := startStressLoopback(t, fasttimeout.New(func(ctx *fasthttp.RequestCtx) {
		if string(ctx.Path()) == "/fast" {
			ctx.SetBodyString("fast")
			return
		}
		started <- struct{}{}
		<-release // ignores its context
		ctx.SetBodyString("late")
	}, fasttimeout.Config{Timeout: time.Minute, Stats: &stats, MaxLateHandlers: 1,
		OnLateReturn: func(_ *fasthttp.RequestCtx, late time.Duration) { lates <- late }}))
	conn := sendRaw(t, s.addr, rawRequest("/ignore"))
	receive(t, started, "the handler's start")
	require.NoError(t, conn.Close())
	require.Eventually(t, func() bool { return stats.Snapshot().LateRunning == 1 }, stressBound, 5*time.Millisecond)
	assert.EqualValues(t, 1, stats.Snapshot().ClientGone)
	assert.EqualValues(t, 1, stats.Snapshot().InFlight, "the late handler still runs")

	other, err := dialStress(s.addr)
	require.NoError(t, err)
	defer other.close()
	shed := other.get(t, "/fast", "S0000000000000001")
	assert.Equal(t, fasthttp.StatusServiceUnavailable, shed.StatusCode(), "the late handler counts against MaxLateHandlers")

	close(release)
	assert.GreaterOrEqual(t, receive(t, lates, "OnLateReturn's lateness"), time.Duration(0))
	require.Eventually(t, func() bool { return stats.Snapshot().LateRunning == 0 }, stressBound, 5*time.Millisecond)
	assert.EqualValues(t, 1, stats.Snapshot().LateFinished)
	assert.Zero(t, stats.Snapshot().Timeouts)
	assert.Equal(t, "fast", string(other.get(t, "/fast", "S0000000000000002").Body()))
}

// Hang-ups are seen through TLS, through fasthttp's MaxConnsPerIP wrapper
// and through a listener's wrapper that embeds the connection by value,
// which all hide the socket.
func TestHangup_through_wrapped_connections(t *testing.T) {
	requireHangups(t)
	for _, tc := range []struct {
		name  string
		setup func(t *testing.T, s *fasthttp.Server, ln net.Listener) (net.Listener, func(string) (net.Conn, error))
	}{
		{"TLS", func(t *testing.T, _ *fasthttp.Server, ln net.Listener) (net.Listener, func(string) (net.Conn, error)) {
			certPEM, keyPEM, err := fasthttp.GenerateTestCertificate("127.0.0.1")
			require.NoError(t, err)
			cert, err := tls.X509KeyPair(certPEM, keyPEM)
			require.NoError(t, err)
			return tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{cert}}),
				func(addr string) (net.Conn, error) {
					return tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true})
				}
		}},
		{"MaxConnsPerIP", func(_ *testing.T, s *fasthttp.Server, ln net.Listener) (net.Listener, func(string) (net.Conn, error)) {
			s.MaxConnsPerIP = 10
			return ln, func(addr string) (net.Conn, error) { return net.Dial("tcp", addr) }
		}},
		{"wrapper embedding the connection, by value", func(_ *testing.T, _ *fasthttp.Server, ln net.Listener) (net.Listener, func(string) (net.Conn, error)) {
			return valueWrapListener{ln}, func(addr string) (net.Conn, error) { return net.Dial("tcp", addr) }
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var stats fasttimeout.Stats
			h, started, ends := reportEnd(fasttimeout.Config{Timeout: time.Minute, Stats: &stats})
			s := &fasthttp.Server{Handler: h}
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			require.NoError(t, err)
			wrapped, dial := tc.setup(t, s, ln)
			served := make(chan error, 1)
			go func() { served <- s.Serve(wrapped) }()
			t.Cleanup(func() {
				assert.NoError(t, s.Shutdown())
				assert.NoError(t, <-served)
			})

			conn, err := dial(ln.Addr().String())
			require.NoError(t, err)
			_, err = conn.Write([]byte(rawRequest("/slow")))
			require.NoError(t, err)
			receive(t, started, "the handler's start")
			require.NoError(t, conn.Close())
			e := waitEnd(t, ends)
			assert.ErrorIs(t, e.cause, fasttimeout.ErrClientGone)
			assert.EqualValues(t, 1, stats.Snapshot().ClientGone)
			assert.Zero(t, stats.Snapshot().UnwatchedClients, "the socket was found")
		})
	}
}

// valueWrapListener wraps each connection it accepts in a valueWrapConn, by
// value: a wrapper that embeds the connection, as Config.IgnoreHangups says
// is seen through, without being a pointer.
type valueWrapListener struct{ net.Listener }

func (l valueWrapListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return valueWrapConn{c}, nil
}

type valueWrapConn struct{ net.Conn }

// Hang-ups are seen on Unix sockets too (a server behind a proxy on the same
// host, say), as Config.IgnoreHangups says: a close, and a half-close,
// whose client still reads the 499.
func TestHangup_over_a_Unix_socket(t *testing.T) {
	requireHangups(t)
	hangups := map[string]func(*net.UnixConn) error{
		"close":      (*net.UnixConn).Close,
		"half-close": (*net.UnixConn).CloseWrite,
	}
	for _, mode := range allModes {
		for name, hangUp := range hangups {
			t.Run(mode.String()+"/"+name, func(t *testing.T) {
				t.Parallel()
				var stats fasttimeout.Stats
				h, started, ends := reportEnd(fasttimeout.Config{Timeout: time.Minute, Mode: mode, Stats: &stats})
				s := &fasthttp.Server{Handler: h}
				// Not t.TempDir: a socket's path must fit in 108 bytes.
				dir, err := os.MkdirTemp("", "fasttimeout")
				require.NoError(t, err)
				t.Cleanup(func() { _ = os.RemoveAll(dir) })
				path := filepath.Join(dir, "s")
				ln, err := net.Listen("unix", path)
				require.NoError(t, err)
				served := make(chan error, 1)
				go func() { served <- s.Serve(ln) }()
				t.Cleanup(func() {
					assert.NoError(t, s.Shutdown())
					assert.NoError(t, <-served)
				})

				c, err := net.Dial("unix", path)
				require.NoError(t, err)
				conn := c.(*net.UnixConn)
				t.Cleanup(func() { _ = conn.Close() })
				_, err = conn.Write([]byte(rawRequest("/slow")))
				require.NoError(t, err)
				receive(t, started, "the handler's start")
				require.NoError(t, hangUp(conn))

				e := waitEnd(t, ends)
				assert.ErrorIs(t, e.err, context.Canceled)
				assert.ErrorIs(t, e.cause, fasttimeout.ErrClientGone)
				if name == "half-close" {
					resp := readResponse(t, conn)
					assert.Equal(t, fasttimeout.StatusClientClosedRequest, resp.StatusCode())
				}
				require.Eventually(t, func() bool { return stats.Snapshot().InFlight == 0 }, stressBound, 5*time.Millisecond)
				assert.EqualValues(t, 1, stats.Snapshot().ClientGone)
				assert.Zero(t, stats.Snapshot().UnwatchedClients, "the socket was watched")
			})
		}
	}
}

// A connection that cannot be watched for a hang-up (here an in-memory
// one, which has no socket) is counted when its request's watch would have
// begun, so that an operator sees hang-ups go unnoticed.
func TestHangup_an_unwatched_client_is_counted(t *testing.T) {
	t.Parallel()
	for _, mode := range allModes {
		t.Run(mode.String(), func(t *testing.T) {
			t.Parallel()
			var stats fasttimeout.Stats
			s := serve(t, fasttimeout.New(func(ctx *fasthttp.RequestCtx) {
				_ = fasttimeout.Context(ctx) // a cooperative request is watched once it asks for its context
				if !assert.Eventually(t, func() bool { return stats.Snapshot().UnwatchedClients == 1 }, stressBound, time.Millisecond) {
					ctx.SetStatusCode(fasthttp.StatusInternalServerError)
				}
			}, fasttimeout.Config{Timeout: time.Minute, Mode: mode, Stats: &stats}))
			assert.Equal(t, fasthttp.StatusOK, s.status(t, "/slow"))
			got := stats.Snapshot()
			assert.EqualValues(t, 1, got.UnwatchedClients)
			assert.Zero(t, got.ClientGone)
		})
	}
}

// A racing handler that asks for its context only after its client hung up
// gets one that is already cancelled, with the hang-up's cause.
func TestHangup_context_made_after_the_hang_up_is_already_cancelled(t *testing.T) {
	requireHangups(t)
	t.Parallel()
	var stats fasttimeout.Stats
	started := make(chan struct{}, 1)
	ends := make(chan ended, 1)
	s := startStressLoopback(t, fasttimeout.New(func(ctx *fasthttp.RequestCtx) {
		started <- struct{}{}
		waitUntil(func() bool { return stats.Snapshot().ClientGone == 1 })
		c := fasttimeout.Context(ctx)
		ends <- ended{c.Err(), context.Cause(c)}
	}, fasttimeout.Config{Timeout: time.Minute, Stats: &stats}))
	conn := sendRaw(t, s.addr, rawRequest("/"))
	receive(t, started, "the handler's start")
	require.NoError(t, conn.Close())
	e := waitEnd(t, ends)
	assert.ErrorIs(t, e.err, context.Canceled)
	assert.ErrorIs(t, e.cause, fasttimeout.ErrClientGone)
}

// In cooperative mode a client that hangs up after the deadline, while the
// handler still runs, finds the request timed out (by the housekeeper's
// tick, or by the hang-up itself should that come first), as in racing
// mode, and it is not counted as a hang-up.
func TestHangup_after_the_deadline_is_a_timeout(t *testing.T) {
	requireHangups(t)
	t.Parallel()
	var stats fasttimeout.Stats
	expired := make(chan error, 1)
	release := make(chan struct{})
	s := startStressLoopback(t, fasttimeout.New(func(ctx *fasthttp.RequestCtx) {
		c := fasttimeout.Context(ctx) // watched from HangupDelay on
		<-c.Done()
		expired <- c.Err()
		<-release // late, and ignoring that
	}, fasttimeout.Config{Timeout: actInTime, Mode: fasttimeout.Cooperative, Stats: &stats})) // the handler must run
	conn := sendRaw(t, s.addr, rawRequest("/slow"))
	require.ErrorIs(t, receive(t, expired, "end of the context at the deadline"), context.DeadlineExceeded)
	require.NoError(t, conn.Close())
	// The housekeeper's tick counted the timeout and the late handler
	// before it ended the context (call.expire, call.settled); the hang-up
	// after it changes nothing.
	require.Eventually(t, func() bool {
		c := stats.Snapshot()
		return c.Timeouts == 1 && c.LateRunning == 1
	}, stressBound, time.Millisecond, "the hang-up after the deadline settles the timeout")
	close(release)
	// A handler leaves InFlight last: once it is 0, the late return is
	// counted (see Stats.Snapshot).
	require.Eventually(t, func() bool { return stats.Snapshot().InFlight == 0 }, stressBound, 5*time.Millisecond)
	got := stats.Snapshot()
	assert.Zero(t, got.ClientGone)
	assert.EqualValues(t, 1, got.Timeouts)
	assert.EqualValues(t, 1, got.LateFinished)
}

// A request whose timeout is under 100 ms is not watched, since its
// deadline ends it soon anyway; but a handler that disarms its deadline (a
// long poll) or extends it far runs on, and its client's hang-up must still
// end it. Before the fix the watch was decided at the request's start and
// never started: the handler waited for nobody until the server shut down.
func TestHangup_short_timeout_disarmed_or_extended_is_watched(t *testing.T) {
	requireHangups(t)
	moves := map[string]func(*fasthttp.RequestCtx) bool{
		"Disarm": fasttimeout.Disarm,
		"Extend": func(ctx *fasthttp.RequestCtx) bool { return fasttimeout.Extend(ctx, time.Minute) },
	}
	for _, mode := range []fasttimeout.Mode{fasttimeout.Racing, fasttimeout.Cooperative} {
		for name, move := range moves {
			t.Run(mode.String()+"/"+name, func(t *testing.T) {
				t.Parallel()
				var stats fasttimeout.Stats
				started := make(chan bool, 1)
				ends := make(chan ended, 1)
				s := startStressLoopback(t, fasttimeout.New(func(ctx *fasthttp.RequestCtx) {
					c := fasttimeout.Context(ctx)
					started <- move(ctx)
					select {
					case <-c.Done():
					case <-time.After(stressBound):
					}
					ends <- ended{c.Err(), context.Cause(c)}
				}, fasttimeout.Config{Timeout: 99 * time.Millisecond, Mode: mode, Stats: &stats}))
				// A loaded machine can run the handler after its 99 ms
				// deadline: the move is refused and the request times
				// out, which is right but not what this test is about;
				// such a request is sent again.
				const maxTries = 20
				timedOut := int64(0)
				for try := 1; ; try++ {
					conn := sendRaw(t, s.addr, rawRequest("/poll"))
					if receive(t, started, "the handler's start") {
						require.NoError(t, conn.Close())
						break
					}
					timedOut++
					assert.ErrorIs(t, waitEnd(t, ends).cause, fasttimeout.ErrTimeout, "a refused move")
					require.Less(t, try, maxTries, "the deadline of every request passed before its handler moved it")
				}
				e := waitEnd(t, ends)
				assert.ErrorIs(t, e.err, context.Canceled)
				assert.ErrorIs(t, e.cause, fasttimeout.ErrClientGone)
				require.Eventually(t, func() bool { return stats.Snapshot().InFlight == 0 }, stressBound, 5*time.Millisecond)
				assert.EqualValues(t, 1, stats.Snapshot().ClientGone)
				assert.Equal(t, timedOut, stats.Snapshot().Timeouts, "only the requests whose move was refused")
			})
		}
	}
}

// countingUpstream is an upstream that counts its calls and reports each on
// called; it answers at once.
func countingUpstream(calls *atomic.Int64, called chan<- struct{}) fasttimeout.Doer {
	return doerFunc(func(*fasthttp.Request, *fasthttp.Response, time.Time) error {
		calls.Add(1)
		called <- struct{}{}
		return nil
	})
}

// A handler that never asks for its context but calls an upstream with Do,
// then calls one again (a retry, a second upstream) after its client hung
// up, gets ErrClientGone from the second Do, which calls no upstream: in
// cooperative mode too, where only Context started the watch, and the
// upstream was called twice for nobody. Inside nested News, the New that
// watches is the outermost that does.
func TestHangup_Do_calls_no_upstream_after_the_client_left(t *testing.T) {
	requireHangups(t)
	const minute = time.Minute
	// Each wraps h in one New or two, which count in stats[0] (outer) and
	// stats[1] (inner).
	cases := map[string]func(h fasthttp.RequestHandler, stats *[2]fasttimeout.Stats) fasthttp.RequestHandler{
		"racing": func(h fasthttp.RequestHandler, stats *[2]fasttimeout.Stats) fasthttp.RequestHandler {
			return fasttimeout.New(h, fasttimeout.Config{Timeout: minute, Stats: &stats[0]})
		},
		"cooperative": func(h fasthttp.RequestHandler, stats *[2]fasttimeout.Stats) fasthttp.RequestHandler {
			return fasttimeout.New(h, fasttimeout.Config{Timeout: minute, Mode: fasttimeout.Cooperative, Stats: &stats[0]})
		},
		"cooperative inside cooperative": func(h fasthttp.RequestHandler, stats *[2]fasttimeout.Stats) fasthttp.RequestHandler {
			inner := fasttimeout.New(h, fasttimeout.Config{Timeout: minute, Mode: fasttimeout.Cooperative, Stats: &stats[1]})
			return fasttimeout.New(inner, fasttimeout.Config{Timeout: minute, Mode: fasttimeout.Cooperative, Stats: &stats[0]})
		},
		"cooperative inside racing": func(h fasthttp.RequestHandler, stats *[2]fasttimeout.Stats) fasthttp.RequestHandler {
			inner := fasttimeout.New(h, fasttimeout.Config{Timeout: minute, Mode: fasttimeout.Cooperative, Stats: &stats[1]})
			return fasttimeout.New(inner, fasttimeout.Config{Timeout: minute, Stats: &stats[0]})
		},
		"cooperative inside racing that ignores hang-ups": func(h fasthttp.RequestHandler, stats *[2]fasttimeout.Stats) fasthttp.RequestHandler {
			inner := fasttimeout.New(h, fasttimeout.Config{Timeout: minute, Mode: fasttimeout.Cooperative, Stats: &stats[1]})
			return fasttimeout.New(inner, fasttimeout.Config{Timeout: minute, IgnoreHangups: true, Stats: &stats[0]})
		},
	}
	for name, wrap := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			var stats [2]fasttimeout.Stats
			var calls atomic.Int64
			called := make(chan struct{}, 2)
			upstream := countingUpstream(&calls, called)
			firsts, seconds := make(chan error, 1), make(chan error, 1)
			again := make(chan struct{})
			s := startStressLoopback(t, wrap(func(ctx *fasthttp.RequestCtx) {
				var req fasthttp.Request
				var resp fasthttp.Response
				firsts <- fasttimeout.Do(ctx, upstream, &req, &resp)
				select {
				case <-again:
				case <-time.After(stressBound):
				}
				seconds <- fasttimeout.Do(ctx, upstream, &req, &resp)
			}, &stats))

			conn := sendRaw(t, s.addr, rawRequest("/twice"))
			receive(t, called, "the first upstream call")
			require.NoError(t, receive(t, firsts, "the first Do's result"))
			require.NoError(t, conn.Close())
			assert.Eventually(t, func() bool {
				return stats[0].Snapshot().ClientGone+stats[1].Snapshot().ClientGone == 1
			}, stressBound, time.Millisecond, "the middleware never saw the client leave")
			close(again)

			err := receive(t, seconds, "the second Do's result")
			assert.ErrorIs(t, err, fasttimeout.ErrClientGone)
			assert.ErrorIs(t, err, context.Canceled)
			assert.EqualValues(t, 1, calls.Load(), "the upstream was called for nobody")
		})
	}
}
