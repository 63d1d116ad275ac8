package fasttimeout

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"log"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/valyala/fasthttp"
)

// emfileChildEnv makes the test binary run as the child of
// TestRetryListener_descriptor_exhaustion: a server with few descriptors
// to spare, with RetryListener ("wrapped") or without ("bare").
const emfileChildEnv = "FASTTIMEOUT_EMFILE_CHILD"

// emfileHeadroom is how many descriptors the child's limit leaves for
// connections: the one after them fails with EMFILE.
const emfileHeadroom = 8

// A flood of connections exhausts the server's descriptors, and each
// accept fails with EMFILE until some close. Without RetryListener,
// fasthttp's Serve takes that for a permanent error and returns; with it,
// the server waits and serves again once descriptors are free. The server
// runs in a child process whose RLIMIT_NOFILE leaves emfileHeadroom
// descriptors, so that nothing else in the test binary runs short.
func TestRetryListener_descriptor_exhaustion(t *testing.T) {
	t.Run("with_RetryListener_the_server_serves_again_once_descriptors_are_free", func(t *testing.T) {
		t.Parallel()
		child := startEMFILEChild(t, "wrapped")
		conns := floodEMFILEChild(t, child)
		line := child.waitLine(t, "too many open files")
		require.True(t, strings.HasPrefix(line, "fasttimeout: accept: "), "RetryListener's log line: %q", line)

		// The flood ends: the clients leave and the held handlers return,
		// which closes their connections.
		for _, c := range conns {
			require.NoError(t, c.Close())
		}
		child.send(t, "release")
		// The request waits in the backlog until an accept succeeds.
		c, err := net.DialTimeout("tcp", child.addr, listenerBound)
		require.NoError(t, err)
		defer c.Close()
		require.NoError(t, c.SetDeadline(time.Now().Add(listenerBound)))
		_, err = c.Write([]byte("GET / HTTP/1.1\r\nHost: emfile.test\r\n\r\n"))
		require.NoError(t, err)
		var resp fasthttp.Response
		require.NoError(t, resp.Read(bufio.NewReader(c)), "no answer")
		require.Equal(t, fasthttp.StatusOK, resp.StatusCode())
		require.Equal(t, "served", string(resp.Body()))
		require.NotContains(t, child.out.String(), "serve returned")
	})

	t.Run("without_it_Serve_returns_EMFILE", func(t *testing.T) {
		t.Parallel()
		child := startEMFILEChild(t, "bare")
		floodEMFILEChild(t, child)
		line := child.waitLine(t, "serve returned")
		require.Contains(t, line, "serve returned EMFILE=true: ")
		require.Contains(t, line, "too many open files")
	})
}

// emfileChild is the child process of TestRetryListener_descriptor_exhaustion.
type emfileChild struct {
	addr  string
	out   *syncLines // its standard output and error
	stdin *os.File
}

// startEMFILEChild starts the child in mode and waits for its address; the
// test's cleanup kills it.
func startEMFILEChild(t *testing.T, mode string) *emfileChild {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestRetryListener_child$", "-test.timeout=5m")
	cmd.Env = append(os.Environ(), emfileChildEnv+"="+mode)
	out := new(syncLines)
	cmd.Stdout, cmd.Stderr = out, out
	stdinR, stdinW, err := os.Pipe()
	require.NoError(t, err)
	cmd.Stdin = stdinR
	cmd.WaitDelay = listenerBound // Wait returns even if the output stays open
	require.NoError(t, cmd.Start())
	require.NoError(t, stdinR.Close())
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		_ = stdinW.Close()
		if t.Failed() {
			t.Logf("child's output:\n%s", out)
		}
	})
	child := &emfileChild{out: out, stdin: stdinW}
	line := child.waitLine(t, "addr ")
	child.addr = strings.Fields(line)[1]
	return child
}

// floodEMFILEChild opens more connections than the child has descriptors
// left, each with a request that the child holds, and returns them.
func floodEMFILEChild(t *testing.T, child *emfileChild) []net.Conn {
	t.Helper()
	conns := make([]net.Conn, 0, 2*emfileHeadroom)
	for range cap(conns) {
		// Connections the child cannot accept wait in its backlog: the
		// kernel completes the handshake and takes the request.
		c, err := net.DialTimeout("tcp", child.addr, listenerBound)
		require.NoError(t, err)
		t.Cleanup(func() { _ = c.Close() })
		_, err = c.Write([]byte("GET /hold HTTP/1.1\r\nHost: emfile.test\r\n\r\n"))
		require.NoError(t, err)
		conns = append(conns, c)
	}
	return conns
}

// waitLine waits, bounded, for a line of the child's containing s.
func (c *emfileChild) waitLine(t *testing.T, s string) string {
	t.Helper()
	var line string
	require.Eventually(t, func() bool {
		var ok bool
		line, ok = c.out.find(s)
		return ok
	}, listenerBound, 5*time.Millisecond, "no line with %q from the child; its output:\n%s", s, c.out)
	return line
}

