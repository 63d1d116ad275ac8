package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// signalBound only turns a hang into a failure: a run that ignored the
// second signal exits after its load client's 10 s and its child's 5 s.
const signalBound = 60 * time.Second

// TestProcess_secondSignal runs the load test as a child process, its
// server child stopped (SIGSTOP) in the middle of a storm cell, as one busy
// or stuck would be: closing its input does not end it, and the first
// signal's orderly stop waits for it. A second Ctrl-C (SIGINT), or a second
// SIGTERM (kill, a CI timeout), must end the run at once with 128 plus its
// number and kill the server child, not leave it behind.
func TestProcess_secondSignal(t *testing.T) {
	bin := buildLoadtest(t)
	for _, tc := range []struct {
		sig  syscall.Signal
		code int
	}{
		{syscall.SIGINT, 130},
		{syscall.SIGTERM, 143},
	} {
		t.Run(tc.sig.String(), func(t *testing.T) {
			t.Parallel()
			lt := startStorm(t, bin)
			if err := syscall.Kill(lt.server, syscall.SIGSTOP); err != nil {
				t.Fatal(err)
			}
			if err := lt.cmd.Process.Signal(tc.sig); err != nil {
				t.Fatal(err)
			}
			waitForLine(t, lt.lines, tc.sig.String()+": stopping the run", &lt.stderr)
			if err := lt.cmd.Process.Signal(tc.sig); err != nil {
				t.Fatal(err)
			}
			select {
			case <-lt.exited:
			case <-time.After(signalBound):
				t.Fatalf("the load test did not exit within %v: %s", signalBound, lt.stderr.String())
			}
			if code := lt.cmd.ProcessState.ExitCode(); code != tc.code {
				t.Fatalf("exit status %d, want %d: %s", code, tc.code, lt.stderr.String())
			}
			if want := "loadtest: " + tc.sig.String() + " again: stopping at once, server children killed"; !strings.Contains(lt.stderr.String(), want) {
				t.Errorf("no line %q: %s", want, lt.stderr.String())
			}
			waitFor(t, "the server child to be gone", func() bool { return !running(lt.server) })
		})
	}
}

// TestProcess_killed_hard_leaves_no_server_child kills the load test with
// SIGKILL, which it cannot catch, in the middle of a storm cell, its server
// child stopped (SIGSTOP) as one busy or stuck would be: such a child does
// not read the end of its input, and must not outlive the load test. Nor
// may it share the load test's process group, where a terminal's Ctrl-C
// would reach it too, rather than the load test alone, which stops it in
// order.
func TestProcess_killed_hard_leaves_no_server_child(t *testing.T) {
	lt := startStorm(t, buildLoadtest(t))
	if pgid, err := syscall.Getpgid(lt.server); err != nil || pgid != lt.server {
		t.Errorf("the server child's process group is %d (%v), want its own, %d", pgid, err, lt.server)
	}
	if err := syscall.Kill(lt.server, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	if err := lt.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	// A zombie left to a parent that does not reap (a container's init)
	// has exited too: running, not syscall.Kill(pid, 0), which finds it.
	waitFor(t, "the server child to be gone", func() bool { return !running(lt.server) })
}

// TestCommand_a_stopped_run_reports_no_failure stops a run (its context
// cancelled, as the first signal does) while a cell is under way, its
// server child listening and an hour of load ahead: the cell is
// interrupted, not FAILED, the run writes no report, and the exit status is
// the signal's, not 1, which says a server failed.
//
// Not parallel: the server child is found as this process's only child.
func TestCommand_a_stopped_run_reports_no_failure(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("finds the server child in /proc")
	}
	for _, args := range [][]string{
		{"-scenarios", "throughput", "-variants", "fasthttp-bare", "-conns", "1", "-warmup", "1h", "-duration", "1h"},
		{"-scenarios", "storm", "-variants", "fasthttp-bare", "-storm-conns", "1", "-warmup", "1h", "-duration", "1h"},
		{"-scenarios", "burst", "-variants", "fasttimeout-race", "-burst-shared=false", "-burst-conns", "1", "-burst-requests", "1000"},
		{"-scenarios", "hangup", "-variants", "fasttimeout-race", "-hangup-conns", "1", "-hangup-rounds", "1", "-warmup", "1h", "-duration", "1h"},
	} {
		t.Run(args[1], func(t *testing.T) {
			ctx, cancel := context.WithCancelCause(context.Background())
			code := make(chan int, 1)
			var stdout, stderr lockedBuffer
			go func() { code <- command(ctx, args, &stdout, &stderr) }()
			waitFor(t, "the server child to listen", func() bool {
				server := childOf(os.Getpid())
				return server != 0 && hasSocket(server)
			})
			cancel(interrupted{syscall.SIGINT})
			select {
			case c := <-code:
				if c != 130 {
					t.Errorf("exit status %d, want 130", c)
				}
			case <-time.After(signalBound):
				t.Fatalf("the run did not stop within %v: %s", signalBound, stderr.String())
			}
			// The cell's line: "  storm      fasthttp-bare    1 conns: interrupted".
			cell := regexp.MustCompile(`(?m)^  ` + args[1] + ` +` + args[3] + ` .*: interrupted$`)
			if !cell.MatchString(stderr.String()) || strings.Contains(stderr.String(), "FAILED") || strings.Contains(stderr.String(), "failed") {
				t.Errorf("stderr %q, want the cell interrupted, nothing failed", stderr.String())
			}
			if !strings.HasSuffix(stderr.String(), "loadtest: interrupt: the run stopped before its end, no report\n") {
				t.Errorf("stderr %q, want the stop as its last line", stderr.String())
			}
			if stdout.String() != "" {
				t.Errorf("stdout %q, want no report", stdout.String())
			}
		})
	}
}

