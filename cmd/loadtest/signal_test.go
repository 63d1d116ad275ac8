package main

import (
	"bufio"
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// signalBound only turns a hang into a failure: a run that ignored the
// second Ctrl-C exits after its load client's 10 s and its child's 5 s.
const signalBound = 60 * time.Second

// TestProcess_secondInterrupt runs the load test as a child process, its
// server child stopped (SIGSTOP) in the middle of a storm cell, as one busy
// or stuck would be: closing its input does not end it, and the first
// Ctrl-C's orderly stop waits for it. A second Ctrl-C must end the run at
// once with 130 and kill the server child, not leave it behind.
func TestProcess_secondInterrupt(t *testing.T) {
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
	// One slow connection: the storm's handlers wait 200 ms each, so the
	// cell costs next to no CPU for the hour it would last.
	cmd := exec.Command(bin, "-scenarios", "storm", "-variants", "fasthttp-bare", "-storm-conns", "1", "-warmup", "0", "-duration", "1h")
	// A pipe of our own rather than StderrPipe, which Wait would wait
	// for: the server child writes to it too, and a child left behind
	// would hold it open after the load test has exited.
	pipe, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = w
	err = cmd.Start()
	_ = w.Close()
	if err != nil {
		_ = pipe.Close()
		t.Fatal(err)
	}
	var stderr lockedBuffer
	lines := make(chan string, 64)
	go func() {
		sc := bufio.NewScanner(pipe)
		for sc.Scan() {
			stderr.WriteString(sc.Text() + "\n")
			select {
			case lines <- sc.Text():
			default:
			}
		}
	}()
	exited := make(chan struct{})
	go func() {
		defer close(exited)
		_ = cmd.Wait()
	}()
	var server int // the server child's pid, once found
	t.Cleanup(func() {
		if server != 0 {
			_ = syscall.Kill(server, syscall.SIGKILL) // a test that failed leaves none behind
		}
		_ = cmd.Process.Kill()
		<-exited
		_ = pipe.Close()
	})

	// The server child, once it listens: it then tells its address, and
	// the cell's load starts.
	waitFor(t, "the server child to listen", func() bool {
		if server == 0 {
			server = childOf(cmd.Process.Pid)
		}
		return server != 0 && hasSocket(server)
	})
	if err := syscall.Kill(server, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	waitForLine(t, lines, "interrupt: stopping the run", &stderr)
	if err := cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	select {
	case <-exited:
	case <-time.After(signalBound):
		t.Fatalf("the load test did not exit within %v: %s", signalBound, stderr.String())
	}
	if code := cmd.ProcessState.ExitCode(); code != 130 {
		t.Fatalf("exit status %d, want 130: %s", code, stderr.String())
	}
	if !strings.Contains(stderr.String(), "loadtest: interrupt again: stopping at once, server children killed") {
		t.Errorf("no line for the second Ctrl-C: %s", stderr.String())
	}
	waitFor(t, "the server child to be gone", func() bool { return !running(server) })
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
