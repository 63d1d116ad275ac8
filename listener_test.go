//go:build !plan9

package fasttimeout

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/valyala/fasthttp"
)

// listenerBound bounds every wait of the listener's tests: far longer than
// anything takes on a loaded machine, far shorter than a wait that never
// ends.
const listenerBound = 30 * time.Second

// fakeAddr is the address of every fakeListener.
var fakeAddr = &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 8080}

// fakeListener is a listener whose Accept follows a script: the errors in
// errs, one a call, then conn (if not nil), then err forever (if not nil);
// after that it waits for Close. Once closed, Accept returns what a closed
// net listener returns, unless deaf is set. Accept must be called by one
// goroutine at a time.
type fakeListener struct {
	errs []error
	conn net.Conn
	err  error
	deaf atomic.Bool // while set, Close is not seen: the script goes on, as with a wrapper that never says it is closed

	calls     atomic.Int64
	called    chan struct{} // a token per call, if not nil; dropped when full
	closed    chan struct{}
	closeOnce sync.Once
}

func newFakeListener(errs []error, conn net.Conn, err error) *fakeListener {
	return &fakeListener{errs: errs, conn: conn, err: err, called: make(chan struct{}, 1), closed: make(chan struct{})}
}

func (l *fakeListener) Accept() (net.Conn, error) {
	n := int(l.calls.Add(1)) - 1
	select {
	case l.called <- struct{}{}:
	default:
	}
	select {
	case <-l.closed:
		if !l.deaf.Load() {
			return nil, &net.OpError{Op: "accept", Net: "tcp", Addr: fakeAddr, Err: net.ErrClosed}
		}
	default:
	}
	switch {
	case n < len(l.errs):
		return nil, l.errs[n]
	case n == len(l.errs) && l.conn != nil:
		return l.conn, nil
	case l.err != nil:
		return nil, l.err
	}
	<-l.closed
	return nil, &net.OpError{Op: "accept", Net: "tcp", Addr: fakeAddr, Err: net.ErrClosed}
}

func (l *fakeListener) Close() error {
	l.closeOnce.Do(func() { close(l.closed) })
	return nil
}

func (l *fakeListener) Addr() net.Addr { return fakeAddr }

// acceptErr is err as the net package returns it from Accept on Linux.
func acceptErr(err error) error {
	return &net.OpError{Op: "accept", Net: "tcp", Addr: fakeAddr, Err: os.NewSyscallError("accept4", err)}
}

// lineLogger keeps the lines logged through it.
type lineLogger struct {
	mu    sync.Mutex
	lines []string
}

func (l *lineLogger) Printf(format string, args ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines = append(l.lines, fmt.Sprintf(format, args...))
}

func (l *lineLogger) logged() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.lines...)
}

// newQuickRetryListener is RetryListener around inner with delays of a
// nanosecond, so that retries take no time.
func newQuickRetryListener(inner net.Listener, logger fasthttp.Logger) *retryListener {
	l := RetryListener(inner, logger).(*retryListener)
	l.firstDelay, l.maxDelay = time.Nanosecond, time.Nanosecond
	return l
}

