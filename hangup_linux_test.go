package fasttimeout

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"net"
	"runtime"
	"runtime/pprof"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/fasthttputil"
	"go.uber.org/goleak"
)

// hangupWait bounds every wait for a callback; the watcher is expected to
// take milliseconds, so only a broken one reaches it.
const hangupWait = 10 * time.Second

// signal returns a callback that closes the returned channel, and counts
// its calls.
func signal() (func(), <-chan struct{}, *atomic.Int32) {
	ch := make(chan struct{})
	var n atomic.Int32
	return func() {
		if n.Add(1) == 1 {
			close(ch)
		}
	}, ch, &n
}

func waitFired(t testing.TB, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(hangupWait):
		t.Fatalf("%s: no callback within %v", what, hangupWait)
	}
}

// barrier closes a fresh watched connection on w and waits for its
// callback: the watcher has then returned from an EpollWait issued after
// everything the caller did before, so an event due from that would have
// been delivered by now.
func barrier(t testing.TB, w *hangupWatcher, ln net.Listener) {
	t.Helper()
	s, c := tcpPair(t, ln)
	cb, fired, _ := signal()
	h, ok := w.add(s, cb)
	require.True(t, ok)
	defer w.remove(h)
	require.NoError(t, c.Close())
	waitFired(t, fired, "barrier")
}

func TestHangupFires(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name   string
		hangUp func(*net.TCPConn) error
	}{
		{"FIN", func(c *net.TCPConn) error { return c.Close() }},
		{"RST", func(c *net.TCPConn) error {
			if err := c.SetLinger(0); err != nil {
				return err
			}
			return c.Close()
		}},
		{"half-close", func(c *net.TCPConn) error { return c.CloseWrite() }},
	}
	for _, tc := range cases {
		for _, before := range []bool{false, true} {
			name := tc.name
			if before {
				name += "/before-add"
			}
			t.Run(name, func(t *testing.T) {
				t.Parallel()
				var w hangupWatcher
				s, c := tcpPair(t, tcpListener(t))
				cb, fired, calls := signal()
				if before {
					// A peer gone already is reported at once.
					require.NoError(t, tc.hangUp(c))
				}
				h, ok := w.add(s, cb)
				require.True(t, ok)
				if !before {
					require.NoError(t, tc.hangUp(c))
				}
				waitFired(t, fired, name)
				w.remove(h)
				w.remove(h) // idempotent
				require.EqualValues(t, 1, calls.Load())
			})
		}
	}
}

func TestHangupPipelinedRequestDoesNotFire(t *testing.T) {
	t.Parallel()
	var w hangupWatcher
	ln := tcpListener(t)
	s, c := tcpPair(t, ln)
	// The next request of a keep-alive client, sent before this one's
	// answer, sits unread in the socket while the handler runs.
	req := []byte("GET /next HTTP/1.1\r\nHost: test\r\n\r\n")
	_, err := c.Write(req)
	require.NoError(t, err)
	waitReadable(t, s, len(req))

	cb, fired, calls := signal()
	h, ok := w.add(s, cb)
	require.True(t, ok)
	barrier(t, &w, ln)
	require.Zero(t, calls.Load(), "unread data reported as a hang-up")

	// Still watched: the client's close is seen.
	require.NoError(t, c.Close())
	waitFired(t, fired, "close after pipelined request")
	w.remove(h)
}

