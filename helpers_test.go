// The harness of the tests that run the middleware in a real fasthttp.Server,
// as users do: serve, over an in-memory listener, and startStressLoopback,
// over TCP on 127.0.0.1, with their clients and the waits they share. (The
// tests inside the package, which cannot reach these, have theirs in
// helpers_internal_test.go.)
package fasttimeout_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/fasthttputil"

	"github.com/fasttimeout/fasttimeout"
)

// testServer is a real fasthttp.Server on an in-memory listener.
type testServer struct {
	ln     net.Listener
	server *fasthttp.Server
	client *fasthttp.Client
	served chan error
	once   sync.Once
}

// serve starts h on a new server; the test's cleanup shuts it down.
func serve(t testing.TB, h fasthttp.RequestHandler) *testServer {
	t.Helper()
	return serveLogged(t, h, testLogger{t})
}

// serveLogged is serve with the server's logger set to logger.
func serveLogged(t testing.TB, h fasthttp.RequestHandler, logger fasthttp.Logger) *testServer {
	t.Helper()
	ln := fasthttputil.NewInmemoryListener()
	s := &testServer{
		ln:     ln,
		server: &fasthttp.Server{Handler: h, Logger: logger, ReadTimeout: 10 * time.Second},
		served: make(chan error, 1),
	}
	s.client = &fasthttp.Client{
		Dial:                      func(string) (net.Conn, error) { return ln.Dial() },
		MaxIdemponentCallAttempts: 1,
	}
	go func() { s.served <- s.server.Serve(ln) }()
	t.Cleanup(func() { s.shutdown(t) })
	return s
}

// shutdown stops the server and waits for Serve to return; calls after the
// first do nothing.
func (s *testServer) shutdown(t testing.TB) {
	s.once.Do(func() { s.stop(t) })
}