// Accept waits out a lack of resources, retries a failure of the
// connection it was taking at once, and returns any other error as is,
// net.ErrClosed (the listener's end) however it is wrapped.
func TestRetryListener_accept(t *testing.T) {
	t.Parallel()
	emfile := acceptErr(syscall.EMFILE)
	for _, tc := range []struct {
		name    string
		errs    []error
		atOnce  bool  // errs[0] is retried at once, not after the backoff
		wantErr error // nil: the connection after errs
	}{
		{name: "EMFILE_is_retried", errs: []error{emfile, emfile, emfile}},
		{name: "ENFILE_is_retried", errs: []error{acceptErr(syscall.ENFILE)}},
		{name: "ENOBUFS_is_retried", errs: []error{acceptErr(syscall.ENOBUFS)}},
		{name: "ENOMEM_is_retried", errs: []error{acceptErr(syscall.ENOMEM)}},
		{name: "EAGAIN_is_retried", errs: []error{acceptErr(syscall.EAGAIN)}},
		{name: "ECONNABORTED_is_retried_at_once", errs: []error{acceptErr(syscall.ECONNABORTED)}, atOnce: true},
		{name: "ECONNRESET_is_retried_at_once", errs: []error{acceptErr(syscall.ECONNRESET)}, atOnce: true},
		{name: "ETIMEDOUT_is_retried_at_once", errs: []error{acceptErr(syscall.ETIMEDOUT)}, atOnce: true},
		{name: "EINTR_is_retried_at_once", errs: []error{acceptErr(syscall.EINTR)}, atOnce: true},
		{name: "a_bare_errno_is_retried", errs: []error{syscall.EMFILE}},
		{name: "a_mix_is_retried", errs: []error{emfile, acceptErr(syscall.ENOBUFS), acceptErr(syscall.ECONNABORTED), emfile}},
		{name: "no_error_returns_the_connection", errs: nil},
		{name: "EINVAL_is_returned", errs: []error{acceptErr(syscall.EINVAL)}, wantErr: acceptErr(syscall.EINVAL)},
		{name: "EBADF_is_returned", errs: []error{acceptErr(syscall.EBADF)}, wantErr: acceptErr(syscall.EBADF)},
		{name: "a_timeout_is_returned", errs: []error{acceptErr(os.ErrDeadlineExceeded)}, wantErr: acceptErr(os.ErrDeadlineExceeded)},
		{name: "a_closed_listener_is_returned", errs: []error{acceptErr(net.ErrClosed)}, wantErr: acceptErr(net.ErrClosed)},
		{name: "a_bare_net.ErrClosed_is_returned", errs: []error{net.ErrClosed}, wantErr: net.ErrClosed},
		{name: "a_wrapped_net.ErrClosed_is_returned", errs: []error{fmt.Errorf("proxy: %w", net.ErrClosed)}, wantErr: fmt.Errorf("proxy: %w", net.ErrClosed)},
		{name: "a_closed_listener_after_retries_is_returned", errs: []error{emfile, acceptErr(syscall.ECONNABORTED), acceptErr(net.ErrClosed)}, wantErr: acceptErr(net.ErrClosed)},
		{name: "io.EOF_is_returned", errs: []error{io.EOF}, wantErr: io.EOF},
		{name: "any_other_error_is_returned", errs: []error{errors.New("boom")}, wantErr: errors.New("boom")},
		{name: "an_error_after_retries_is_returned", errs: []error{emfile, emfile, acceptErr(syscall.EINVAL)}, wantErr: acceptErr(syscall.EINVAL)},
	} {
		for _, logger := range []*lineLogger{new(lineLogger), nil} {
			name := tc.name + "/logged"
			var asLogger fasthttp.Logger = logger
			if logger == nil {
				name, asLogger = tc.name+"/nil_logger", nil
			}
			t.Run(name, func(t *testing.T) {
				t.Parallel()
				client, server := net.Pipe()
				t.Cleanup(func() { _ = client.Close(); _ = server.Close() })
				inner := newFakeListener(tc.errs, server, nil)
				l := newQuickRetryListener(inner, asLogger)

				conn, err := l.Accept()
				if tc.wantErr != nil {
					require.Equal(t, tc.wantErr, err, "returned as is")
					require.Nil(t, conn)
					require.EqualValues(t, len(tc.errs), inner.calls.Load(), "no retry after the error")
				} else {
					require.NoError(t, err)
					require.Same(t, server, conn, "the connection, not wrapped")
					require.EqualValues(t, len(tc.errs)+1, inner.calls.Load(), "a try per retried error")
				}
				if logger == nil {
					return
				}
				retried := len(tc.errs)
				if tc.wantErr != nil {
					retried--
				}
				lines := logger.logged()
				if retried == 0 {
					require.Empty(t, lines)
					return
				}
				require.Len(t, lines, 1, "the failures within a second make one line")
				when := "in 1ns"
				if tc.atOnce {
					when = "at once"
				}
				require.Equal(t, fmt.Sprintf("fasttimeout: accept: %v; retrying %s", tc.errs[0], when), lines[0])
			})
		}
	}
}

