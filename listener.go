package fasttimeout

import (
	"errors"
	"net"
	"slices"
	"sync"
	"time"

	"github.com/valyala/fasthttp"
)

const (
	// retryFirstDelay and retryMaxDelay bound the backoff between accepts
	// that failed for lack of resources: net/http's Server.Serve uses the
	// same, 5 ms doubling up to 1 s.
	retryFirstDelay = 5 * time.Millisecond
	retryMaxDelay   = time.Second
	// retryLogEvery is the least time between two log lines about failed
	// accepts: a flood of connections fails an accept every few
	// milliseconds, and a line for each would flood the log too.
	retryLogEvery = time.Second
)

// RetryListener returns a listener whose Accept rides out a lack of
// resources instead of failing, so that a flood of connections cannot end
// [fasthttp.Server.Serve]. fasthttp takes every accept error but a timeout
// for a permanent one: a single EMFILE ("too many open files") makes Serve
// return, and usually the process exit, while the descriptors it lacked
// come free as soon as some connections close. Wrap the listener given to
// Serve:
//
//	ln, err := net.Listen("tcp", ":8080")
//	...
//	err = server.Serve(fasttimeout.RetryListener(ln, logger))
//
// When the wrapped listener's Accept fails with EMFILE, ENFILE, ENOBUFS or
// ENOMEM, Accept waits and tries again, with a delay that starts at 5 ms
// and doubles up to 1 s, as net/http's Server.Serve does; each call to
// Accept starts again at 5 ms. When it fails for the connection it was
// taking, with ECONNABORTED or, on Linux, a network error of a connection
// that failed in the listen queue (ENETDOWN, EPROTO, ENOPROTOOPT,
// EHOSTDOWN, ENONET, EHOSTUNREACH, EOPNOTSUPP or ENETUNREACH), Accept tries
// again at once, as accept(2) says: the next connection may be fine, and
// waiting would hold it up. The errors are matched with
// errors.Is on syscall's errnos, as the net package returns them on Unix;
// neither Winsock's own codes nor Plan 9's error strings are matched. Any
// other error is returned as is. A connection is returned as the wrapped
// listener returned it, not wrapped, so the watch of clients for hang-ups,
// which needs its descriptor, works as without RetryListener.
//
// The net package's listeners return a connection or an error; a wrapped
// custom one (proxy protocol, TLS) may not. A connection returned together
// with an error is closed, since no server uses it, and the error handled
// as above. Neither a connection nor an error, which fasthttp would take
// for an open connection that never closes (its Shutdown would wait
// forever), is retried after the delay, as a lack of resources is.
//
// Each failure is reported through logger, unless it is nil (pass the
// server's Logger, if it has one): the first at once, then at most one line
// a second, which counts the failures since the line before.
//
// Close closes the wrapped listener and ends a wait at once: the waiting
// Accept returns a *net.OpError wrapping [net.ErrClosed], which Serve takes
// for the listener's end (it returns nil, as after Shutdown). Addr is the
// wrapped listener's. RetryListener panics if ln is nil.
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

	// The backoff between retries, and the clock of the log's rate
	// limit: constants and time.Now but in tests.
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
		if conn != nil && err != nil {
			// The net package never returns both, but a wrapped listener
			// (proxy protocol, TLS) may; no server uses a connection
			// returned with an error (fasthttp and net/http drop it), and
			// its descriptor would be lost.
			_ = conn.Close()
			conn = nil
		}
		switch {
		case conn != nil:
			return conn, nil
		case err == nil:
			// Neither: fasthttp would count the nil connection open and
			// hand it to a worker as its signal to stop, and Shutdown would
			// wait for it forever. Retried with the backoff, so that a
			// listener that keeps doing so is not spun on.
			err = errNoConnection
		case connectionAcceptError(err):
			// That connection's failure, not the listener's, and that
			// connection is gone from the queue: the next one may be
			// fine, so try again at once, as accept(2) says. Waiting would
			// hold up the good connections behind it.
			l.report(err, 0)
			continue
		case !resourceAcceptError(err):
			return nil, err
		}
		delay = l.nextDelay(delay)
		l.report(err, delay)
		timer := time.NewTimer(delay)
		select {
		case <-timer.C:
		case <-l.closed:
			timer.Stop()
			return nil, l.closedError()
		}
	}
}

// Close closes the wrapped listener and ends a wait in Accept.
func (l *retryListener) Close() error {
	l.closeOnce.Do(func() { close(l.closed) })
	return l.Listener.Close()
}

// nextDelay returns the delay before the next try, after one of prev (zero
// before the first retry).
func (l *retryListener) nextDelay(prev time.Duration) time.Duration {
	if prev <= 0 {
		return l.firstDelay
	}
	return min(2*prev, l.maxDelay)
}

// report logs err, to be retried after delay (0: at once), unless a line
// was written less than retryLogEvery ago: then it only counts it for the
// next line.
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

// closedError is what Accept returns when Close ends its wait: what the net
// package returns from a closed listener, so that fasthttp, which looks
// for the message of net.ErrClosed, and errors.Is both see the end.
func (l *retryListener) closedError() error {
	e := &net.OpError{Op: "accept", Err: net.ErrClosed}
	if addr := l.Listener.Addr(); addr != nil {
		e.Net, e.Addr = addr.Network(), addr
	}
	return e
}

// resourceAcceptError reports whether Accept waits and retries after err.
func resourceAcceptError(err error) bool {
	return slices.ContainsFunc(retriedAcceptErrors[:], func(target error) bool { return errors.Is(err, target) })
}

// connectionAcceptError reports whether err is the failure of the
// connection accept was taking, after which Accept retries at once.
func connectionAcceptError(err error) bool {
	is := func(target error) bool { return errors.Is(err, target) }
	return slices.ContainsFunc(abortedAcceptErrors[:], is) || slices.ContainsFunc(pendingAcceptErrors[:], is)
}