// buildLoadtest builds the load test into a temporary directory, skipping
// where the tests that run it cannot.
func buildLoadtest(t *testing.T) string {
	t.Helper()
	if runtime.GOOS != "linux" {
		t.Skip("finds the server child in /proc")
	}
	if testing.Short() {
		t.Skip("builds the load test and runs it")
	}
	t.Parallel()
	bin := filepath.Join(t.TempDir(), "loadtest")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v: %s", err, out)
	}
	return bin
}

// loadtestProcess is a load test run as a child process of the test.
type loadtestProcess struct {
	cmd    *exec.Cmd
	exited chan struct{} // closed once cmd has been waited for
	server int           // its server child's pid
	lines  chan string   // its stderr's lines, as they come (some may be dropped)
	stderr lockedBuffer  // every line of its stderr
}

// startStorm starts bin on a storm cell of one slow connection, which
// costs next to no CPU for the hour it would last, and returns once its
// server child listens: the child then tells its address, and the cell's
// load starts. Both processes are killed at the end of the test.
func startStorm(t *testing.T, bin string) *loadtestProcess {
	t.Helper()
	lt := &loadtestProcess{exited: make(chan struct{}), lines: make(chan string, 64)}
	lt.cmd = exec.Command(bin, "-scenarios", "storm", "-variants", "fasthttp-bare", "-storm-conns", "1", "-warmup", "0", "-duration", "1h")
	// A pipe of our own rather than StderrPipe, which Wait would wait
	// for: the server child writes to it too, and a child left behind
	// would hold it open after the load test has exited.
	pipe, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	lt.cmd.Stderr = w
	err = lt.cmd.Start()
	_ = w.Close()
	if err != nil {
		_ = pipe.Close()
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(pipe)
		for sc.Scan() {
			lt.stderr.WriteString(sc.Text() + "\n")
			select {
			case lt.lines <- sc.Text():
			default:
			}
		}
	}()
	go func() {
		defer close(lt.exited)
		_ = lt.cmd.Wait()
	}()
	t.Cleanup(func() {
		if lt.server != 0 {
			_ = syscall.Kill(lt.server, syscall.SIGKILL) // a test that failed leaves none behind
		}
		_ = lt.cmd.Process.Kill()
		<-lt.exited
		_ = pipe.Close()
	})
	waitFor(t, "the server child to listen", func() bool {
		if lt.server == 0 {
			lt.server = childOf(lt.cmd.Process.Pid)
		}
		return lt.server != 0 && hasSocket(lt.server)
	})
	return lt
}

// childOf returns the pid of a child process of parent, or 0.
func childOf(parent int) int {
	stats, _ := filepath.Glob("/proc/[0-9]*/stat")
	for _, path := range stats {
		b, err := os.ReadFile(path)
		if err != nil {
			continue // exited meanwhile
		}
		// pid (comm) state ppid ...: comm may hold spaces and parentheses.
		i := bytes.LastIndexByte(b, ')')
		if i < 0 {
			continue
		}
		fields := strings.Fields(string(b[i+1:]))
		if len(fields) > 1 && fields[1] == strconv.Itoa(parent) {
			pid, _ := strconv.Atoi(filepath.Base(filepath.Dir(path)))
			return pid
		}
	}
	return 0
}

// hasSocket tells whether process pid has a socket open.
func hasSocket(pid int) bool {
	fds, _ := filepath.Glob("/proc/" + strconv.Itoa(pid) + "/fd/*")
	for _, fd := range fds {
		if target, err := os.Readlink(fd); err == nil && strings.HasPrefix(target, "socket:") {
			return true
		}
	}
	return false
}

// running tells whether process pid still runs: it exists, and is not a
// zombie left for a parent (init, here) to reap.
func running(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if errors.Is(err, os.ErrNotExist) {
		return false
	}
	i := bytes.LastIndexByte(b, ')')
	return err != nil || i < 0 || !bytes.HasPrefix(b[i+1:], []byte(" Z"))
}

// waitFor polls cond until it holds, failing the test after signalBound.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for end := time.Now().Add(signalBound); !cond(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatalf("waited %v for %s", signalBound, what)
		}
	}
}

// waitForLine waits for a line of stderr containing want.
func waitForLine(t *testing.T, lines <-chan string, want string, stderr *lockedBuffer) {
	t.Helper()
	timeout := time.After(signalBound)
	for {
		select {
		case line := <-lines:
			if strings.Contains(line, want) {
				return
			}
		case <-timeout:
			t.Fatalf("no line %q within %v: %s", want, signalBound, stderr.String())
		}
	}
}

// lockedBuffer is a bytes.Buffer safe for two goroutines.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) WriteString(s string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf.WriteString(s)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