// waitReadable waits until n bytes are queued in s, without reading them.
func waitReadable(t testing.TB, s *net.TCPConn, n int) {
	t.Helper()
	rc, err := s.SyscallConn()
	require.NoError(t, err)
	buf := make([]byte, n)
	deadline := time.Now().Add(hangupWait)
	for {
		var got int
		var rerr error
		require.NoError(t, rc.Control(func(fd uintptr) {
			got, _, rerr = syscall.Recvfrom(int(fd), buf, syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		}))
		if rerr == nil && got >= n {
			return
		}
		if rerr != nil && !errors.Is(rerr, syscall.EAGAIN) {
			t.Fatalf("peek: %v", rerr)
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d bytes not readable within %v", n, hangupWait)
		}
		time.Sleep(time.Millisecond) // bounded poll for a kernel state, not a synchronisation
	}
}

func TestHangupTLS(t *testing.T) {
	t.Parallel()
	var w hangupWatcher
	s, c := tcpPair(t, tcpListener(t))
	srv := tls.Server(s, &tls.Config{Certificates: []tls.Certificate{selfSignedCert(t)}})
	cli := tls.Client(c, &tls.Config{InsecureSkipVerify: true})
	errc := make(chan error, 1)
	go func() { errc <- srv.Handshake() }()
	require.NoError(t, cli.Handshake())
	require.NoError(t, <-errc)

	fd, ok := connFD(srv)
	require.True(t, ok, "no descriptor through tls.Conn.NetConn")
	sfd, _ := connFD(s)
	require.Equal(t, sfd, fd)

	cb, fired, _ := signal()
	h, ok := w.add(srv, cb)
	require.True(t, ok)
	require.NoError(t, cli.Close())
	waitFired(t, fired, "TLS client close")
	w.remove(h)
}

func selfSignedCert(t testing.TB) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "127.0.0.1"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	require.NoError(t, err)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

func TestHangupRemoveBeforeClose(t *testing.T) {
	t.Parallel()
	var w hangupWatcher
	ln := tcpListener(t)
	s, c := tcpPair(t, ln)
	cb, _, calls := signal()
	h, ok := w.add(s, cb)
	require.True(t, ok)
	w.remove(h)
	require.NoError(t, c.Close())
	barrier(t, &w, ln)
	require.Zero(t, calls.Load(), "callback after remove")

	// The connection can be watched again after remove, and its hang-up,
	// which came with no watch on, is reported at once.
	cb2, fired2, _ := signal()
	h2, ok := w.add(s, cb2)
	require.True(t, ok, "re-registering after remove")
	waitFired(t, fired2, "re-registered connection already gone")
	w.remove(h2)
}

// A connection's registration whose descriptor was closed and reused by a
// new connection, registered in the same slot once the old connection is
// garbage, must never see the old event.
func TestHangupStaleEventAfterReuse(t *testing.T) {
	t.Parallel()
	var w hangupWatcher
	ln := tcpListener(t)
	// s1 is accepted here rather than by tcpPair, whose cleanup would keep
	// it from becoming garbage.
	c1, err := net.Dial("tcp", ln.Addr().String())
	require.NoError(t, err)
	t.Cleanup(func() { c1.Close() })
	a1, err := ln.Accept()
	require.NoError(t, err)
	fd1, ok := connFD(a1)
	require.True(t, ok)
	cbOld, _, oldCalls := signal()
	h1, ok := w.add(a1, cbOld)
	require.True(t, ok)
	w.mu.Lock()
	gen1 := w.slots[h1.slot].gen
	w.mu.Unlock()
	w.remove(h1)
	// The next connection waits in the backlog while s1 closes, so that
	// accepting it takes the lowest free number: s1's, unless a parallel
	// test takes it first.
	c2, err := net.Dial("tcp", ln.Addr().String())
	require.NoError(t, err)
	t.Cleanup(func() { c2.Close() })
	require.NoError(t, a1.Close())
	w.remove(h1) // after the close: harmless
	a1 = nil
	requireSwept(t, &w, h1.slot)

	a, err := ln.Accept()
	require.NoError(t, err)
	s2 := a.(*net.TCPConn)
	t.Cleanup(func() { s2.Close() })
	fd2, _ := connFD(s2)
	cbNew, firedNew, newCalls := signal()
	h2, ok := w.add(s2, cbNew)
	require.True(t, ok)
	require.Equal(t, h1.slot, h2.slot, "the free slot is reused")
	w.mu.Lock()
	require.NotEqual(t, gen1, w.slots[h2.slot].gen)
	w.mu.Unlock()
	if fd1 == fd2 {
		t.Logf("descriptor %d reused", fd2)
	} else {
		t.Logf("descriptor not reused (%d, then %d; parallel tests took it)", fd1, fd2)
	}

	// An event carrying the old token, as one queued before the close
	// would, reaches nobody.
	w.mu.Lock()
	w.dispatch(h1.slot, gen1)
	w.mu.Unlock()
	require.NoError(t, c1.Close())
	barrier(t, &w, ln)
	require.Zero(t, newCalls.Load(), "new registration got the old connection's event")
	require.Zero(t, oldCalls.Load())

	// Removing the old handle again must not end the new watch.
	w.remove(h1)
	require.NoError(t, c2.Close())
	waitFired(t, firedNew, "new registration")
	w.remove(h2)
	require.EqualValues(t, 1, newCalls.Load())
}

// requireSwept collects garbage until the watcher's sweep has freed the
// slot of a connection that is no longer referenced.
func requireSwept(t testing.TB, w *hangupWatcher, slot uint32) {
	t.Helper()
	require.Eventually(t, func() bool {
		runtime.GC()
		w.mu.Lock()
		defer w.mu.Unlock()
		w.sweep()
		return slices.Contains(w.free, slot)
	}, hangupWait, time.Millisecond, "the slot of a collected connection is not freed")
}

// A keep-alive connection keeps its registration from one watch to the
// next, and a hang-up while none is on reaches the next one.
func TestHangupKeepAliveWatches(t *testing.T) {
	t.Parallel()
	for _, closeBetween := range []bool{false, true} {
		t.Run(fmt.Sprintf("close-between=%v", closeBetween), func(t *testing.T) {
			t.Parallel()
			var w hangupWatcher
			ln := tcpListener(t)
			s, c := tcpPair(t, ln)
			for range 3 {
				cb, _, calls := signal()
				h, ok := w.add(s, cb)
				require.True(t, ok)
				w.remove(h)
				require.Zero(t, calls.Load())
			}
			if closeBetween {
				require.NoError(t, c.Close())
				barrier(t, &w, ln)
			}
			cb, fired, calls := signal()
			h, ok := w.add(s, cb)
			require.True(t, ok)
			w.mu.Lock()
			require.Len(t, w.conns, 1+btoi(closeBetween), "one registration per connection")
			w.mu.Unlock()
			if !closeBetween {
				require.NoError(t, c.Close())
			}
			waitFired(t, fired, "hang-up of a connection watched before")
			w.remove(h)
			require.EqualValues(t, 1, calls.Load())

			// Gone stays gone: a further watch is told at once.
			cb, fired, _ = signal()
			h, ok = w.add(s, cb)
			require.True(t, ok)
			waitFired(t, fired, "watch of a connection gone already")
			w.remove(h)
		})
	}
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// Connections that are closed and dropped without a hang-up (the server
// closed them) give their slots back once they are garbage.
func TestHangupSweepsCollectedConnections(t *testing.T) {
	t.Parallel()
	var w hangupWatcher
	ln := tcpListener(t)
	var slots []uint32
	for range 8 {
		c, err := net.Dial("tcp", ln.Addr().String())
		require.NoError(t, err)
		t.Cleanup(func() { c.Close() })
		s, err := ln.Accept()
		require.NoError(t, err)
		h, ok := w.add(s, func() {})
		require.True(t, ok)
		w.remove(h)
		require.NoError(t, s.Close())
		slots = append(slots, h.slot)
	}
	for _, slot := range slots {
		requireSwept(t, &w, slot)
	}
	w.mu.Lock()
	require.Empty(t, w.conns)
	w.mu.Unlock()
}

// proxyConn has the shape of github.com/pires/go-proxyproto's Conn, which
// hides the socket behind a Raw method only.
type proxyConn struct{ raw net.Conn }

func (c *proxyConn) Raw() net.Conn                      { return c.raw }
func (c *proxyConn) Read(b []byte) (int, error)         { return c.raw.Read(b) }
func (c *proxyConn) Write(b []byte) (int, error)        { return c.raw.Write(b) }
func (c *proxyConn) Close() error                       { return c.raw.Close() }
func (c *proxyConn) LocalAddr() net.Addr                { return c.raw.LocalAddr() }
func (c *proxyConn) RemoteAddr() net.Addr               { return c.raw.RemoteAddr() }
func (c *proxyConn) SetDeadline(t time.Time) error      { return c.raw.SetDeadline(t) }
func (c *proxyConn) SetReadDeadline(t time.Time) error  { return c.raw.SetReadDeadline(t) }
func (c *proxyConn) SetWriteDeadline(t time.Time) error { return c.raw.SetWriteDeadline(t) }

// Behind a load balancer speaking the PROXY protocol (an AWS NLB), the
// server's connections are go-proxyproto's, whose socket only its Raw
// method gives: they were never watched.
func TestHangupThroughProxyProtocolConn(t *testing.T) {
	t.Parallel()
	var w hangupWatcher
	s, c := tcpPair(t, tcpListener(t))
	wrapped := &proxyConn{raw: s}
	fd, ok := connFD(wrapped)
	require.True(t, ok, "no descriptor through Raw")
	sfd, _ := connFD(s)
	require.Equal(t, sfd, fd)

	cb, fired, _ := signal()
	h, ok := w.add(wrapped, cb)
	require.True(t, ok, "not watched")
	require.NoError(t, c.Close())
	waitFired(t, fired, "close behind a PROXY protocol wrapper")
	w.remove(h)
}

// freshConn is a connection wrapper whose NetConn is a new object each
// time, so that nothing but the watch holds the object its slot is keyed by.
type freshConn struct{ *net.TCPConn }

func (c *freshConn) NetConn() net.Conn { return &freshSock{c.TCPConn} }

type freshSock struct{ *net.TCPConn }

// A watched connection's slot is never swept, even if nothing else holds
// the object it is keyed by: else its hang-up is lost, and its watch
// counted forever, so the watcher goroutine never exits.
func TestHangupSweepKeepsAWatchedConnection(t *testing.T) {
	t.Parallel()
	var w hangupWatcher
	ln := tcpListener(t)
	s, c := tcpPair(t, ln)
	cb, fired, _ := signal()
	h, ok := w.add(&freshConn{s}, cb)
	require.True(t, ok)
	for range 3 {
		runtime.GC()
	}
	w.mu.Lock()
	w.sweep()
	w.mu.Unlock()
	require.NoError(t, c.Close())
	waitFired(t, fired, "the hang-up of a watched connection")
	w.remove(h)
	w.mu.Lock()
	defer w.mu.Unlock()
	require.Zero(t, w.active, "no watch left")
}

func TestHangupManyRegistrations(t *testing.T) {
	t.Parallel()
	const n = 500
	var w hangupWatcher
	ln := tcpListener(t)
	servers := make([]*net.TCPConn, n)
	clients := make([]*net.TCPConn, n)
	for i := range n {
		servers[i], clients[i] = tcpPair(t, ln)
	}
	var wg sync.WaitGroup
	var calls atomic.Int32
	handles := make([]hangupHandle, n)
	// Odd connections are removed before their client closes; only the
	// even ones may fire.
	for i := range n {
		if i%2 == 0 {
			wg.Add(1)
		}
		var once atomic.Bool
		h, ok := w.add(servers[i], func() {
			calls.Add(1)
			if i%2 == 1 {
				t.Errorf("removed registration %d fired", i)
			} else if !once.Swap(true) {
				wg.Done()
			}
		})
		require.True(t, ok)
		handles[i] = h
	}
	for i := 1; i < n; i += 2 {
		w.remove(handles[i])
	}
	for i := range n {
		require.NoError(t, clients[i].Close())
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	waitFired(t, done, "all registrations")
	for i := 0; i < n; i += 2 {
		w.remove(handles[i])
	}
	require.EqualValues(t, n/2, calls.Load())
	w.mu.Lock()
	require.Zero(t, w.active)
	require.LessOrEqual(t, len(w.slots), n)
	w.mu.Unlock()
}

func TestHangupNoDescriptor(t *testing.T) {
	t.Parallel()
	var w hangupWatcher
	ln := fasthttputil.NewInmemoryListener()
	defer ln.Close()
	go func() {
		if c, err := ln.Accept(); err == nil {
			c.Close()
		}
	}()
	c, err := ln.Dial()
	require.NoError(t, err)
	defer c.Close()
	_, ok := w.add(c, func() {})
	require.False(t, ok, "in-memory connection watched")
	_, ok = connFD(c)
	require.False(t, ok)
	_, ok = w.add(nil, func() {})
	require.False(t, ok)
	w.remove(hangupHandle{}) // the zero handle is no registration
	w.mu.Lock()
	require.False(t, w.running, "watcher started for nothing")
	w.mu.Unlock()

	// A closed connection has no descriptor left.
	s, _ := tcpPair(t, tcpListener(t))
	require.NoError(t, s.Close())
	_, ok = w.add(s, func() {})
	require.False(t, ok, "closed connection watched")
}

// silentConn is a live socket whose RawConn's Control returns nil without
// running its func: a custom syscall.Conn that the contract of RawConn does
// not rule out.
type silentConn struct{ *net.TCPConn }

func (c *silentConn) SyscallConn() (syscall.RawConn, error) { return silentRawConn{}, nil }

type silentRawConn struct{}

func (silentRawConn) Control(func(fd uintptr)) error    { return nil }
func (silentRawConn) Read(func(fd uintptr) bool) error  { return nil }
func (silentRawConn) Write(func(fd uintptr) bool) error { return nil }

// peerGone answers from its own look only: a pooled look that last saw a
// gone peer must not make a connection whose look did not run seen gone
// too (timeout.go would then drop a live client's queued request).
func TestPeerGone_never_reads_an_earlier_look(t *testing.T) {
	ln := tcpListener(t)
	gone, client := tcpPair(t, ln)
	require.NoError(t, client.Close())
	require.True(t, waitFor(func() bool { return peerGone(gone) }), "the hang-up reached the socket")
	live, _ := tcpPair(t, ln)
	silent := &silentConn{live}
	for range 1000 {
		require.True(t, peerGone(gone), "the gone peer")
		require.False(t, peerGone(silent), "a connection whose look did not run, after a look at a gone peer")
	}
}

// Through fasthttp's MaxConnsPerIP wrapper, ctx.Conn() hides the socket;
// socketOf finds it (perIPConn through its embedded Conn, perIPTLSConn
// through the NetConn of the *tls.Conn it embeds), and the handler's
// registration fires on the client's close.
func TestHangupThroughMaxConnsPerIP(t *testing.T) {
	t.Parallel()
	for _, useTLS := range []bool{false, true} {
		t.Run(map[bool]string{false: "TCP", true: "TLS"}[useTLS], func(t *testing.T) {
			t.Parallel()
			testHangupThroughMaxConnsPerIP(t, useTLS)
		})
	}
}

func testHangupThroughMaxConnsPerIP(t *testing.T, useTLS bool) {
	var ln net.Listener = tcpListener(t)
	if useTLS {
		ln = tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{selfSignedCert(t)}})
	}
	type reg struct {
		wrapped bool
		fired   <-chan struct{}
		ok      bool
	}
	regs := make(chan reg, 1)
	release := make(chan struct{})
	srv := &fasthttp.Server{
		MaxConnsPerIP: 10,
		Handler: func(ctx *fasthttp.RequestCtx) {
			cb, fired, _ := signal()
			_, isTCP := ctx.Conn().(*net.TCPConn)
			_, isTLS := ctx.Conn().(*tls.Conn)
			h, ok := clientHangups.add(ctx.Conn(), cb)
			regs <- reg{!isTCP && !isTLS, fired, ok}
			<-release
			clientHangups.remove(h)
		},
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	t.Cleanup(func() {
		require.NoError(t, srv.Shutdown())
		ln.Close() // in case Shutdown came before Serve took the listener
		if err := <-served; err != nil && !errors.Is(err, net.ErrClosed) {
			t.Errorf("Serve: %v", err)
		}
	})
	var c net.Conn
	var err error
	if useTLS {
		c, err = tls.Dial("tcp", ln.Addr().String(), &tls.Config{InsecureSkipVerify: true})
	} else {
		c, err = net.Dial("tcp", ln.Addr().String())
	}
	require.NoError(t, err)
	defer c.Close()
	_, err = c.Write([]byte("GET / HTTP/1.1\r\nHost: test\r\n\r\n"))
	require.NoError(t, err)
	var r reg
	select {
	case r = <-regs:
	case <-time.After(hangupWait):
		t.Fatal("request did not reach the handler")
	}
	defer close(release)
	require.True(t, r.wrapped, "MaxConnsPerIP no longer wraps ctx.Conn(); this test checks nothing")
	require.True(t, r.ok, "connection behind MaxConnsPerIP not watched")
	require.NoError(t, c.Close())
	waitFired(t, r.fired, "MaxConnsPerIP client close")
}

// The goroutine exits once nothing is watched, and a new registration
// starts it again. Not parallel, so that the goroutines present at the
// start are the only ones to ignore.
func TestHangupWatcherGoroutineExits(t *testing.T) {
	before := goleak.IgnoreCurrent()
	var w hangupWatcher
	ln := tcpListener(t)
	for round := range 2 {
		s, c := tcpPair(t, ln)
		cb, fired, _ := signal()
		h, ok := w.add(s, cb)
		require.True(t, ok)
		require.NoError(t, c.Close())
		waitFired(t, fired, "close")
		w.remove(h)

		deadline := time.Now().Add(hangupWait)
		for {
			err := goleak.Find(before)
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("round %d: watcher goroutine still running %v after the last remove: %v", round, hangupWait, err)
			}
		}
		w.mu.Lock()
		require.False(t, w.running)
		w.mu.Unlock()
	}
}

// The watcher's goroutine waits parked in the network poller, not in a
// system call: a goroutine in epoll_wait keeps its P until the runtime's
// monitor takes it back, and on a server with one P every request waits
// meanwhile.
func TestHangupWatcher_waits_parked_in_the_network_poller(t *testing.T) {
	t.Parallel()
	var w hangupWatcher
	s, _ := tcpPair(t, tcpListener(t))
	cb, _, _ := signal()
	h, ok := w.add(s, cb)
	require.True(t, ok)
	defer w.remove(h)
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		states := watcherStates()
		assert.NotEmpty(c, states, "no watcher goroutine")
		for _, s := range states {
			assert.True(c, strings.HasPrefix(s, "IO wait"), "a watcher's goroutine is in state %q", s)
		}
	}, hangupWait, time.Millisecond)
}