func (s *testServer) stop(t testing.TB) {
	s.client.CloseIdleConnections()
	require.NoError(t, s.server.Shutdown())
	_ = s.ln.Close() // Shutdown before Serve has taken the listener leaves it open
	select {
	case err := <-s.served:
		if err != nil && !errors.Is(err, fasthttputil.ErrInmemoryListenerClosed) {
			t.Errorf("Serve: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Error("server did not stop within 10s of Shutdown")
	}
}

// get sends GET path and returns the status, body and content type.
func (s *testServer) get(t testing.TB, path string) (int, string, string) {
	t.Helper()
	req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	req.SetRequestURI("http://test" + path)
	require.NoError(t, s.client.DoTimeout(req, resp, 10*time.Second))
	return resp.StatusCode(), string(resp.Body()), string(resp.Header.ContentType())
}

// status sends GET path and returns the status. Unlike get it may run on
// a goroutine other than the test's, where require cannot stop the test: a
// transport error fails the test and gives 0.
func (s *testServer) status(t testing.TB, path string) int {
	t.Helper()
	code, _, err := s.client.GetTimeout(nil, "http://test"+path, waitTimeout)
	assert.NoError(t, err, "GET %s", path)
	return code
}

type testLogger struct{ t testing.TB }

func (l testLogger) Printf(format string, args ...any) { l.t.Logf(format, args...) }

// unsetenv removes key for the rest of a test that called t.Setenv(key, ...),
// which restores it afterwards.
func unsetenv(t testing.TB, key string) {
	t.Helper()
	require.NoError(t, os.Unsetenv(key))
}

// waitTimeout bounds every wait of these tests; it is a hang detector, not a
// speed requirement.
const waitTimeout = 10 * time.Second

// shortTimeout is the request timeout of tests that time out.
const shortTimeout = 30 * time.Millisecond

// actInTime is the timeout of a request whose handler must act before its
// deadline (move it with Disarm or Extend, hijack the connection, look at a
// context that has not ended yet) and then outlive it: long enough that a
// loaded machine stalling the request before its handler runs does not
// spend it, short enough for the test to wait it out.
const actInTime = time.Second

// onlyTimingOut is a Config.TimeoutFunc that keeps the configured timeout
// for the paths given, the requests meant to time out, and gives the others
// waitTimeout: a request that must be answered by its handler must not get
// the timeout response because a loaded machine stalled the test for the
// short timeout.
func onlyTimingOut(paths ...string) func(*fasthttp.RequestCtx) time.Duration {
	return func(ctx *fasthttp.RequestCtx) time.Duration {
		if slices.Contains(paths, string(ctx.Path())) {
			return 0
		}
		return waitTimeout
	}
}

var allModes = []fasttimeout.Mode{fasttimeout.Racing, fasttimeout.Cooperative}

// reportTimeout returns a handler that sends on timeouts the timeout each
// request was given: its context's deadline less its arrival (ctx.Time()),
// or -1 without a deadline.
func reportTimeout(timeouts chan<- time.Duration) fasthttp.RequestHandler {
	return func(ctx *fasthttp.RequestCtx) {
		deadline, ok := fasttimeout.Context(ctx).Deadline()
		if !ok {
			timeouts <- -1
			return
		}
		timeouts <- deadline.Sub(ctx.Time())
	}
}

func do(t testing.TB, s *testServer, method, path string) *fasthttp.Response {
	t.Helper()
	req := fasthttp.AcquireRequest()
	defer fasthttp.ReleaseRequest(req)
	req.Header.SetMethod(method)
	req.SetRequestURI("http://test" + path)
	resp := new(fasthttp.Response)
	require.NoError(t, s.client.DoTimeout(req, resp, waitTimeout))
	return resp
}

// waitDone is a handler that blocks until its request context is done (the
// deadline, in a cooperative handler) or release is closed.
func waitDone(release <-chan struct{}) fasthttp.RequestHandler {
	return func(ctx *fasthttp.RequestCtx) {
		select {
		case <-fasttimeout.Context(ctx).Done():
		case <-release:
		}
	}
}

// stressBound is how long any wait of the real-server tests may take before it counts as a
// hang. Nothing is expected to come close: it only turns a hang into a
// failure with a message.
const stressBound = 30 * time.Second

// receive returns the next value on ch, failing the test if none comes
// within stressBound: a value that never comes is a failure with a message,
// not a hang until the test binary's timeout.
func receive[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(stressBound):
		t.Fatalf("no %s within %v", what, stressBound)
		panic("unreachable")
	}
}

// ownBody is the body a handler of kind k writes for secret s.
func ownBody(kind, s string) string {
	if kind == "stream" {
		return "stream:" + s + "|" + s + "|" + s
	}
	return kind + ":" + s
}

func replyWithSecret(ctx *fasthttp.RequestCtx, kind, secret string) {
	ctx.Response.Header.Set("X-Secret", secret)
	ctx.SetContentType("text/plain")
	ctx.SetBodyString(ownBody(kind, secret))
}

// countingListener counts the connections it accepts.
type countingListener struct {
	net.Listener
	accepted atomic.Int64
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.accepted.Add(1)
	}
	return c, err
}

// stressLog keeps what the server logs, for the report.
type stressLog struct {
	mu    sync.Mutex
	lines []string
	n     int
}

func (l *stressLog) Printf(format string, args ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.n++
	if len(l.lines) < 10 {
		l.lines = append(l.lines, fmt.Sprintf(format, args...))
	}
}

func (l *stressLog) report() (int, []string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.n, append([]string(nil), l.lines...)
}

// stressLoopback is a fasthttp.Server on 127.0.0.1 that counts accepted
// connections.
type stressLoopback struct {
	server   *fasthttp.Server
	ln       *countingListener
	addr     string
	served   chan error
	logs     *stressLog
	shutOnce sync.Once
	shutErr  error
}

