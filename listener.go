package fasttimeout

import (
	"errors"
	"net"
	"reflect"
	"slices"
	"sync"
	"time"

	"github.com/valyala/fasthttp"
)

const (
	// The backoff after accepts that failed for lack of resources, as
	// net/http's Server.Serve: 5 ms doubling up to 1 s.
	retryFirstDelay = 5 * time.Millisecond
	retryMaxDelay   = time.Second
	// retryLogEvery is the least time between two log lines about failed
	// accepts, which a flood fails every few milliseconds.
	retryLogEvery = time.Second
)

// RetryListener returns a listener whose Accept rides out a lack of
// resources instead of failing, so that a flood of connections cannot end
// [fasthttp.Server.Serve], which takes every accept error but a timeout for
// a permanent one: a single EMFILE ("too many open files") makes it return,
// though descriptors come free as soon as some connections close. Wrap the
// listener given to Serve:
//
//	ln, err := net.Listen("tcp", ":8080")
//	...
//	err = server.Serve(fasttimeout.RetryListener(ln, logger))
//
// After EMFILE, ENFILE, ENOBUFS, ENOMEM or EAGAIN (on Linux also ENOSR or
// EPERM), Accept waits and tries again, 5 ms doubling up to 1 s as net/http's
// Server.Serve does, from 5 ms on each call. After a failure of the
// connection it was taking (ECONNABORTED, ECONNRESET, ETIMEDOUT, or on Linux
// ENETDOWN, EPROTO, ENOPROTOOPT, EHOSTDOWN, ENONET, EHOSTUNREACH, EOPNOTSUPP
// or ENETUNREACH of one that failed in the listen queue) or EINTR, it tries
// again at once, as accept(2) says. Errors are matched with errors.Is on
// syscall's errnos (not Winsock's codes or Plan 9's strings, nor a Temporary
// method); any other, such as a listener's deadline or [net.ErrClosed], is
// returned as is. Connections are returned unwrapped, so the hang-up watch,
// which needs their descriptor, works.
//
// A wrapped custom listener (proxy protocol, TLS) may return both a
// connection and an error: the connection is closed, as no server uses it,
// and the error handled as above. Neither, which fasthttp would take for a
// connection that never closes (Shutdown would wait forever), is retried
// after the delay, and so is a typed nil connection such as
// (*net.TCPConn)(nil), whose methods panic.
//
// Failures are reported through logger unless it is nil (pass the server's
// Logger): the first at once, then at most one line a second, counting the
// failures since the last.
//
// Close closes the wrapped listener and ends a wait at once: Accept returns a
// *net.OpError wrapping [net.ErrClosed], which Serve takes for the
// listener's end (it returns nil), and so it does from then on if the
// wrapped listener goes on returning an error it retries. Addr is the
// wrapped listener's.
// RetryListener panics if ln is nil.
func RetryListener(ln net.Listener, logger fasthttp.Logger) net.Listener {
	if ln == nil {
		panic("fasttimeout: RetryListener: nil listener")
	}
	return &retryListener{
		Listener:   ln,
		logger:     logger,
		closed:     make(chan struct{}),
		firstDelay: retryFirstDelay,
		maxDelay:   retryMaxDelay,
		now:        time.Now,
	}
}

// errNoConnection is logged when the wrapped listener's Accept returns
// neither a connection nor an error.
var errNoConnection = errors.New("listener returned neither a connection nor an error")

// retryListener is the listener RetryListener returns.
type retryListener struct {
	net.Listener
	logger    fasthttp.Logger
	closed    chan struct{} // closed by Close, ends a wait between accepts
	closeOnce sync.Once

	// The backoff, and the log's clock: set by tests.
	firstDelay, maxDelay time.Duration
	now                  func() time.Time

	mu       sync.Mutex // guards the log's rate limit
	lastLog  time.Time  // when the last line was written; zero before the first
	unlogged int        // failures since then not reported
}

