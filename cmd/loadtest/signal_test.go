package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
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
			lt.waitExit(t, tc.code)
			if want, stderr := "loadtest: "+tc.sig.String()+" again: stopping at once, server children killed", lt.wholeStderr(t); !strings.Contains(stderr, want) {
				t.Errorf("no line %q: %s", want, stderr)
			}
			waitFor(t, "the server child to be gone", func() bool { return !running(lt.server) })
		})
	}
}

// TestProcess_a_signal_writes_the_report_of_the_cells_finished runs the
// load test as a child process on a throughput cell, then a burst of one
// connection sending 1000 requests, which lasts seconds, and sends it
// SIGINT or SIGTERM once the throughput cell's progress line is out: it
// must write the report of that cell (Markdown, or JSON and its chart),
// marked as interrupted in the burst, and exit with 128 plus the signal's
// number without running the burst to its end. The JSON is read again by
// -render, which says so too.
func TestProcess_a_signal_writes_the_report_of_the_cells_finished(t *testing.T) {
	bin := buildLoadtest(t)
	for _, tc := range []struct {
		sig  syscall.Signal
		code int
		json bool
	}{
		{syscall.SIGINT, 130, false},
		{syscall.SIGTERM, 143, true},
	} {
		t.Run(tc.sig.String(), func(t *testing.T) {
			t.Parallel()
			args := []string{"-smoke", "-scenarios", "throughput,burst", "-variants", ftRace, "-conns", "1", "-burst-conns", "1", "-burst-requests", "1000"}
			chart := filepath.Join(t.TempDir(), "chart.png")
			if tc.json {
				args = append(args, "-json", "-chart", chart)
			}
			lt := startLoadtest(t, bin, args...)
			waitForLine(t, lt.lines, "  throughput "+ftRace, &lt.stderr)
			if err := lt.cmd.Process.Signal(tc.sig); err != nil {
				t.Fatal(err)
			}
			lt.waitExit(t, tc.code)
			if want, stderr := "loadtest: "+tc.sig.String()+": the run stopped before its end, its report holds the cells finished\n", lt.wholeStderr(t); !strings.HasSuffix(stderr, want) {
				t.Errorf("stderr %q, want %q as its last line", stderr, want)
			}
			want := "**Interrupted** (" + tc.sig.String() + ") in the burst scenario at " + ftRace + ", 1 conns: "
			markdown := lt.stdout.String()
			if tc.json {
				type at struct{ Signal, Scenario, Cell string }
				var rep report
				var marked struct {
					Interrupted *at `json:"interrupted"`
				}
				if err := errors.Join(json.Unmarshal([]byte(markdown), &rep), json.Unmarshal([]byte(markdown), &marked)); err != nil {
					t.Fatalf("stdout %q: %v", markdown, err)
				}
				if got := marked.Interrupted; got == nil || *got != (at{Signal: tc.sig.String(), Scenario: scenarioBurst, Cell: ftRace + ", 1 conns"}) {
					t.Errorf("interrupted %+v, want at the burst of %s", got, ftRace)
				}
				if len(rep.Throughput) != 1 || rep.Throughput[0].Error != "" || rep.Throughput[0].Requests == 0 || len(rep.BurstRows) != 0 {
					t.Errorf("throughput %+v, burst %+v: want the throughput cell, no burst", rep.Throughput, rep.BurstRows)
				}
				if _, err := os.Stat(chart); err != nil {
					t.Errorf("no chart: %v", err)
				}
				saved := filepath.Join(t.TempDir(), "report.json")
				if err := os.WriteFile(saved, []byte(markdown), 0o600); err != nil {
					t.Fatal(err)
				}
				var rendered strings.Builder
				if err := run(context.Background(), options{render: saved}, &rendered); err != nil {
					t.Fatal(err)
				}
				markdown = rendered.String()
			}
			if !strings.HasPrefix(markdown, want) || !strings.Contains(markdown, "| "+ftRace+" | 1 | ") || strings.Contains(markdown, "### Burst") {
				t.Errorf("report %q, want it to start with %q, with the throughput cell and no burst", markdown, want)
			}
		})
	}
}

