//go:build linux

package fasttimeout

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/valyala/fasthttp"
)

// These tests put a real nginx between a client and a plain fasthttp server
// whose handler watches its connection with a hangupWatcher: what nginx does
// to its upstream connection when the client leaves or when it gives up is
// what the middleware will see in production.

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

// goneRecorder is a handler that registers its connection and waits, up to
// hangupWait, for the hang-up; each request reports when its callback ran.
type goneRecorder struct {
	w       *hangupWatcher
	started chan time.Time // when the handler registered
	gone    chan time.Time // when the callback ran (zero: it never did)
}

func newGoneRecorder(w *hangupWatcher) *goneRecorder {
	return &goneRecorder{w: w, started: make(chan time.Time, 16), gone: make(chan time.Time, 16)}
}

func (g *goneRecorder) handle(ctx *fasthttp.RequestCtx) {
	done := make(chan struct{})
	var at time.Time
	h, ok := g.w.add(ctx.Conn(), func() { at = time.Now(); close(done) })
	if !ok {
		ctx.Error("not watched", fasthttp.StatusInternalServerError)
		g.started <- time.Time{}
		g.gone <- time.Time{}
		return
	}
	g.started <- time.Now()
	select {
	case <-done:
	case <-time.After(hangupWait):
	}
	g.w.remove(h)
	g.gone <- at // written before close(done), or never
	ctx.SetBodyString("done")
}

func (g *goneRecorder) waitStarted(t testing.TB) time.Time {
	t.Helper()
	select {
	case at := <-g.started:
		require.False(t, at.IsZero(), "connection not watched")
		return at
	case <-time.After(hangupWait):
		t.Fatal("request did not reach the handler")
	}
	return time.Time{}
}

func (g *goneRecorder) waitGone(t testing.TB) time.Time {
	t.Helper()
	select {
	case at := <-g.gone:
		require.False(t, at.IsZero(), "hang-up not reported within %v", hangupWait)
		return at
	case <-time.After(2 * hangupWait):
		t.Fatal("handler did not return")
	}
	return time.Time{}
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

// (a) The client aborts; nginx closes its upstream connection; the handler
// hears of it.
func TestNginxClientAbort(t *testing.T) {
	t.Parallel()
	nginxBinary(t) // skip before starting anything
	var w hangupWatcher
	g := newGoneRecorder(&w)
	n := startNginx(t, nginxOptions{upstream: serveTCP(t, g.handle)})

	const rounds = 20
	delays := make([]time.Duration, 0, rounds)
	for range rounds {
		c, err := net.Dial("tcp", n.addr)
		require.NoError(t, err)
		_, err = io.WriteString(c, "GET /slow HTTP/1.1\r\nHost: test\r\n\r\n")
		require.NoError(t, err)
		g.waitStarted(t)
		abort := time.Now()
		require.NoError(t, c.Close())
		delays = append(delays, g.waitGone(t).Sub(abort))
	}
	waitLog(t, n, `client prematurely closed connection`)
	slices.Sort(delays)
	t.Logf("client abort through nginx -> callback: p50 %v, max %v over %d aborts",
		delays[len(delays)/2], delays[len(delays)-1], rounds)
}

// (b) nginx gives up first (proxy_read_timeout), answers 504 and closes
// its upstream connection; the handler hears of it.
func TestNginxReadTimeout(t *testing.T) {
	t.Parallel()
	nginxBinary(t) // skip before starting anything
	const readTimeout = 300 * time.Millisecond
	var w hangupWatcher
	g := newGoneRecorder(&w)
	n := startNginx(t, nginxOptions{upstream: serveTCP(t, g.handle), readTimeout: readTimeout, keepalive: 4})

	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr, Timeout: 2 * hangupWait}).Get("http://" + n.addr + "/slow")
	require.NoError(t, err)
	answered := time.Now()
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	require.Equal(t, http.StatusGatewayTimeout, resp.StatusCode)
	started := g.waitStarted(t)
	gone := g.waitGone(t)
	waitLog(t, n, `upstream timed out`)
	t.Logf("proxy_read_timeout %v: callback %v after the handler started, %v relative to the client receiving nginx's 504",
		readTimeout, gone.Sub(started), gone.Sub(answered))
}

// (c) A mixed burst through nginx's keep-alive upstream pool: requests that
// end normally are never reported gone, connections are reused (so a
// connection is registered again after a remove), and nginx logs no
// upstream error.
func TestNginxKeepAliveBurst(t *testing.T) {
	t.Parallel()
	nginxBinary(t) // skip before starting anything
	var w hangupWatcher
	var fired, served atomic.Int32
	var connsMu sync.Mutex
	conns := map[uint64]int{}
	app := serveTCP(t, func(ctx *fasthttp.RequestCtx) {
		h, ok := w.add(ctx.Conn(), func() { fired.Add(1) })
		if !ok {
			ctx.Error("not watched", fasthttp.StatusInternalServerError)
			return
		}
		defer w.remove(h)
		switch string(ctx.Path()) {
		case "/slow":
			time.Sleep(5 * time.Millisecond) // work, not synchronisation
		case "/post":
			if len(ctx.PostBody()) != 4096 {
				ctx.Error("short body", fasthttp.StatusBadRequest)
				return
			}
		}
		connsMu.Lock()
		conns[ctx.ConnID()]++
		connsMu.Unlock()
		served.Add(1)
		ctx.SetBodyString(strings.Repeat("x", int(ctx.ConnRequestNum()%3)*1000))
	})
	n := startNginx(t, nginxOptions{upstream: app, keepalive: 8, readTimeout: 30 * time.Second})

	const workers, perWorker = 16, 25
	mixedBurst(t, n, workers, perWorker)
	require.EqualValues(t, workers*perWorker, served.Load())
	connsMu.Lock()
	upstreamConns := len(conns)
	connsMu.Unlock()
	require.Less(t, upstreamConns, workers*perWorker/2, "nginx's keep-alive pool was not used")
	// remove is final: whatever fired did so while its request ran.
	require.Zero(t, fired.Load(), "requests that ended normally were reported gone")

	sc := bufio.NewScanner(strings.NewReader(n.errorLog(t)))
	for sc.Scan() {
		if regexp.MustCompile(`\[(error|crit|alert|emerg)\]`).MatchString(sc.Text()) {
			t.Errorf("nginx: %s", sc.Text())
		}
	}
	t.Logf("%d requests over %d upstream connections, no hang-up reported", served.Load(), upstreamConns)
}