// watcherStates returns the state of every hangupWatcher goroutine, as
// runtime.Stack writes it: "IO wait", "syscall", "runnable" and so on.
func watcherStates() []string {
	var buf strings.Builder
	_ = pprof.Lookup("goroutine").WriteTo(&buf, 2) // as runtime.Stack for all
	var states []string
	for _, g := range strings.Split(buf.String(), "\n\n") {
		if !strings.Contains(g, "(*hangupWatcher).run(") {
			continue
		}
		header, _, _ := strings.Cut(g, "\n") // goroutine 7 [IO wait]:
		_, state, _ := strings.Cut(header, "[")
		state, _, _ = strings.Cut(state, "]")
		states = append(states, state)
	}
	return states
}

// remove racing with the hang-up: once remove has returned, the callback
// has run or never will.
func TestHangupRemoveRacesEvent(t *testing.T) {
	t.Parallel()
	var w hangupWatcher
	ln := tcpListener(t)
	const rounds = 200
	var fired atomic.Int32
	for range rounds {
		s, c := tcpPair(t, ln)
		var removed atomic.Bool
		h, ok := w.add(s, func() {
			if removed.Load() {
				t.Error("callback after remove returned")
			}
			fired.Add(1)
		})
		require.True(t, ok)
		closed := make(chan struct{})
		go func() { c.Close(); close(closed) }()
		w.remove(h)
		removed.Store(true)
		<-closed
		s.Close()
	}
	barrier(t, &w, ln)
	t.Logf("%d of %d callbacks ran before their remove", fired.Load(), rounds)
}

