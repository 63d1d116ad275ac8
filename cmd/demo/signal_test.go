package main

import (
	"bufio"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/valyala/fasthttp"
)

// buildDemo builds the demo into a temporary folder of t.
func buildDemo(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "demo")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	require.NoError(t, err, "go build: %s", out)
	return bin
}

// demoProcess is the demo run as a child process.
type demoProcess struct {
	cmd    *exec.Cmd
	addr   string
	lines  chan string // stderr, line by line; closed at its end
	stderr *syncBuffer // all of it so far
	exited chan struct{}
}

// startProcess runs bin, the demo, on a free port of 127.0.0.1 with env
// added to its environment; the test's cleanup kills it if it still runs.
func startProcess(t *testing.T, bin string, env ...string) *demoProcess {
	t.Helper()
	p := &demoProcess{
		cmd:    exec.Command(bin, "-addr", "127.0.0.1:0"),
		lines:  make(chan string, 64),
		stderr: new(syncBuffer),
		exited: make(chan struct{}),
	}
	p.cmd.Env = append(os.Environ(), env...)
	pipe, err := p.cmd.StderrPipe()
	require.NoError(t, err)
	require.NoError(t, p.cmd.Start())
	go func() {
		defer close(p.exited)
		sc := bufio.NewScanner(pipe)
		for sc.Scan() {
			_, _ = p.stderr.Write([]byte(sc.Text() + "\n"))
			select {
			case p.lines <- sc.Text():
			default: // nobody waits for this one
			}
		}
		close(p.lines)
		_ = p.cmd.Wait()
	}()
	t.Cleanup(func() {
		select {
		case <-p.exited:
		default:
			_ = p.cmd.Process.Kill()
			<-p.exited
		}
	})
	p.waitLine(t, "the start line", "listening on ")
	m := listeningOn.FindStringSubmatch(p.stderr.String())
	require.NotNil(t, m, p.stderr.String())
	p.addr = m[1]
	return p
}

// waitLine waits for a line of stderr containing want.
func (p *demoProcess) waitLine(t *testing.T, what, want string) {
	t.Helper()
	timeout := time.After(eventuallyBound)
	for {
		select {
		case line, ok := <-p.lines:
			if !ok {
				t.Fatalf("the demo exited before %s: %s", what, p.stderr.String())
			}
			if strings.Contains(line, want) {
				return
			}
		case <-timeout:
			t.Fatalf("no %s within %v: %s", what, eventuallyBound, p.stderr.String())
		}
	}
}

// exitCode waits for the demo to exit and returns its exit status.
func (p *demoProcess) exitCode(t *testing.T, bound time.Duration) int {
	t.Helper()
	select {
	case <-p.exited:
	case <-time.After(bound):
		t.Fatalf("the demo did not exit within %v: %s", bound, p.stderr.String())
	}
	return p.cmd.ProcessState.ExitCode()
}

// TestProcess_signals runs the demo as a child process, holds a connection
// open past the shutdown's grace with a blocking handler (racing mode does
// not answer it at shutdown: its deadline is a minute away), and signals
// it.
func TestProcess_signals(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("signals are sent to a child process on Unix only")
	}
	if testing.Short() {
		t.Skip("builds the demo and waits out a shutdown grace")
	}
	t.Parallel()
	bin := buildDemo(t)
	tests := []struct {
		name    string
		signals []syscall.Signal
		code    int
		want    string // in stderr
	}{
		{"one_signal_waits_out_the_grace_and_exits_1", []syscall.Signal{syscall.SIGINT}, 1,
			"shutdown: context deadline exceeded"},
		{"a_second_SIGINT_exits_at_once_with_130", []syscall.Signal{syscall.SIGINT, syscall.SIGINT}, 130,
			"interrupt again: stopping at once, open connections abandoned"},
		{"a_second_SIGTERM_exits_at_once_with_143", []syscall.Signal{syscall.SIGINT, syscall.SIGTERM}, 143,
			"terminated again: stopping at once, open connections abandoned"},
		{"SIGTERM_then_SIGINT_exits_at_once_with_130", []syscall.Signal{syscall.SIGTERM, syscall.SIGINT}, 130,
			"interrupt again: stopping at once, open connections abandoned"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			p := startProcess(t, bin, "REQUEST_TIMEOUT=60")
			conn, err := net.Dial("tcp", p.addr)
			require.NoError(t, err)
			defer conn.Close()
			_, err = conn.Write([]byte("GET /sleep/3600 HTTP/1.1\r\nHost: demo\r\n\r\n"))
			require.NoError(t, err)
			eventually(t, "the request runs", func() bool {
				_, body, err := fasthttp.GetTimeout(nil, "http://"+p.addr+"/debug/vars", time.Second)
				return err == nil && strings.Contains(string(body), `"in_flight":1,`)
			})

			require.NoError(t, p.cmd.Process.Signal(tc.signals[0]))
			p.waitLine(t, "the shutdown line", "shutting down, waiting up to")
			for _, sig := range tc.signals[1:] {
				require.NoError(t, p.cmd.Process.Signal(sig))
			}
			// Beyond the grace of 10 s: a demo that ignored the second
			// signal exits with 1 after it.
			code := p.exitCode(t, shutdownGrace+eventuallyBound)
			require.Equal(t, tc.code, code, p.stderr.String())
			require.Contains(t, p.stderr.String(), tc.want)
		})
	}
}