// send writes a line to the child's standard input.
func (c *emfileChild) send(t *testing.T, line string) {
	t.Helper()
	_, err := fmt.Fprintln(c.stdin, line)
	require.NoError(t, err)
}

// syncLines collects a process's output, safe for concurrent use.
type syncLines struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (s *syncLines) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.Write(p)
}

func (s *syncLines) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.String()
}

// find returns the first complete line containing sub.
func (s *syncLines) find(sub string) (string, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	text := s.buf.String()
	if i := strings.LastIndexByte(text, '\n'); i >= 0 {
		text = text[:i]
	} else {
		return "", false
	}
	for line := range strings.SplitSeq(text, "\n") {
		if strings.Contains(line, sub) {
			return line, true
		}
	}
	return "", false
}

// TestRetryListener_child is the child process of
// TestRetryListener_descriptor_exhaustion; run by itself, it skips.
func TestRetryListener_child(t *testing.T) {
	mode := os.Getenv(emfileChildEnv)
	if mode == "" {
		t.Skip("the child process of TestRetryListener_descriptor_exhaustion")
	}
	runEMFILEChild(mode)
}

// runEMFILEChild serves on 127.0.0.1 with a descriptor limit that leaves
// emfileHeadroom descriptors, and prints its address. GET /hold waits until
// a line "release" comes on standard input; any other request is answered
// "served" at once. In mode "bare" the listener is not wrapped; when Serve
// returns, a line says with what. The child exits when its standard input
// closes (or is killed by the parent).
func runEMFILEChild(mode string) {
	out := log.New(os.Stdout, "", 0) // every line, the logs' included, goes through it
	fail := func(err error) {
		out.Printf("child failed: %v", err)
		os.Exit(2)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fail(err)
	}
	var served net.Listener = ln
	if mode == "wrapped" {
		served = RetryListener(ln, out)
	}
	release := make(chan struct{})
	server := &fasthttp.Server{
		Handler: func(ctx *fasthttp.RequestCtx) {
			if string(ctx.Path()) == "/hold" {
				<-release
			}
			ctx.SetBodyString("served")
		},
		Logger: out,
	}

	// The limit is on descriptor numbers, and a new descriptor takes the
	// lowest free number: the limit is where emfileHeadroom numbers are
	// free below it. Descriptors open above it (inherited ones, say) stay
	// usable.
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		fail(err)
	}
	open := make(map[int]bool, len(fds))
	for _, fd := range fds {
		var n int
		if _, err := fmt.Sscan(fd.Name(), &n); err == nil {
			open[n] = true
		}
	}
	limit := 0
	for free := 0; free < emfileHeadroom; limit++ {
		if !open[limit] {
			free++
		}
	}
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		fail(err)
	}
	lim.Cur = uint64(limit)
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		fail(err)
	}

	go func() {
		err := server.Serve(served)
		out.Printf("serve returned EMFILE=%t: %v", errors.Is(err, syscall.EMFILE), err)
	}()
	out.Printf("addr %s RLIMIT_NOFILE %d", ln.Addr(), lim.Cur)
	lines := bufio.NewScanner(os.Stdin)
	for lines.Scan() {
		if lines.Text() == "release" {
			close(release)
		}
	}
	os.Exit(0)
}

// On Linux, accept returns the network error of a connection that failed
// in the listen queue; the listener is fine, and the next accept is served
// at once. ENOSR and EPERM (firewall rules forbid the connection), also in
// accept(2), are waited out.
func TestRetryListener_retries_Linux_s_accept_errors(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		errno  syscall.Errno
		atOnce bool
	}{
		{syscall.ENETDOWN, true}, {syscall.EPROTO, true}, {syscall.ENOPROTOOPT, true}, {syscall.EHOSTDOWN, true},
		{syscall.ENONET, true}, {syscall.EHOSTUNREACH, true}, {syscall.EOPNOTSUPP, true}, {syscall.ENETUNREACH, true},
		{syscall.ENOSR, false}, {syscall.EPERM, false},
	} {
		t.Run(tc.errno.Error(), func(t *testing.T) {
			t.Parallel()
			client, server := net.Pipe()
			t.Cleanup(func() { _ = client.Close(); _ = server.Close() })
			inner := newFakeListener([]error{acceptErr(tc.errno)}, server, nil)
			logger := new(lineLogger)
			conn, err := newQuickRetryListener(inner, logger).Accept()
			require.NoError(t, err)
			require.Same(t, server, conn)
			require.EqualValues(t, 2, inner.calls.Load(), "one retry")
			when := "in 1ns"
			if tc.atOnce {
				when = "at once"
			}
			require.Equal(t, []string{fmt.Sprintf("fasttimeout: accept: %v; retrying %s", acceptErr(tc.errno), when)}, logger.logged())
		})
	}
}