// The call's end looks at its watch (pending), then the call's timer
// starts the watch, then the end's compare-and-swap fails: the end must
// look again and remove the registration, or it outlives its call (and
// its callback can reach the worker's next call). Not parallel: it sets
// the process's test hook.
func TestUnwatchClient_removes_a_registration_made_as_it_looks(t *testing.T) {
	ln := tcpListener(t)
	server, _ := tcpPair(t, ln)
	m := &middleware{settings: Config{Timeout: time.Minute}.resolve()}
	w := &worker{}
	w.m, w.onGone = m, func() {}
	w.later = time.AfterFunc(time.Hour, func() {})
	w.later.Stop()
	c := &w.call
	c.m, c.conn = m, server
	c.deadline.Store(now() + int64(time.Minute))
	c.watchAt.Store(now())
	c.watch.Store(7 * watchGen) // generation 7, watchPending

	registered := false
	var h hangupHandle
	hook := func(hc *call) {
		if hc == c {
			c.startWatch(now())
			registered = c.watch.Load()&watchMask == watchRegistered
			h = c.hangup
		}
	}
	testHookUnwatch.Store(&hook)
	defer testHookUnwatch.Store(nil)
	c.unwatchClient()

	require.True(t, registered, "the hook started the watch")
	require.Equal(t, 7*watchGen|watchEnded, c.watch.Load())
	require.Equal(t, hangupHandle{}, c.hangup, "the handle is given up")
	require.NotZero(t, h.seq, "the watch was registered")
	clientHangups.mu.Lock()
	onGone := clientHangups.slots[h.slot].onGone // the connection's slot, while it lives
	clientHangups.mu.Unlock()
	require.Nil(t, onGone, "the registration is removed")
}

