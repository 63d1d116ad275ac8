package fasttimeout

import (
	"net"
	"testing"

	"github.com/stretchr/testify/require"
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
