package fasttimeout

import (
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/fasthttputil"
)

// On every system, add watches a TCP connection exactly when the system
// supports it, and remove takes whatever add returned.
func TestHangupSupported(t *testing.T) {
	t.Parallel()
	s, _ := tcpPair(t, tcpListener(t))
	h, ok := clientHangups.add(s, func() {})
	require.Equal(t, hangupSupported, ok)
	clientHangups.remove(h)
	clientHangups.remove(h)
}

// tcpListener listens on 127.0.0.1; the test's cleanup closes it.
func tcpListener(t testing.TB) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { ln.Close() })
	return ln
}

// tcpPair returns the two ends of a new TCP connection through ln; the
// test's cleanup closes both.
func tcpPair(t testing.TB, ln net.Listener) (server, client *net.TCPConn) {
	t.Helper()
	type accepted struct {
		c   net.Conn
		err error
	}
	ch := make(chan accepted, 1)
	go func() {
		c, err := ln.Accept()
		ch <- accepted{c, err}
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	require.NoError(t, err)
	a := <-ch
	require.NoError(t, a.err)
	t.Cleanup(func() { c.Close(); a.c.Close() })
	return a.c.(*net.TCPConn), c.(*net.TCPConn)
}

// The watch of the client starts HangupDelay after the handler does, in
// both modes, even for a request that a proxy's X-Request-Start makes
// seconds old: most such requests still finish within the delay.
func TestHangupWatch_counts_its_delay_from_the_handlers_start(t *testing.T) {
	t.Parallel()
	for _, mode := range []Mode{Racing, Cooperative} {
		t.Run(mode.String(), func(t *testing.T) {
			t.Parallel()
			type seen struct {
				watch             uint64
				watchAt, admitted int64
				left              time.Duration
			}
			got := make(chan seen, 1)
			h := New(func(ctx *fasthttp.RequestCtx) {
				c := lookup(ctx)
				left, _ := Remaining(ctx)
				got <- seen{c.watch.Load() & watchMask, c.watchAt.Load(), c.admitted, left}
			}, Config{Timeout: 10 * time.Second, Mode: mode, HonorQueueHeaders: true})
			ln := fasthttputil.NewInmemoryListener()
			srv := &fasthttp.Server{Handler: h}
			served := make(chan error, 1)
			go func() { served <- srv.Serve(ln) }()
			t.Cleanup(func() {
				require.NoError(t, srv.Shutdown())
				require.NoError(t, <-served)
			})
			client := &fasthttp.Client{Dial: func(string) (net.Conn, error) { return ln.Dial() }}

			req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
			defer fasthttp.ReleaseRequest(req)
			defer fasthttp.ReleaseResponse(resp)
			req.SetRequestURI("http://test/")
			sent := time.Now().Add(-2 * time.Second)
			req.Header.Set("X-Request-Start", fmt.Sprintf("t=%d", sent.UnixMicro()))
			require.NoError(t, client.DoTimeout(req, resp, 10*time.Second))
			s := <-got

			require.Less(t, s.left, 8500*time.Millisecond, "the header's two seconds count against the budget")
			if !hangupSupported {
				require.Equal(t, watchEnded, s.watch)
				return
			}
			require.Equal(t, watchPending, s.watch, "the handler returned before the watch was due")
			require.Equal(t, s.admitted+int64(HangupDelay), s.watchAt)
		})
	}
}