// The watch of the client starts HangupDelay after the handler does, in
// both modes, even for a request that a proxy's X-Request-Start makes
// seconds old: most such requests still finish within the delay.
func TestHangupWatch_counts_its_delay_from_the_handlers_start(t *testing.T) {
	t.Parallel()
	for _, mode := range []Mode{Racing, Cooperative} {
		t.Run(mode.String(), func(t *testing.T) {
			t.Parallel()
			type seen struct {
				watch             uint64
				watchAt, admitted int64
				left              time.Duration
			}
			got := make(chan seen, 1)
			addr := serveTCP(t, New(func(ctx *fasthttp.RequestCtx) {
				c := lookup(ctx)
				left, _ := Remaining(ctx)
				got <- seen{c.watch.Load() & watchMask, c.watchAt.Load(), c.admitted, left}
			}, Config{Timeout: 10 * time.Second, Mode: mode, HonorQueueHeaders: true}))

			req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
			defer fasthttp.ReleaseRequest(req)
			defer fasthttp.ReleaseResponse(resp)
			req.SetRequestURI("http://" + addr + "/")
			req.SetConnectionClose()
			sent := time.Now().Add(-2 * time.Second)
			req.Header.Set("X-Request-Start", fmt.Sprintf("t=%d", sent.UnixMicro()))
			client := &fasthttp.Client{Dial: func(addr string) (net.Conn, error) { return net.Dial("tcp", addr) }}
			require.NoError(t, client.DoTimeout(req, resp, hangupWait))
			s := receive(t, got, "the handler's report")

			require.Less(t, s.left, 8500*time.Millisecond, "the header's two seconds count against the budget")
			require.Equal(t, watchPending, s.watch, "the handler returned before the watch was due")
			require.Equal(t, s.admitted+int64(HangupDelay), s.watchAt)
		})
	}
}

