package main

import (
	"errors"
	"net"
	"time"

	"github.com/valyala/fasthttp"
)

// errIdleConnUnusable is the error of a request the gateway did not send
// because the pooled upstream connection it was to go out on had been
// closed by the upstream while idle, or held bytes no request had asked
// for. Nothing of the request was written, so it is sent again on a new
// connection whatever its method (see resendIfClosedIdle).
var errIdleConnUnusable = errors.New("upstream connection closed, or sent unasked bytes, while idle in the pool")

// idleCheckedConn is an upstream connection that, before the first write of
// a request on it once a response has been read (a connection the pool
// gives out again), checks that the upstream has not closed it meanwhile.
// fasthttp's client does not look: an upstream whose keep-alive timeout is
// shorter than the pool's 10 s (gunicorn's 2 s, Node's and uvicorn's 5 s)
// had closed every connection idle longer than that, and the next request
// on one failed with "the server closed connection before returning the
// first response byte", a 502 for a POST, which may not be sent twice.
// net/http's Transport sees such a close while the connection is idle and
// drops it from its pool; this check, one non-blocking peek, does so at
// the connection's next use.
type idleCheckedConn struct {
	net.Conn
	// reused is set by a read: the next write begins a request on a
	// connection that sat in the pool. fasthttp's client writes a request
	// whole before it reads the response, and hands a connection from one
	// request to the next under its pool's lock.
	reused bool
}

func (c *idleCheckedConn) Read(p []byte) (int, error) {
	c.reused = true
	return c.Conn.Read(p)
}

func (c *idleCheckedConn) Write(p []byte) (int, error) {
	if c.reused {
		c.reused = false
		if !idleConnUsable(c.Conn) {
			return 0, errIdleConnUnusable
		}
	}
	return c.Conn.Write(p)
}

// testHookDialed, set only by tests, is told of each upstream connection
// the gateway dials.
var testHookDialed func(net.Conn)

// dialUpstream dials addr, at any of its addresses (IPv6 too, as net.Dial
// does), within timeout if it is positive, and returns the connection
// checked at each reuse (see idleCheckedConn).
func dialUpstream(addr string, timeout time.Duration) (net.Conn, error) {
	var conn net.Conn
	var err error
	if timeout > 0 {
		conn, err = fasthttp.DialDualStackTimeout(addr, timeout)
	} else {
		conn, err = fasthttp.DialDualStack(addr)
	}
	if err != nil {
		return nil, err
	}
	if testHookDialed != nil {
		testHookDialed(conn)
	}
	return &idleCheckedConn{Conn: conn}, nil
}
