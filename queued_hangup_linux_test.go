package fasttimeout

import (
	"bufio"
	"crypto/tls"
	"net"
	"sync"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/valyala/fasthttp"
)

// A TLS client that closes its connection sends close_notify before its
// FIN: a queued request whose client did so is gone, as the watch of a
// running one sees it (EPOLLRDHUP), although bytes wait in the socket.
func TestAdmission_a_queued_request_whose_TLS_client_closed_does_not_run(t *testing.T) {
	for _, mode := range []Mode{Racing, Cooperative} {
		t.Run(mode.String(), func(t *testing.T) {
			t.Parallel()
			stats := new(Stats)
			s := newSlotHolder()
			h := New(s.serve, Config{Timeout: 5 * time.Minute, Mode: mode, Stats: stats, MaxConcurrency: 1})
			ln := tls.NewListener(tcpListener(t), &tls.Config{Certificates: []tls.Certificate{selfSignedCert(t)}})
			addr, conns := serveConns(t, ln, h)
			free := sync.OnceFunc(func() { close(s.release) })
			t.Cleanup(free)
			dial := func(path string) *tls.Conn {
				c, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true})
				require.NoError(t, err)
				t.Cleanup(func() { c.Close() })
				get(t, c, path)
				return c
			}

			first := dial("/first")
			require.Eventually(t, func() bool { return s.runs.Load() == 1 }, queuedBound, time.Millisecond, "the first handler holds the slot")
			second := dial("/second")
			require.Eventually(t, func() bool { return stats.Snapshot().Queued == 1 }, queuedBound, time.Millisecond, "the second request waits")
			server, ok := conns.Load(second.LocalAddr().String())
			require.True(t, ok)
			require.NoError(t, second.Close()) // close_notify, then FIN
			require.Eventually(t, func() bool { return closeWait(t, server.(*tls.Conn)) }, queuedBound, time.Millisecond, "the FIN has reached the server's socket")
			free()
			status, _ := readStatus(t, first, bufio.NewReader(first))
			assert.Equal(t, fasthttp.StatusOK, status)
			require.Eventually(t, func() bool {
				return s.runs.Load() >= 2 || stats.Snapshot().ClientGone > 0
			}, queuedBound, time.Millisecond)
			third := dial("/next")
			status, _ = readStatus(t, third, bufio.NewReader(third))
			assert.Equal(t, fasthttp.StatusOK, status, "the slot is free")

			assert.EqualValues(t, 2, s.runs.Load(), "the second handler never ran")
			got := stats.Snapshot()
			assert.EqualValues(t, 1, got.ClientGone)
			assert.EqualValues(t, 1, got.LeftWaiting)
		})
	}
}

// closeWait reports whether the TCP socket under c is in CLOSE_WAIT: its
// peer's FIN has come. Read from TCP_INFO, not as the middleware looks.
func closeWait(t *testing.T, c *tls.Conn) bool {
	rc, err := c.NetConn().(*net.TCPConn).SyscallConn()
	require.NoError(t, err)
	var info int32 // the first 4 bytes of struct tcp_info, tcpi_state first
	require.NoError(t, rc.Control(func(fd uintptr) {
		v, err := syscall.GetsockoptInt(int(fd), syscall.IPPROTO_TCP, syscall.TCP_INFO)
		require.NoError(t, err)
		info = int32(v)
	}))
	const tcpCloseWait = 8 // include/net/tcp_states.h
	return (*[4]byte)(unsafe.Pointer(&info))[0] == tcpCloseWait
}

// Inside a New whose watch of the client has started, the inner New looks
// at a queued request's client itself too: the watch sees a hang-up only
// once its goroutine runs, which on a loaded process may be after the slot
// came, and the inner handler would then run for a client gone. Here the
// test holds the watcher's lock from before the hang-up until the inner New
// has decided, as such a stall would. Not parallel: the watcher is the
// process's.
func TestAdmission_a_queued_request_inside_a_watching_New_is_looked_at(t *testing.T) {
	for _, mode := range []Mode{Racing, Cooperative} {
		t.Run(mode.String(), func(t *testing.T) {
			stats := new(Stats)
			s := newSlotHolder()
			outerCalls := make(chan *call, 2)
			inner := New(s.serve, Config{Timeout: 5 * time.Minute, Mode: mode, Stats: stats, MaxConcurrency: 1})
			outer := New(func(ctx *fasthttp.RequestCtx) {
				Context(ctx) // watched in cooperative mode too
				outerCalls <- lookup(ctx)
				inner(ctx)
			}, Config{Timeout: 5 * time.Minute, Mode: mode})
			addr, conns := serveConns(t, tcpListener(t), outer)
			free := sync.OnceFunc(func() { close(s.release) })
			t.Cleanup(free) // before the server's shutdown, should the test fail first

			first := dialGet(t, addr, "/first")
			receive(t, outerCalls, "the first request's outer call")
			require.Eventually(t, func() bool { return s.runs.Load() == 1 }, queuedBound, time.Millisecond, "the first handler holds the slot")
			second := dialGet(t, addr, "/second")
			c := receive(t, outerCalls, "the second request's outer call")
			require.Eventually(t, func() bool { return stats.Snapshot().Queued == 1 }, queuedBound, time.Millisecond, "the second request waits")
			require.Eventually(t, func() bool { return c.watch.Load()&watchMask == watchRegistered }, queuedBound, time.Millisecond,
				"the outer New watches the second request's client")

			clientHangups.mu.Lock() // the watcher stalls
			unlock := sync.OnceFunc(clientHangups.mu.Unlock)
			t.Cleanup(unlock)
			server, ok := conns.Load(second.LocalAddr().String())
			require.True(t, ok)
			require.NoError(t, second.Close())
			require.Eventually(t, func() bool { return peerGone(server.(net.Conn)) }, queuedBound, time.Millisecond, "the hang-up reached the server's socket")
			free()
			require.Eventually(t, func() bool { return s.runs.Load() >= 2 || stats.Snapshot().LeftWaiting > 0 }, queuedBound, time.Millisecond,
				"the second request is run or answered")
			unlock()

			status, _ := readStatus(t, first, bufio.NewReader(first))
			assert.Equal(t, fasthttp.StatusOK, status)
			assert.EqualValues(t, 1, s.runs.Load(), "the second handler never ran")
			assert.EqualValues(t, 1, stats.Snapshot().LeftWaiting)
		})
	}
}
