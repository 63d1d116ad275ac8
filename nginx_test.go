//go:build linux

package fasttimeout

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/valyala/fasthttp"
)

// A real nginx (nginx_helper_test.go) in front of a server wrapped by New:
// what a user sees when the load balancer gives up or its client leaves.

// contextEnd is how and when a request's context ended, as its handler saw
// it.
type contextEnd struct {
	at    time.Time
	err   error
	cause error
}

// honouring is a handler that says when it starts and how its context
// ended, then returns: it honours its context.
type honouring struct {
	started chan struct{}
	ends    chan contextEnd
}

func newHonouring() *honouring {
	return &honouring{started: make(chan struct{}, 16), ends: make(chan contextEnd, 16)}
}

func (h *honouring) handle(ctx *fasthttp.RequestCtx) {
	c := Context(ctx)
	h.started <- struct{}{}
	select {
	case <-c.Done():
	case <-time.After(hangupWait):
	}
	h.ends <- contextEnd{time.Now(), c.Err(), context.Cause(c)}
}

// waitStart waits for the handler to start; a request that does not
// reach it (nginx answered 502 say) fails the test instead of hanging it.
func (h *honouring) waitStart(t *testing.T) {
	t.Helper()
	select {
	case <-h.started:
	case <-time.After(hangupWait):
		t.Fatal("the request did not reach the handler")
	}
}

func (h *honouring) waitEnd(t *testing.T) contextEnd {
	t.Helper()
	select {
	case e := <-h.ends:
		return e
	case <-time.After(2 * hangupWait):
		t.Fatal("the handler's context did not end")
		return contextEnd{}
	}
}

// nginxErrors returns the lines of nginx's error log at level error or
// worse.
func nginxErrors(t testing.TB, n *nginxProc) []string {
	t.Helper()
	var errs []string
	for _, line := range strings.Split(n.errorLog(t), "\n") {
		if regexp.MustCompile(`\[(error|crit|alert|emerg)\]`).MatchString(line) {
			errs = append(errs, line)
		}
	}
	return errs
}

// (1) The client aborts through nginx, which closes its upstream
// connection: the handler's context ends with ErrClientGone, in both modes.
func TestNginx_client_abort_cancels_the_request_context(t *testing.T) {
	for _, mode := range []Mode{Racing, Cooperative} {
		t.Run(mode.String(), func(t *testing.T) {
			t.Parallel()
			nginxBinary(t) // skip before starting anything
			var stats Stats
			h := newHonouring()
			n := startNginx(t, nginxOptions{upstream: serveTCP(t, New(h.handle, Config{Timeout: time.Minute, Mode: mode, Stats: &stats}))})
			// Half the clients give up at once, before the watch starts
			// (HangupDelay), half once it has started.
			const rounds = 20
			var early, later []time.Duration
			for i := range rounds {
				c, err := net.Dial("tcp", n.addr)
				require.NoError(t, err)
				t.Cleanup(func() { _ = c.Close() }) // if the test fails before its close
				_, err = io.WriteString(c, "GET /slow HTTP/1.1\r\nHost: test\r\n\r\n")
				require.NoError(t, err)
				h.waitStart(t)
				if i%2 == 1 {
					time.Sleep(4 * HangupDelay) // the client's patience, not synchronisation
				}
				abort := time.Now()
				require.NoError(t, c.Close())
				e := h.waitEnd(t)
				require.ErrorIs(t, e.err, context.Canceled)
				require.ErrorIs(t, e.cause, ErrClientGone)
				if i%2 == 1 {
					later = append(later, e.at.Sub(abort))
				} else {
					early = append(early, e.at.Sub(abort))
				}
			}
			waitLog(t, n, `client prematurely closed connection`)
			slices.Sort(early)
			slices.Sort(later)
			t.Logf("%v: client abort through nginx -> context done: at once p50 %v, max %v; after %v p50 %v, max %v (%d each)",
				mode, early[len(early)/2], early[len(early)-1], 4*HangupDelay, later[len(later)/2], later[len(later)-1], rounds/2)
			assert.Eventually(t, func() bool { return stats.Snapshot().InFlight == 0 }, hangupWait, time.Millisecond)
			got := stats.Snapshot()
			assert.EqualValues(t, rounds, got.ClientGone)
			assert.Zero(t, got.Timeouts)
		})
	}
}

// (2) nginx's proxy_read_timeout is shorter than the application's timeout:
// nginx answers 504 itself and closes its upstream connection, and the
// handler's context ends then, not 60 s later.
func TestNginx_proxy_read_timeout_shorter_than_the_apps_ends_the_context(t *testing.T) {
	for _, mode := range []Mode{Racing, Cooperative} {
		t.Run(mode.String(), func(t *testing.T) {
			t.Parallel()
			nginxBinary(t) // skip before starting anything
			const readTimeout = 300 * time.Millisecond
			h := newHonouring()
			n := startNginx(t, nginxOptions{
				upstream:    serveTCP(t, New(h.handle, Config{Timeout: time.Minute, Mode: mode})),
				readTimeout: readTimeout, keepalive: 4,
			})
			tr := &http.Transport{}
			defer tr.CloseIdleConnections()
			resp, err := (&http.Client{Transport: tr, Timeout: 2 * hangupWait}).Get("http://" + n.addr + "/slow")
			require.NoError(t, err)
			answered := time.Now()
			_, _ = io.Copy(io.Discard, resp.Body)
			require.NoError(t, resp.Body.Close())
			require.Equal(t, http.StatusGatewayTimeout, resp.StatusCode, "nginx's own 504")
			e := h.waitEnd(t)
			require.ErrorIs(t, e.cause, ErrClientGone)
			waitLog(t, n, `upstream timed out`)
			t.Logf("%v: proxy_read_timeout %v; the handler's context ended %v after the client got nginx's 504",
				mode, readTimeout, e.at.Sub(answered))
		})
	}
}