// The failure of the connection accept was taking (ECONNABORTED,
// ECONNRESET, ETIMEDOUT, or on Linux a queued connection's network error)
// is that connection's, and EINTR a signal's: Accept tries again at once,
// as accept(2) says, rather than wait the backoff and hold up the good
// connections behind it. A lack of resources still waits.
func TestRetryListener_retries_a_connection_s_failure_at_once(t *testing.T) {
	t.Parallel()
	errs := []error{acceptErr(syscall.ECONNABORTED), acceptErr(syscall.ECONNRESET), acceptErr(syscall.ETIMEDOUT), acceptErr(syscall.EINTR)}
	for _, errno := range pendingAcceptErrors {
		errs = append(errs, acceptErr(errno))
	}
	client, server := net.Pipe()
	t.Cleanup(func() { _ = client.Close(); _ = server.Close() })
	inner := newFakeListener(errs, server, nil)
	l := RetryListener(inner, nil).(*retryListener)
	l.firstDelay, l.maxDelay = time.Hour, time.Hour // a wait would outlast the test
	type result struct {
		conn net.Conn
		err  error
	}
	accepted := make(chan result, 1)
	go func() {
		conn, err := l.Accept()
		accepted <- result{conn, err}
	}()
	select {
	case r := <-accepted:
		require.NoError(t, r.err)
		require.Same(t, server, r.conn)
		require.EqualValues(t, len(errs)+1, inner.calls.Load(), "a try per failure, and the connection")
	case <-time.After(listenerBound):
		_ = l.Close() // ends the wait, and the goroutine
		t.Fatalf("Accept waited after a connection's failure (%d tries)", inner.calls.Load())
	}
}

func TestRetryListener_backoff_doubles_from_5ms_to_1s(t *testing.T) {
	t.Parallel()
	l := RetryListener(newFakeListener(nil, nil, nil), nil).(*retryListener)
	var got []time.Duration
	var d time.Duration
	for range 11 {
		d = l.nextDelay(d)
		got = append(got, d)
	}
	ms := time.Millisecond
	require.Equal(t, []time.Duration{5 * ms, 10 * ms, 20 * ms, 40 * ms, 80 * ms, 160 * ms, 320 * ms, 640 * ms, time.Second, time.Second, time.Second}, got)
}

// The log gets the first failure at once, then one line a second at most,
// counting the failures since the line before: at the clock's steps of
// 600 ms, failures 1, 3 and 5 are written.
func TestRetryListener_log_is_rate_limited(t *testing.T) {
	t.Parallel()
	emfile := acceptErr(syscall.EMFILE)
	client, server := net.Pipe()
	t.Cleanup(func() { _ = client.Close(); _ = server.Close() })
	logger := new(lineLogger)
	l := RetryListener(newFakeListener([]error{emfile, emfile, emfile, emfile, emfile}, server, nil), logger).(*retryListener)
	clock := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	l.now = func() time.Time { // called with l.mu held
		now := clock
		clock = clock.Add(600 * time.Millisecond)
		return now
	}

	conn, err := l.Accept()
	require.NoError(t, err)
	require.Same(t, server, conn)
	prefix := "fasttimeout: accept: accept tcp 127.0.0.1:8080: accept4: too many open files; retrying in "
	require.Equal(t, []string{
		prefix + "5ms",
		prefix + "20ms (2 failures since the last line)",
		prefix + "80ms (2 failures since the last line)",
	}, logger.logged())
}

