//go:build linux

package fasttimeout

import (
	"errors"
	"net"
	"regexp"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/valyala/fasthttp"
)

// serveTCP runs h on a fasthttp server on 127.0.0.1 and returns its
// address; the test's cleanup shuts it down.
func serveTCP(t testing.TB, h fasthttp.RequestHandler) string {
	t.Helper()
	ln := tcpListener(t)
	srv := &fasthttp.Server{Handler: h, ReadTimeout: 30 * time.Second}
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

// waitLog waits until nginx's error log matches re.
func waitLog(t testing.TB, n *nginxProc, re string) {
	t.Helper()
	rx := regexp.MustCompile(re)
	deadline := time.Now().Add(hangupWait)
	for !rx.MatchString(n.errorLog(t)) {
		if time.Now().After(deadline) {
			t.Fatalf("nginx's error log has no %q:\n%s", re, n.errorLog(t))
		}
		time.Sleep(10 * time.Millisecond) // bounded poll of a file nginx writes
	}
}