// A client that hangs up after its request's deadline, before the
// deadline's timer has run (a loaded or stalled process), finds the request
// timed out: late is late, whichever goroutine runs first. Racing mode's
// hang-up callback settled the call as gone instead (cause ErrClientGone,
// counted as a hang-up, not a timeout). The handler stops its call's timer
// to stand for the late one. Cooperative mode: see
// TestHangup_after_the_deadline_is_a_timeout.
func TestHangup_after_the_deadline_before_its_timer_is_a_timeout(t *testing.T) {
	t.Parallel()
	stats := new(Stats)
	watched := make(chan struct{})
	causes := make(chan error, 1)
	addr := serveTCP(t, New(func(ctx *fasthttp.RequestCtx) {
		cx := Context(ctx)
		c := lookup(ctx)
		if !waitFor(func() bool { return c.watch.Load()&watchMask == watchRegistered }) {
			causes <- errors.New("the watch never started")
			return
		}
		c.later.Stop() // the deadline's timer, armed when the watch started, runs late
		if !waitFor(func() bool { return now() > c.deadline.Load() }) {
			causes <- errors.New("the deadline never passed")
			return
		}
		close(watched)
		select {
		case <-cx.Done():
			causes <- context.Cause(cx)
		case <-time.After(hangupWait):
			causes <- nil
		}
	}, Config{Timeout: actInTime, Stats: stats})) // the handler must run

	conn, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	_, err = conn.Write([]byte("GET / HTTP/1.1\r\nHost: test\r\n\r\n"))
	require.NoError(t, err)
	select {
	case <-watched:
	case err := <-causes:
		t.Fatal(err)
	case <-time.After(2 * hangupWait):
		t.Fatal("the handler did not reach its deadline")
	}
	require.NoError(t, conn.Close())

	require.ErrorIs(t, receive(t, causes, "the end of the handler's context"), ErrTimeout)
	got := stats.Snapshot() // settle counts before it cancels the context
	assert.EqualValues(t, 1, got.Timeouts)
	assert.Zero(t, got.ClientGone)
}

