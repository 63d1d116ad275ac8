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

// gatewayProcess is the gateway run as a child process.
type gatewayProcess struct {
	cmd    *exec.Cmd
	addr   string
	lines  chan string // stderr, line by line; closed at its end
	stderr *syncBuffer // all of it so far
	exited chan struct{}
}

// startProcess runs bin, the gateway, on a free port of 127.0.0.1 with
// args and env added to its environment; the test's cleanup kills it if it
// still runs.
func startProcess(t *testing.T, bin string, env []string, args ...string) *gatewayProcess {
	t.Helper()
	p := &gatewayProcess{
		cmd:    exec.Command(bin, append([]string{"-addr", "127.0.0.1:0"}, args...)...),
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
func (p *gatewayProcess) waitLine(t *testing.T, what, want string) {
	t.Helper()
	timeout := time.After(waitTimeout)
	for {
		select {
		case line, ok := <-p.lines:
			if !ok {
				t.Fatalf("the gateway exited before %s: %s", what, p.stderr.String())
			}
			if strings.Contains(line, want) {
				return
			}
		case <-timeout:
			t.Fatalf("no %s within %v: %s", what, waitTimeout, p.stderr.String())
		}
	}
}

// exitCode waits for the gateway to exit and returns its exit status.
func (p *gatewayProcess) exitCode(t *testing.T, bound time.Duration) int {
	t.Helper()
	select {
	case <-p.exited:
	case <-time.After(bound):
		t.Fatalf("the gateway did not exit within %v: %s", bound, p.stderr.String())
	}
	return p.cmd.ProcessState.ExitCode()
}

// TestProcess_signals runs the gateway as a child process, holds a
// connection open past the shutdown's grace with a request its upstream
// does not answer (its deadline is a minute away), and signals it.
func TestProcess_signals(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("signals are sent to a child process on Unix only")
	}
	if testing.Short() {
		t.Skip("builds the gateway and waits out a shutdown grace")
	}
	t.Parallel()
	bin := build(t, ".", filepath.Join(t.TempDir(), "gateway"))
	tests := []struct {
		name    string
		signals []syscall.Signal
		code    int
		want    string // in stderr
	}{
		{"one_signal_waits_out_the_grace_and_exits_1", []syscall.Signal{syscall.SIGINT}, 1,
			"context deadline exceeded"},
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
			arrived, release := make(chan struct{}, 1), make(chan struct{})
			upstream := startUpstream(t, func(ctx *fasthttp.RequestCtx) {
				arrived <- struct{}{}
				<-release
			})
			t.Cleanup(func() { close(release) }) // runs before the upstream's shutdown
			p := startProcess(t, bin, []string{"REQUEST_TIMEOUT=60"}, "-upstream", upstream)
			conn, err := net.Dial("tcp", p.addr)
			require.NoError(t, err)
			defer conn.Close()
			_, err = conn.Write([]byte("GET /hang HTTP/1.1\r\nHost: gateway\r\n\r\n"))
			require.NoError(t, err)
			select {
			case <-arrived:
			case <-time.After(waitTimeout):
				t.Fatalf("the request did not reach the upstream within %v: %s", waitTimeout, p.stderr.String())
			}

			require.NoError(t, p.cmd.Process.Signal(tc.signals[0]))
			p.waitLine(t, "the shutdown line", "shutting down, waiting up to 10s for open connections")
			for _, sig := range tc.signals[1:] {
				require.NoError(t, p.cmd.Process.Signal(sig))
			}
			// Beyond the grace of 10 s: a gateway that ignored the second
			// signal exits with 1 after it.
			code := p.exitCode(t, shutdownGrace+waitTimeout)
			require.Equal(t, tc.code, code, p.stderr.String())
			require.Contains(t, p.stderr.String(), tc.want)
		})
	}
}