// Accept waits for the next connection, retrying the errors that pass.
func (l *retryListener) Accept() (net.Conn, error) {
	var delay time.Duration
	for {
		conn, err := l.Listener.Accept()
		if !isNilConn(conn) {
			if err == nil {
				return conn, nil
			}
			// No server uses it (see RetryListener), and its descriptor
			// would be lost.
			_ = conn.Close()
		}
		switch {
		case err == nil:
			// Neither: fasthttp would count the nil connection open (and
			// hand it to a worker as a stop signal), or read a typed nil and
			// panic. With the backoff, so that a listener that keeps doing
			// so is not spun on.
			err = errNoConnection
		case connectionAcceptError(err):
			// That connection's failure, and it is gone from the queue:
			// waiting would hold up the good ones behind it. Unless Close
			// was called: a wrapper that goes on failing so, rather than
			// say it is closed, would be tried again forever.
			l.report(err, 0)
			if closed(l.closed) {
				return nil, l.closedError()
			}
			continue
		case !resourceAcceptError(err):
			return nil, err
		}
		delay = l.nextDelay(delay)
		l.report(err, delay)
		select {
		case <-time.After(delay):
		case <-l.closed:
			return nil, l.closedError()
		}
	}
}

// Close closes the wrapped listener and ends a wait in Accept.
func (l *retryListener) Close() error {
	l.closeOnce.Do(func() { close(l.closed) })
	return l.Listener.Close()
}

// nextDelay returns the delay before the next try, after prev (zero at
// first).
func (l *retryListener) nextDelay(prev time.Duration) time.Duration {
	if prev <= 0 {
		return l.firstDelay
	}
	return min(2*prev, l.maxDelay)
}

// report logs err, retried after delay (0: at once), or only counts it if
// a line was written less than retryLogEvery ago.
func (l *retryListener) report(err error, delay time.Duration) {
	if l.logger == nil {
		return
	}
	l.mu.Lock()
	now := l.now()
	if !l.lastLog.IsZero() && now.Sub(l.lastLog) < retryLogEvery {
		l.unlogged++
		l.mu.Unlock()
		return
	}
	unlogged := l.unlogged
	l.lastLog, l.unlogged = now, 0
	l.mu.Unlock()
	when := "at once"
	if delay > 0 {
		when = "in " + delay.String()
	}
	if unlogged == 0 {
		l.logger.Printf("fasttimeout: accept: %v; retrying %s", err, when)
		return
	}
	l.logger.Printf("fasttimeout: accept: %v; retrying %s (%d failures since the last line)", err, when, unlogged+1)
}

// closedError is what Accept returns when Close ends its wait: a closed net
// listener's error, so that fasthttp, which looks for net.ErrClosed's
// message, and errors.Is both see the end.
func (l *retryListener) closedError() error {
	e := &net.OpError{Op: "accept", Err: net.ErrClosed}
	if addr := l.Listener.Addr(); addr != nil {
		e.Net, e.Addr = addr.Network(), addr
	}
	return e
}

// isNilConn reports whether conn is nil or holds a nil pointer, whose
// methods may panic. Only reflect sees a nil pointer of any type; it costs
// nanoseconds, against the accept's system call.
func isNilConn(conn net.Conn) bool {
	v := reflect.ValueOf(conn)
	return conn == nil || v.Kind() == reflect.Pointer && v.IsNil()
}

// resourceAcceptError reports whether Accept waits and retries after err.
func resourceAcceptError(err error) bool {
	is := func(target error) bool { return errors.Is(err, target) }
	return slices.ContainsFunc(retriedAcceptErrors[:], is) || slices.ContainsFunc(linuxRetriedAcceptErrors[:], is)
}

// connectionAcceptError reports whether Accept retries after err at once:
// the failure of the connection accept was taking.
func connectionAcceptError(err error) bool {
	is := func(target error) bool { return errors.Is(err, target) }
	return slices.ContainsFunc(abortedAcceptErrors[:], is) || slices.ContainsFunc(pendingAcceptErrors[:], is)
}