// Close ends Accept at once, which says the listener is closed, as a closed
// net listener does: during a wait between tries (the delay here is an
// hour), and with a wrapped listener that goes on failing after Close
// rather than say it is closed (deaf), whether Accept would try again at
// once or after a wait.
func TestRetryListener_Close_ends_Accept(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		err  error
		deaf bool
	}{
		{name: "during_a_wait", err: acceptErr(syscall.EMFILE)},
		{name: "deaf/ECONNABORTED", err: acceptErr(syscall.ECONNABORTED), deaf: true},
		{name: "deaf/ECONNRESET", err: acceptErr(syscall.ECONNRESET), deaf: true},
		{name: "deaf/ETIMEDOUT", err: acceptErr(syscall.ETIMEDOUT), deaf: true},
		{name: "deaf/EINTR", err: acceptErr(syscall.EINTR), deaf: true},
		{name: "deaf/EMFILE", err: acceptErr(syscall.EMFILE), deaf: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			inner := newFakeListener(nil, nil, tc.err)
			if tc.deaf {
				inner.deaf.Store(true)
				t.Cleanup(func() { inner.deaf.Store(false) }) // ends an Accept that did not
			}
			l := RetryListener(inner, nil).(*retryListener)
			l.firstDelay, l.maxDelay = time.Hour, time.Hour
			type accepted struct {
				conn net.Conn
				err  error
			}
			done := make(chan accepted, 1)
			go func() {
				conn, err := l.Accept()
				done <- accepted{conn, err}
			}()
			select {
			case <-inner.called:
			case <-time.After(listenerBound):
				t.Fatal("Accept did not call the wrapped listener")
			}

			require.NoError(t, l.Close())
			var got accepted
			select {
			case got = <-done:
			case <-time.After(listenerBound):
				t.Fatalf("Accept goes on after Close (%d tries)", inner.calls.Load())
			}
			require.Nil(t, got.conn)
			require.ErrorIs(t, got.err, net.ErrClosed)
			var opErr *net.OpError
			require.ErrorAs(t, got.err, &opErr)
			require.Equal(t, "accept", opErr.Op)
			require.Equal(t, fakeAddr, opErr.Addr)
			require.Contains(t, got.err.Error(), "use of closed network connection", "what fasthttp looks for")
			select {
			case <-inner.closed:
			default:
				t.Error("the wrapped listener is not closed")
			}
			require.Equal(t, fakeAddr, l.Addr())
		})
	}
}

// fasthttp's Shutdown closes the listener: Serve returns nil, as after any
// shutdown, even while Accept waits out a failure.
func TestRetryListener_Shutdown_during_a_wait(t *testing.T) {
	t.Parallel()
	inner := newFakeListener(nil, nil, acceptErr(syscall.EMFILE))
	l := RetryListener(inner, nil).(*retryListener)
	l.firstDelay, l.maxDelay = time.Hour, time.Hour
	logger := new(lineLogger)
	server := &fasthttp.Server{Handler: func(*fasthttp.RequestCtx) {}, Logger: logger}
	served := make(chan error, 1)
	go func() { served <- server.Serve(l) }()
	select {
	case <-inner.called:
	case <-time.After(listenerBound):
		t.Fatal("Serve did not accept")
	}

	shutdownWithin(t, server, served)
	require.Empty(t, logger.logged(), "no permanent error reported")
}

// shutdownWithin shuts server down and checks that Serve, which reports to
// served, returns nil, both within listenerBound.
func shutdownWithin(t *testing.T, server *fasthttp.Server, served <-chan error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), listenerBound)
	defer cancel()
	require.NoError(t, server.ShutdownWithContext(ctx))
	select {
	case err := <-served:
		require.NoError(t, err)
	case <-ctx.Done():
		t.Fatal("Serve did not return after Shutdown")
	}
}

func TestRetryListener_nil_listener_panics(t *testing.T) {
	t.Parallel()
	require.PanicsWithValue(t, "fasttimeout: RetryListener: nil listener", func() { RetryListener(nil, nil) })
}

