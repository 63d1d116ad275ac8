// Package proctest runs a server command of this repository as a child
// process of a test, on a free port of 127.0.0.1, and reads its standard
// error as it comes: for what only a whole process shows, its answer to
// signals and its exit status. The gateway's tests use it, and the demo's
// through its replace directive.
package proctest

import (
	"bufio"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// Options says how Start runs a command.
type Options struct {
	// Name names the command in failure messages ("the gateway").
	Name string
	// Env is added to the command's environment.
	Env []string
	// Args follow -addr 127.0.0.1:0 on its command line.
	Args []string
	// Bound is how long a wait for a line of its standard error lasts, the
	// start line's included: it only turns a hang into a failure.
	Bound time.Duration
}

// Process is a command started by Start.
type Process struct {
	// Addr is the address the command says it listens on.
	Addr string

	opts   Options
	cmd    *exec.Cmd
	lines  chan string // stderr, line by line; closed at its end
	exited chan struct{}

	mu     sync.Mutex
	stderr strings.Builder // all of it so far, under mu
}

// listeningOn finds the address in a command's start line,
// "listening on 127.0.0.1:port, ...".
var listeningOn = regexp.MustCompile(`listening on (127\.0\.0\.1:\d+),`)

// Start runs bin with -addr 127.0.0.1:0 and opts.Args, opts.Env added to
// its environment, and waits for its start line; the test's cleanup kills
// the process if it still runs.
func Start(t testing.TB, bin string, opts Options) *Process {
	t.Helper()
	p := &Process{
		opts:   opts,
		cmd:    exec.Command(bin, append([]string{"-addr", "127.0.0.1:0"}, opts.Args...)...),
		lines:  make(chan string, 64),
		exited: make(chan struct{}),
	}
	p.cmd.Env = append(os.Environ(), opts.Env...)
	pipe, err := p.cmd.StderrPipe()
	require.NoError(t, err)
	require.NoError(t, p.cmd.Start())
	go func() {
		defer close(p.exited)
		sc := bufio.NewScanner(pipe)
		for sc.Scan() {
			p.mu.Lock()
			p.stderr.WriteString(sc.Text() + "\n")
			p.mu.Unlock()
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
	p.WaitLine(t, "the start line", "listening on ")
	m := listeningOn.FindStringSubmatch(p.Stderr())
	require.NotNil(t, m, p.Stderr())
	p.Addr = m[1]
	return p
}

// Signal sends sig to the process.
func (p *Process) Signal(sig os.Signal) error { return p.cmd.Process.Signal(sig) }

// Stderr returns the process's standard error so far.
func (p *Process) Stderr() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stderr.String()
}

// WaitLine waits, for Options.Bound at the most, for a line of standard
// error containing want; what names that line in the failure message.
func (p *Process) WaitLine(t testing.TB, what, want string) {
	t.Helper()
	timeout := time.After(p.opts.Bound)
	for {
		select {
		case line, ok := <-p.lines:
			if !ok {
				t.Fatalf("%s exited before %s: %s", p.opts.Name, what, p.Stderr())
			}
			if strings.Contains(line, want) {
				return
			}
		case <-timeout:
			t.Fatalf("no %s within %v: %s", what, p.opts.Bound, p.Stderr())
		}
	}
}

// ExitCode waits for the process to exit, for bound at the most, and
// returns its exit status.
func (p *Process) ExitCode(t testing.TB, bound time.Duration) int {
	t.Helper()
	select {
	case <-p.exited:
	case <-time.After(bound):
		t.Fatalf("%s did not exit within %v: %s", p.opts.Name, bound, p.Stderr())
	}
	return p.cmd.ProcessState.ExitCode()
}

// Signals is the test of a server command's answer to SIGINT and SIGTERM
// while a connection is open: the first starts a graceful shutdown, which
// waits out its grace and exits with 1; a second one, either signal, stops
// the process at once with 128 plus its number, 130 or 143.
type Signals struct {
	// Start starts the command with Start and holds a connection open on
	// it, with a request the command does not answer within its grace.
	Start func(t *testing.T) *Process
	// Grace is the command's shutdown grace: its line at the first signal
	// is "shutting down, waiting up to <Grace> for open connections".
	Grace time.Duration
	// GraceOver is in its standard error once the grace is over with the
	// connection still open.
	GraceOver string
}

// Run runs the test's cases as parallel subtests of t.
func (s Signals) Run(t *testing.T) {
	tests := []struct {
		name    string
		signals []syscall.Signal
		code    int
		want    string // in stderr
	}{
		{"one_signal_waits_out_the_grace_and_exits_1", []syscall.Signal{syscall.SIGINT}, 1,
			s.GraceOver},
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
			p := s.Start(t)
			require.NoError(t, p.Signal(tc.signals[0]))
			p.WaitLine(t, "the shutdown line", "shutting down, waiting up to "+s.Grace.String()+" for open connections")
			for _, sig := range tc.signals[1:] {
				require.NoError(t, p.Signal(sig))
			}
			// Beyond the grace: a command that ignored the second signal
			// exits with 1 after it.
			code := p.ExitCode(t, s.Grace+p.opts.Bound)
			require.Equal(t, tc.code, code, p.Stderr())
			require.Contains(t, p.Stderr(), tc.want)
		})
	}
}