// waitFor polls cond every millisecond until it holds, for at most
// hangupWait, and reports whether it did.
func waitFor(cond func() bool) bool {
	for end := time.Now().Add(hangupWait); time.Now().Before(end); time.Sleep(time.Millisecond) {
		if cond() {
			return true
		}
	}
	return false
}

// connFD returns the descriptor of the socket under conn: the number may be
// stale as soon as it is returned.
func connFD(conn net.Conn) (int, bool) {
	sock, _, ok := socketOf(conn)
	if !ok {
		return 0, false
	}
	rc, err := sock.SyscallConn()
	if err != nil {
		return 0, false
	}
	fd := -1
	if err := rc.Control(func(d uintptr) { fd = int(d) }); err != nil || fd < 0 {
		return 0, false
	}
	return fd, true
}

// A client that hangs up before the deadline of a cooperative request whose
// hang-up callback then stalls past the deadline (a loaded or stalled
// process) meets the housekeeper's expiry of the request's context: one of
// the two decides the request, and its context ends with that decision's
// cause: not OnHangup run and a hang-up counted while the context says
// ErrTimeout. Not parallel: it sets the process's test hook.
func TestCooperative_expiry_and_a_stalled_hang_up_agree(t *testing.T) {
	type report struct {
		callback string
		cause    error
	}
	stats := new(Stats)
	reports := make(chan report, 2)
	var mine atomic.Pointer[call]
	watched, release := make(chan struct{}), make(chan struct{})
	addr := serveTCP(t, New(func(ctx *fasthttp.RequestCtx) {
		Context(ctx) // watched by the housekeeper
		c := lookup(ctx)
		mine.Store(c)
		if waitFor(func() bool { return c.watch.Load()&watchMask == watchRegistered }) {
			close(watched)
		}
		<-release // late, ignoring its context
	}, Config{
		Timeout: actInTime, Mode: Cooperative, Stats: stats, // the handler must run
		OnTimeout: func(ctx *fasthttp.RequestCtx, _ *fasthttp.Response) {
			reports <- report{"OnTimeout", context.Cause(Context(ctx))}
		},
		OnHangup: func(ctx *fasthttp.RequestCtx, _ time.Duration) {
			reports <- report{"OnHangup", context.Cause(Context(ctx))}
		},
	}))

	type stall struct{ inTime, expired bool }
	stalled := make(chan stall, 1)
	var once atomic.Bool
	hook := func(c *call, outcome uint64, at int64) {
		if c != mine.Load() || outcome != callGone || !once.CompareAndSwap(false, true) {
			return // another request's, or not the hang-up
		}
		s := stall{inTime: at < c.deadline.Load()}
		select {
		case <-c.bridge.Load().Done(): // the housekeeper expires it at the deadline
			s.expired = true
		case <-time.After(hangupWait):
		}
		stalled <- s
	}
	testHookSettling.Store(&hook)
	defer testHookSettling.Store(nil)

	conn, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	_, err = conn.Write([]byte("GET / HTTP/1.1\r\nHost: test\r\n\r\n"))
	require.NoError(t, err)
	receive(t, watched, "the watch of the client")
	require.NoError(t, conn.Close())
	s := receive(t, stalled, "the hang-up callback")
	if !s.inTime {
		close(release)
		t.Skip("the hang-up came after the deadline: nothing to race")
	}
	require.True(t, s.expired, "the housekeeper ended the context at the deadline")
	// The hang-up callback settles now, if it can: wait for whoever
	// decided to count it before the handler returns.
	require.Eventually(t, func() bool {
		got := stats.Snapshot()
		return got.Timeouts+got.ClientGone == 1
	}, hangupWait, time.Millisecond)
	close(release)

	r := receive(t, reports, "the callback")
	assert.Equal(t, report{"OnTimeout", ErrTimeout}, r, "the context ended at the deadline, so the request timed out")
	require.Eventually(t, func() bool { return stats.Snapshot().InFlight == 0 }, hangupWait, time.Millisecond)
	got := stats.Snapshot()
	assert.EqualValues(t, 1, got.Timeouts)
	assert.Zero(t, got.ClientGone)
}