// The connections Accept returns are the wrapped listener's, so a client's
// hang-up is seen through the wrapper as without it.
func TestRetryListener_keeps_hangup_detection(t *testing.T) {
	if !hangupSupported {
		t.Skip("hang-ups are watched on Linux only")
	}
	t.Parallel()
	var stats Stats
	started := make(chan struct{}, 1)
	causes := make(chan error, 1)
	server := &fasthttp.Server{Handler: New(func(ctx *fasthttp.RequestCtx) {
		c := Context(ctx)
		started <- struct{}{}
		select {
		case <-c.Done():
		case <-time.After(listenerBound):
		}
		causes <- context.Cause(c)
	}, Config{Timeout: time.Minute, Stats: &stats})}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	served := make(chan error, 1)
	go func() { served <- server.Serve(RetryListener(ln, nil)) }()
	t.Cleanup(func() { shutdownWithin(t, server, served) })

	conn, err := net.Dial("tcp", ln.Addr().String())
	require.NoError(t, err)
	_, err = conn.Write([]byte("GET /slow HTTP/1.1\r\nHost: retry.test\r\n\r\n"))
	require.NoError(t, err)
	select {
	case <-started:
	case <-time.After(listenerBound):
		t.Fatal("the handler did not start")
	}
	require.NoError(t, conn.Close())
	select {
	case cause := <-causes:
		require.ErrorIs(t, cause, ErrClientGone)
	case <-time.After(listenerBound):
		t.Fatal("the handler's context did not end")
	}
	require.EqualValues(t, 1, stats.Snapshot().ClientGone)
}

// acceptResult is what a scriptedListener's Accept returns.
type acceptResult struct {
	conn net.Conn
	err  error
}

// scriptedListener returns the results of its script, one a call, then
// waits for Close, as a wrapped custom listener (proxy protocol, TLS) may
// that breaks net.Listener's habits: a connection together with an error,
// or neither.
type scriptedListener struct {
	script    []acceptResult
	calls     atomic.Int64
	closed    chan struct{}
	closeOnce sync.Once
}

func (l *scriptedListener) Accept() (net.Conn, error) {
	if n := int(l.calls.Add(1)) - 1; n < len(l.script) {
		return l.script[n].conn, l.script[n].err
	}
	<-l.closed
	return nil, &net.OpError{Op: "accept", Net: "tcp", Addr: fakeAddr, Err: net.ErrClosed}
}

func (l *scriptedListener) Close() error {
	l.closeOnce.Do(func() { close(l.closed) })
	return nil
}

func (l *scriptedListener) Addr() net.Addr { return fakeAddr }

// closeCountingConn counts its Close calls.
type closeCountingConn struct {
	net.Conn
	closes atomic.Int64
}

func (c *closeCountingConn) Close() error {
	c.closes.Add(1)
	return c.Conn.Close()
}