// (3) A mixed burst through nginx's keep-alive upstream pool, with requests
// slow enough to be watched: connections are reused, no upstream error in
// nginx's log, and no request taken for gone.
func TestNginx_keep_alive_burst_has_no_false_hang_up(t *testing.T) {
	for _, mode := range []Mode{Racing, Cooperative} {
		t.Run(mode.String(), func(t *testing.T) {
			t.Parallel()
			nginxBinary(t) // skip before starting anything
			var stats Stats
			var connsMu sync.Mutex
			conns := map[uint64]bool{} // the upstream connections nginx used
			app := New(func(ctx *fasthttp.RequestCtx) {
				connsMu.Lock()
				conns[ctx.ConnID()] = true
				connsMu.Unlock()
				c := Context(ctx)
				switch string(ctx.Path()) {
				case "/slow":
					select {
					case <-c.Done():
						ctx.Error(fmt.Sprint(context.Cause(c)), fasthttp.StatusServiceUnavailable)
						return
					case <-time.After(3 * HangupDelay): // past the start of the watch
					}
				case "/post":
					if len(ctx.PostBody()) != 4096 {
						ctx.Error("short body", fasthttp.StatusBadRequest)
						return
					}
				}
				ctx.SetBodyString(strings.Repeat("x", int(ctx.ConnRequestNum()%3)*1000))
			}, Config{Timeout: time.Minute, Mode: mode, Stats: &stats})
			n := startNginx(t, nginxOptions{upstream: serveTCP(t, app), keepalive: 8, readTimeout: 30 * time.Second})

			const workers, perWorker = 16, 20
			mixedBurst(t, n, workers, perWorker)
			assert.Empty(t, nginxErrors(t, n), "nginx's error log")
			got := stats.Snapshot()
			assert.Zero(t, got.ClientGone, "requests taken for gone")
			assert.EqualValues(t, workers*perWorker, got.Requests)
			connsMu.Lock()
			defer connsMu.Unlock()
			// Connections reused, so each was watched again after a
			// request's watch ended.
			assert.Less(t, len(conns), workers*perWorker/2, "nginx's keep-alive pool was not used")
		})
	}
}

// (4) The harness itself: a port chosen free that another process listens
// on by the time nginx starts (freePort's race, on a machine shared with
// other tests). nginx retries its bind() for 2.5 s, then exits; meanwhile
// a connection to the port reaches the other process, which must not be
// taken for nginx.
func TestStartNginx_retries_a_port_another_process_listens_on(t *testing.T) {
	t.Parallel()
	nginxBinary(t) // skip before starting anything
	squatter, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer squatter.Close()
	taken := squatter.Addr().(*net.TCPAddr).Port
	tried := 0
	port := func() (int, error) {
		tried++
		if tried == 1 {
			return taken, nil
		}
		return freePort()
	}
	upstream := serveTCP(t, func(ctx *fasthttp.RequestCtx) { ctx.SetBodyString("from the app") })
	n := startNginxOn(t, nginxOptions{upstream: upstream}, port)
	require.NotEqual(t, squatter.Addr().String(), n.addr, "the other process's port taken for nginx's")

	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr, Timeout: 2 * hangupWait}).Get("http://" + n.addr + "/")
	require.NoError(t, err)
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, resp.Body.Close())
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Equal(t, "from the app", string(body))
	require.Equal(t, 2, tried, "nginx started on the second port")
}

// nginxOrphanEnv makes TestStartNginx_nginx_ends_with_its_test_process the
// child that starts nginx and dies.
const nginxOrphanEnv = "FASTTIMEOUT_NGINX_ORPHAN_CHILD"

// (5) The harness itself: a test process that dies without running its
// cleanups (go test's -timeout panic, a crash) takes its nginx with it,
// instead of leaving it running, on its port, for good.
func TestStartNginx_nginx_ends_with_its_test_process(t *testing.T) {
	if os.Getenv(nginxOrphanEnv) != "" {
		n := startNginx(t, nginxOptions{upstream: "127.0.0.1:1"})
		pid, err := os.ReadFile(filepath.Join(n.dir, "nginx.pid"))
		require.NoError(t, err)
		fmt.Printf("nginx pid %s\n", strings.TrimSpace(string(pid)))
		os.Exit(3) // as the timeout's panic does: no cleanup runs
	}
	t.Parallel()
	nginxBinary(t)     // skip before starting anything
	tmp := t.TempDir() // the child's t.TempDir, which it leaves behind
	cmd := exec.Command(os.Args[0], "-test.run=^"+t.Name()+"$", "-test.count=1")
	cmd.Env = append(os.Environ(), nginxOrphanEnv+"=1", "TMPDIR="+tmp)
	out, _ := cmd.CombinedOutput() // exit status 3
	m := regexp.MustCompile(`nginx pid (\d+)`).FindSubmatch(out)
	require.NotNil(t, m, "the child's output:\n%s", out)
	pid, err := strconv.Atoi(string(m[1]))
	require.NoError(t, err)
	// Dead once gone or a zombie (init reaps orphans when it will).
	alive := func() bool {
		stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
		if err != nil {
			return false
		}
		_, state, _ := strings.Cut(string(stat), ") ")
		return !strings.HasPrefix(state, "Z")
	}
	t.Cleanup(func() {
		if alive() {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	})
	assert.Eventually(t, func() bool { return !alive() }, hangupWait, 10*time.Millisecond, "nginx outlived its test process")
}