// startStressLoopback serves h on a new server, set up further by each of
// configure before it serves; the test's cleanup shuts it down.
func startStressLoopback(t testing.TB, h fasthttp.RequestHandler, configure ...func(*fasthttp.Server)) *stressLoopback {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	s := &stressLoopback{ln: &countingListener{Listener: ln}, addr: ln.Addr().String(), served: make(chan error, 1), logs: &stressLog{}}
	s.server = &fasthttp.Server{Handler: h, Logger: s.logs, ReadTimeout: 2 * time.Minute, IdleTimeout: 2 * time.Minute}
	for _, f := range configure {
		f(s.server)
	}
	go func() { s.served <- s.server.Serve(s.ln) }()
	t.Cleanup(func() { assert.NoError(t, s.shutdown()) })
	return s
}

// shutdown shuts the server down and waits for Serve to return, bounded.
func (s *stressLoopback) shutdown() error {
	s.shutOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), stressBound)
		defer cancel()
		if err := s.server.ShutdownWithContext(ctx); err != nil {
			s.shutErr = fmt.Errorf("shutdown: %w", err)
			return
		}
		select {
		case err := <-s.served:
			s.shutErr = err
		case <-ctx.Done():
			s.shutErr = errors.New("Serve did not return after Shutdown")
		}
	})
	return s.shutErr
}

// stressConn is one keep-alive client connection, used by one goroutine.
type stressConn struct {
	conn net.Conn
	br   *bufio.Reader
	bw   *bufio.Writer
	req  fasthttp.Request
	resp fasthttp.Response
}

func dialStress(addr string) (*stressConn, error) {
	conn, err := net.DialTimeout("tcp", addr, stressBound)
	if err != nil {
		return nil, err
	}
	return &stressConn{conn: conn, br: bufio.NewReader(conn), bw: bufio.NewWriter(conn)}, nil
}

// do sends GET path with secret in a header and the query, and reads the
// response into c.resp.
func (c *stressConn) do(path, secret string) error {
	c.req.Reset()
	c.resp.Reset()
	c.req.SetRequestURI(path + "?secret=" + secret)
	c.req.Header.SetHost("stress.test")
	c.req.Header.Set("X-Secret", secret)
	if err := c.conn.SetDeadline(time.Now().Add(stressBound)); err != nil {
		return err
	}
	if err := c.req.Write(c.bw); err != nil {
		return err
	}
	if err := c.bw.Flush(); err != nil {
		return err
	}
	return c.resp.Read(c.br)
}

func (c *stressConn) close() { _ = c.conn.Close() }

// waitUntil polls cond until it holds or stressBound passes, and reports
// whether it held. Used only to wait for an end state, never to guess an
// order, where require.Eventually cannot be: in a handler's goroutine, and in
// the stress report, which gathers every finding before it fails.
func waitUntil(cond func() bool) bool {
	deadline := time.Now().Add(stressBound)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(5 * time.Millisecond)
	}
	return true
}

// get sends one request on c and fails the test on a transport error.
func (c *stressConn) get(t *testing.T, path, secret string) *fasthttp.Response {
	t.Helper()
	require.NoError(t, c.do(path, secret), "request %s on a connection that should live", path)
	return &c.resp
}

func requireTimeoutResponse(t *testing.T, resp *fasthttp.Response) {
	t.Helper()
	require.Equal(t, fasttimeout.DefaultStatusCode, resp.StatusCode())
	require.Equal(t, fasttimeout.DefaultBody, string(resp.Body()))
	require.Empty(t, resp.Header.Peek("X-Secret"), "no header of the late handler")
}

func requireOwnResponse(t *testing.T, resp *fasthttp.Response, kind, secret string) {
	t.Helper()
	require.Equal(t, fasthttp.StatusOK, resp.StatusCode())
	require.Equal(t, ownBody(kind, secret), string(resp.Body()))
	require.Equal(t, secret, string(resp.Header.Peek("X-Secret")))
}