// TestProcess_ctrl_Z_stops_the_server_children_too sends the load test, in
// the middle of a storm cell, the SIGTSTP of a terminal's Ctrl-Z, which
// reaches it alone, its server child being in a process group of its own:
// the child must be stopped with it, not left running, and resumed with it
// by the SIGCONT of the shell's fg or bg. The run then goes on: a SIGINT
// stops it as usual.
func TestProcess_ctrl_Z_stops_the_server_children_too(t *testing.T) {
	lt := startStorm(t, buildLoadtest(t))
	if err := lt.cmd.Process.Signal(syscall.SIGTSTP); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the load test to be stopped", func() bool { return procState(lt.cmd.Process.Pid) == 'T' })
	waitFor(t, "the server child to be stopped", func() bool { return procState(lt.server) == 'T' })
	if err := lt.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the load test to be resumed", func() bool { return procState(lt.cmd.Process.Pid) != 'T' })
	waitFor(t, "the server child to be resumed", func() bool { return procState(lt.server) != 'T' })
	if err := lt.cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	lt.waitExit(t, 130)
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
// interrupted, not FAILED, the run's report says it stopped there and has
// no cell, and the exit status is the signal's, not 1, which says a
// server failed.
//
// Not parallel: the server child is found as this process's only child.
func TestCommand_a_stopped_run_reports_no_failure(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("finds the server child in /proc")
	}
	for _, tc := range []struct {
		args []string
		cell string // where the report says the run stopped
	}{
		{[]string{"-scenarios", "throughput", "-variants", "fasthttp-bare", "-conns", "1", "-warmup", "1h", "-duration", "1h"}, "fasthttp-bare, 1 conns"},
		{[]string{"-scenarios", "storm", "-variants", "fasthttp-bare", "-storm-conns", "1", "-warmup", "1h", "-duration", "1h"}, "fasthttp-bare, 1 conns"},
		{[]string{"-scenarios", "burst", "-variants", "fasttimeout-race", "-burst-shared=false", "-burst-conns", "1", "-burst-requests", "1000"}, "fasttimeout-race, 1 conns"},
		{[]string{"-scenarios", "hangup", "-variants", "fasttimeout-race", "-hangup-conns", "1", "-hangup-rounds", "1", "-warmup", "1h", "-duration", "1h"}, "fasttimeout-race"},
	} {
		args := tc.args
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
			if !strings.HasSuffix(stderr.String(), "loadtest: interrupt: the run stopped before its end, its report holds the cells finished\n") {
				t.Errorf("stderr %q, want the stop as its last line", stderr.String())
			}
			want := "**Interrupted** (interrupt) in the " + args[1] + " scenario at " + tc.cell + ": "
			if !strings.HasPrefix(stdout.String(), want) || strings.Contains(stdout.String(), "###") {
				t.Errorf("stdout %q, want a report that starts with %q and has no table", stdout.String(), want)
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
	stderr lockedBuffer  // every line of its stderr, whole once stderrEOF is closed
	// Closed once its stderr reaches end of file: when it and its server
	// children have exited, after its last line, which the reader may
	// still be copying when exited is closed.
	stderrEOF chan struct{}
	stdout    lockedBuffer // its stdout, whole once exited is closed
}

// startStorm starts bin on a storm cell of one slow connection, which
// costs next to no CPU for the hour it would last, and returns once its
// server child listens: the child then tells its address, and the cell's
// load starts. Both processes are killed at the end of the test.
func startStorm(t *testing.T, bin string) *loadtestProcess {
	t.Helper()
	lt := startLoadtest(t, bin, "-scenarios", "storm", "-variants", "fasthttp-bare", "-storm-conns", "1", "-warmup", "0", "-duration", "1h")
	waitFor(t, "the server child to listen", func() bool {
		if lt.server == 0 {
			lt.server = childOf(lt.cmd.Process.Pid)
		}
		return lt.server != 0 && hasSocket(lt.server)
	})
	return lt
}

// startLoadtest starts bin with args; it and the server child it has in
// lt.server are killed at the end of the test.
func startLoadtest(t *testing.T, bin string, args ...string) *loadtestProcess {
	t.Helper()
	lt := &loadtestProcess{exited: make(chan struct{}), lines: make(chan string, 64), stderrEOF: make(chan struct{})}
	lt.cmd = exec.Command(bin, args...)
	// The server children have pipes of their own for their stdout.
	lt.cmd.Stdout = &lt.stdout
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
		defer close(lt.stderrEOF)
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

// procState is process pid's state in /proc/PID/stat: 'R' running, 'S'
// sleeping, 'T' stopped, 'Z' a zombie..., or 0 if it cannot be read.
func procState(pid int) byte {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	i := bytes.LastIndexByte(b, ')')
	if err != nil || i < 0 || len(b) < i+3 {
		return 0
	}
	return b[i+2]
}

// waitFor polls cond until it holds, failing the test after signalBound.
// waitExit waits up to signalBound for the load test to exit, with the
// status code.
func (lt *loadtestProcess) waitExit(t *testing.T, code int) {
	t.Helper()
	select {
	case <-lt.exited:
	case <-time.After(signalBound):
		t.Fatalf("the load test did not exit within %v: %s", signalBound, lt.stderr.String())
	}
	if got := lt.cmd.ProcessState.ExitCode(); got != code {
		t.Fatalf("exit status %d, want %d: %s", got, code, lt.stderr.String())
	}
}

// wholeStderr returns everything the load test wrote on stderr, once it has
// exited (waitExit) and the pipe has reached its end.
func (lt *loadtestProcess) wholeStderr(t *testing.T) string {
	t.Helper()
	select {
	case <-lt.stderrEOF:
	case <-time.After(signalBound):
		t.Fatalf("stderr still open %v after the load test exited (a server child left behind?): %s", signalBound, lt.stderr.String())
	}
	return lt.stderr.String()
}

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

// An overload run stopped in a load's cell, after its workload's capacity
// sweep, keeps that workload in its report, with its sweep and capacity,
// and says at which cell it stopped: below 1x capacity a cell lasts -cell
// ÷ load², here 100 s, while the sweep's last 10 ms.
//
// Not parallel: its server children would be found by the tests that take
// theirs for this process's only child.
func TestCommand_an_overload_stopped_after_its_sweep_keeps_it(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the overload's capacity estimate and sweep")
	}
	args := []string{"-smoke", "-json", "-scenarios", "overload", "-overload-workloads", "cpu", "-overload-variants", "fasttimeout-race-adaptive",
		"-overload-loads", "0.01", "-cell", "10ms"}
	ctx, cancel := context.WithCancelCause(context.Background())
	code := make(chan int, 1)
	var stdout, stderr lockedBuffer
	go func() { code <- command(ctx, args, &stdout, &stderr) }()
	waitFor(t, "the capacity to be known", func() bool { return strings.Contains(stderr.String(), "  overload   cpu: capacity ") })
	cancel(interrupted{syscall.SIGINT})
	select {
	case c := <-code:
		if c != 130 {
			t.Errorf("exit status %d, want 130: %s", c, stderr.String())
		}
	case <-time.After(signalBound):
		t.Fatalf("the run did not stop within %v: %s", signalBound, stderr.String())
	}
	var rep report
	if err := json.Unmarshal([]byte(stdout.String()), &rep); err != nil {
		t.Fatalf("stdout %q: %v", stdout.String(), err)
	}
	if got, want := rep.Interrupted, (interruption{Signal: "interrupt", Scenario: scenarioOverload, Cell: "cpu, 0.01x, fasttimeout-race-adaptive, honours"}); got == nil || *got != want {
		t.Errorf("interrupted %+v, want %+v", got, want)
	}
	if rep.Overload == nil || len(rep.Overload.Workloads) != 1 || len(rep.Overload.Workloads[0].Sweep) != 1 ||
		rep.Overload.Workloads[0].Capacity == 0 || len(rep.Overload.Workloads[0].Rows) != 0 {
		t.Errorf("overload %+v, want the cpu workload with its sweep and capacity and no cell", rep.Overload)
	}
}