// An inner New's handler that took its context, inside an outer New whose
// client hangs up before the inner deadline, and that hangs, ignoring its
// context: the hang-up ends the inner context (follow), but only the outer
// call is gone; the inner one runs on and is late from its own deadline, as
// it is when the outer call times out: if the housekeeper stopped watching
// the inner context at the hang-up, nothing would time the inner call out,
// and it would hold its admission slot, not late, until it returned.
func TestNested_inner_call_after_the_clients_hang_up_times_out_at_its_deadline(t *testing.T) {
	t.Parallel()
	for _, mode := range []Mode{Racing, Cooperative} {
		t.Run(mode.String(), func(t *testing.T) {
			t.Parallel()
			outerStats, innerStats := new(Stats), new(Stats)
			entered, release := make(chan *call, 1), make(chan struct{})
			inner := New(func(ctx *fasthttp.RequestCtx) {
				Context(ctx) // and ignores it
				entered <- rootCall(ctx)
				<-release
			}, Config{Mode: Cooperative, Timeout: actInTime, Stats: innerStats, AdaptiveConcurrency: true})
			addr := serveTCP(t, New(inner, Config{Mode: mode, Timeout: time.Hour, Stats: outerStats}))
			t.Cleanup(func() { close(release) }) // before serveTCP's shutdown

			conn, err := net.Dial("tcp", addr)
			require.NoError(t, err)
			_, err = conn.Write([]byte("GET / HTTP/1.1\r\nHost: test\r\n\r\n"))
			require.NoError(t, err)
			root := receive(t, entered, "the inner handler")
			require.True(t, waitFor(func() bool { return root.watch.Load()&watchMask == watchRegistered }), "the outer call watches its client")
			require.NoError(t, conn.Close())
			require.Eventually(t, func() bool { return outerStats.Snapshot().ClientGone == 1 }, hangupWait, time.Millisecond)
			require.Eventually(t, func() bool {
				got := innerStats.Snapshot()
				return got.Timeouts == 1 && got.LateRunning == 1
			}, hangupWait, time.Millisecond, "the inner call is late from its deadline: %+v", innerStats.Snapshot())
		})
	}
}
