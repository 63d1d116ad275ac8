package fasttimeout

import (
	"net"
	"testing"

	"github.com/stretchr/testify/require"
	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/fasthttputil"
)

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
