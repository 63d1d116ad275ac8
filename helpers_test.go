package fasttimeout_test

import (
	"errors"
	"net"
	"os"
	"sync"
	"testing"
	"time"

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

var allModes = []fasttimeout.Mode{fasttimeout.Racing, fasttimeout.Cooperative}

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