// A connection a wrapped listener returns together with an error is
// closed, whether the error is retried or returned: no server uses it
// (fasthttp and net/http drop it): left open, its descriptor, the very
// resource RetryListener guards, would be lost. Neither a connection nor
// an error, on which fasthttp would serve a nil connection and crash, is
// retried after the backoff, and logged. A typed nil (a nil pointer in the
// net.Conn) is no connection: its methods may panic, so it is neither closed
// nor returned.
func TestRetryListener_a_wrapped_listener_s_odd_results(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name     string
		typedNil net.Conn // in place of the odd connection
		err      error    // with the odd connection; nil with neither typedNil: (nil, nil)
		retried  bool
		wantLine string
	}{
		{name: "a_connection_with_a_resource_error_is_closed_and_retried", err: acceptErr(syscall.EMFILE), retried: true,
			wantLine: fmt.Sprintf("fasttimeout: accept: %v; retrying in 1ns", acceptErr(syscall.EMFILE))},
		{name: "a_connection_with_a_connection_s_error_is_closed_and_retried", err: acceptErr(syscall.ECONNABORTED), retried: true,
			wantLine: fmt.Sprintf("fasttimeout: accept: %v; retrying at once", acceptErr(syscall.ECONNABORTED))},
		{name: "a_connection_with_another_error_is_closed_and_the_error_returned", err: errors.New("proxy header: malformed")},
		{name: "neither_a_connection_nor_an_error_is_retried", retried: true,
			wantLine: "fasttimeout: accept: listener returned neither a connection nor an error; retrying in 1ns"},
		{name: "a_typed_nil_TCPConn_is_retried", typedNil: (*net.TCPConn)(nil), retried: true,
			wantLine: "fasttimeout: accept: listener returned neither a connection nor an error; retrying in 1ns"},
		{name: "a_typed_nil_custom_connection_with_a_resource_error_is_retried", typedNil: (*closeCountingConn)(nil),
			err: acceptErr(syscall.EMFILE), retried: true,
			wantLine: fmt.Sprintf("fasttimeout: accept: %v; retrying in 1ns", acceptErr(syscall.EMFILE))},
		{name: "a_typed_nil_TCPConn_with_another_error_returns_the_error", typedNil: (*net.TCPConn)(nil), err: io.ErrUnexpectedEOF},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			oddClient, oddServer := net.Pipe()
			client, server := net.Pipe()
			t.Cleanup(func() { _ = oddClient.Close(); _ = oddServer.Close(); _ = client.Close(); _ = server.Close() })
			odd := &closeCountingConn{Conn: oddServer}
			first := acceptResult{conn: odd, err: tc.err}
			if tc.typedNil != nil {
				first.conn = tc.typedNil
			} else if tc.err == nil {
				first = acceptResult{}
			}
			inner := &scriptedListener{script: []acceptResult{first, {conn: server}}, closed: make(chan struct{})}
			logger := new(lineLogger)
			l := newQuickRetryListener(inner, logger)

			conn, err := l.Accept()
			if tc.retried {
				require.NoError(t, err)
				require.Same(t, server, conn, "the next connection")
				require.EqualValues(t, 2, inner.calls.Load())
				require.Equal(t, []string{tc.wantLine}, logger.logged())
			} else {
				require.Equal(t, tc.err, err, "returned as is")
				require.Nil(t, conn, "the closed connection is not returned")
				require.EqualValues(t, 1, inner.calls.Load())
			}
			if tc.err != nil && tc.typedNil == nil {
				require.EqualValues(t, 1, odd.closes.Load(), "the connection returned with an error is closed")
			}
		})
	}
}

// Through a real server: a wrapped listener's (nil, nil), or a typed nil
// connection with no error, is not passed on. fasthttp counted the
// untyped nil as an open connection and handed it to a worker, for which a
// nil connection is the signal to stop: it never closed, and Shutdown
// waited for it forever (with MaxConnsPerIP, the nil connection's address
// crashes the process). A worker reads a typed nil, and the nil pointer
// panics, crashing the process. The connection after it is served.
func TestRetryListener_serves_after_a_nil_connection(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		nil  net.Conn
	}{
		{name: "neither_a_connection_nor_an_error"},
		{name: "a_typed_nil_TCPConn", nil: (*net.TCPConn)(nil)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			client, server := net.Pipe()
			t.Cleanup(func() { _ = client.Close(); _ = server.Close() })
			inner := &scriptedListener{script: []acceptResult{{conn: tc.nil}, {conn: tc.nil}, {conn: server}}, closed: make(chan struct{})}
			l := newQuickRetryListener(inner, nil)
			srv := &fasthttp.Server{Handler: func(ctx *fasthttp.RequestCtx) { ctx.SetBodyString("ok") }}
			served := make(chan error, 1)
			go func() { served <- srv.Serve(l) }()

			require.NoError(t, client.SetDeadline(time.Now().Add(listenerBound)))
			_, err := client.Write([]byte("GET / HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n"))
			require.NoError(t, err)
			answer, err := io.ReadAll(client)
			require.NoError(t, err)
			require.Contains(t, string(answer), "HTTP/1.1 200 OK")
			require.True(t, bytes.HasSuffix(answer, []byte("ok")), "%q", answer)
			require.GreaterOrEqual(t, inner.calls.Load(), int64(3), "both retried")
			shutdownWithin(t, srv, served)
		})
	}
}
