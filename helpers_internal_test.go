package fasttimeout

import (
	"errors"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/fasthttputil"
)

// actInTime is the timeout of a request whose handler must run: long
// enough that a loaded machine stalling the request before the middleware
// does not spend its budget on arrival (the middleware would answer it
// without running the handler), short enough for a test to wait it out. As
// in the external tests (helpers_test.go).
const actInTime = time.Second

// receive returns the next value on ch, failing the test if none comes
// within 30 s: a value that never comes (a handler that never ran) is a
// failure with a message, not a hang until the test binary's timeout.
func receive[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(30 * time.Second):
		t.Fatalf("no %s within 30s", what)
		panic("unreachable")
	}
}

// serveInMemory serves h on a real fasthttp.Server over an in-memory
// listener until the test's cleanup, which shuts it down, and returns a
// client of it that sends each request once.
func serveInMemory(t *testing.T, h fasthttp.RequestHandler) *fasthttp.Client {
	t.Helper()
	ln := fasthttputil.NewInmemoryListener()
	server := &fasthttp.Server{Handler: h}
	served := make(chan error, 1)
	go func() { served <- server.Serve(ln) }()
	client := &fasthttp.Client{Dial: func(string) (net.Conn, error) { return ln.Dial() }, MaxIdemponentCallAttempts: 1}
	t.Cleanup(func() {
		client.CloseIdleConnections()
		require.NoError(t, server.Shutdown())
		require.NoError(t, <-served)
	})
	return client
}

// serveInMemoryToShutdown serves h as serveInMemory does, for a test that
// shuts the server down itself while a request runs: shutdown starts the
// shutdown, once, and returns where its result comes. The test's cleanup
// starts it too, if the test did not, then waits for it and for Serve.
func serveInMemoryToShutdown(t *testing.T, h fasthttp.RequestHandler) (client *fasthttp.Client, shutdown func() <-chan error) {
	t.Helper()
	ln := fasthttputil.NewInmemoryListener()
	server := &fasthttp.Server{Handler: h}
	served := make(chan error, 1)
	go func() { served <- server.Serve(ln) }()
	client = &fasthttp.Client{Dial: func(string) (net.Conn, error) { return ln.Dial() }, MaxIdemponentCallAttempts: 1}
	shutdown = sync.OnceValue(func() <-chan error {
		done := make(chan error, 1)
		go func() { done <- server.Shutdown() }()
		return done
	})
	t.Cleanup(func() {
		done := shutdown()
		client.CloseIdleConnections()
		assert.NoError(t, receive(t, done, "the shutdown"))
		assert.NoError(t, receive(t, served, "the end of Serve"))
	})
	return client, shutdown
}

// getAsync sends GET path with client on a goroutine of its own and
// returns where its status comes.
func getAsync(t *testing.T, client *fasthttp.Client, path string) <-chan int {
	status := make(chan int, 1)
	go func() {
		s, _, err := client.GetTimeout(nil, "http://test"+path, 2*time.Minute)
		assert.NoError(t, err)
		status <- s
	}()
	return status
}

// serveTCP runs h on a fasthttp server on 127.0.0.1 and returns its
// address; the test's cleanup shuts it down.
func serveTCP(t testing.TB, h fasthttp.RequestHandler) string {
	t.Helper()
	return serveTCPWith(t, &fasthttp.Server{Handler: h, ReadTimeout: 30 * time.Second})
}

// serveTCPWith runs srv on 127.0.0.1 as serveTCP does.
func serveTCPWith(t testing.TB, srv *fasthttp.Server) string {
	t.Helper()
	return serveOn(t, srv, tcpListener(t))
}

// serveOn runs srv on ln (a TLS listener over tcpListener, say) until the
// test's cleanup, and returns ln's address.
func serveOn(t testing.TB, srv *fasthttp.Server, ln net.Listener) string {
	t.Helper()
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	t.Cleanup(func() {
		require.NoError(t, srv.Shutdown())
		// Shutdown before Serve has taken the listener does not close it.
		ln.Close()
		if err := <-served; err != nil && !errors.Is(err, net.ErrClosed) {
			t.Errorf("Serve: %v", err)
		}
	})
	return ln.Addr().String()
}
