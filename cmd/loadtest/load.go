package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"
)

// child is a variant server running in a child process of this binary, or
// in this process (cmd nil, served ends with serveChild's result).
type child struct {
	cmd    *exec.Cmd
	exited chan struct{} // closed once the child process has exited; nil in this process
	served chan error
	in     io.WriteCloser
	out    *bufio.Reader
	addr   string
	stderr io.Writer // where its messages go
}

// startShared runs a variant server in this process, on goroutines that
// share the Ps with the load generator's, with the same line protocol as a
// child process. What it has to say goes to stderr.
func startShared(scenario, variant string, stderr io.Writer) (*child, error) {
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	c := &child{served: make(chan error, 1), in: inW, out: bufio.NewReader(outR), stderr: stderr}
	go func() {
		err := serveChild(scenario+"/"+variant, inR, outW)
		_ = outW.CloseWithError(fmt.Errorf("server ended: %v", err))
		_ = inR.Close()
		c.served <- err
	}()
	line, err := c.out.ReadString('\n')
	if err != nil {
		c.stop()
		return nil, fmt.Errorf("server did not start: %w", err)
	}
	c.addr = line[:len(line)-1]
	return c, nil
}

// startChild starts a variant server in a child process, its stderr
// written to stderr.
func startChild(scenario, variant string, stderr io.Writer) (*child, error) {
	return startChildFiles(scenario, variant, nil, stderr)
}

// startChildFiles starts a child process with extra open files, the first
// at descriptor 3, its stderr written to stderr.
func startChildFiles(scenario, variant string, extra []*os.File, stderr io.Writer) (*child, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), serveEnv+"="+scenario+"/"+variant)
	cmd.Stderr = stderr
	cmd.ExtraFiles = extra
	cmd.SysProcAttr = childAttr()
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	outPipe, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	c := &child{cmd: cmd, exited: make(chan struct{}), in: in, out: bufio.NewReader(outPipe), stderr: stderr}
	started := make(chan error, 1)
	go func() {
		// Pdeathsig kills the child when the thread that started it exits,
		// as the runtime ends one a goroutine leaves locked: this goroutine
		// holds its thread, locked, until the child has exited.
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		trackChild(cmd.Process)
		started <- nil
		_ = cmd.Wait()
		untrackChild(cmd.Process)
		close(c.exited)
	}()
	if err := <-started; err != nil {
		return nil, err
	}
	line, err := c.out.ReadString('\n')
	if err != nil {
		c.stop()
		return nil, fmt.Errorf("server did not start: %w", err)
	}
	c.addr = line[:len(line)-1]
	return c, nil
}

// children are the server child processes started and not yet exited, for
// killChildren.
var children struct {
	mu     sync.Mutex
	procs  map[*os.Process]bool
	killed bool // killChildren has run: a child started since is killed at once
}

// trackChild records p, a server child just started, until untrackChild.
func trackChild(p *os.Process) {
	children.mu.Lock()
	defer children.mu.Unlock()
	if children.killed {
		_ = p.Kill()
		return
	}
	if children.procs == nil {
		children.procs = map[*os.Process]bool{}
	}
	children.procs[p] = true
}

// untrackChild forgets p, which has exited.
func untrackChild(p *os.Process) {
	children.mu.Lock()
	defer children.mu.Unlock()
	delete(children.procs, p)
}

// killChildren kills every server child still running, and any started
// afterwards, for a process about to exit without stopping them in
// order: closing their input, as the process's exit does, ends them only
// once they read it, which a child busy or stopped may not do for long.
func killChildren() {
	children.mu.Lock()
	defer children.mu.Unlock()
	children.killed = true
	for p := range children.procs {
		_ = p.Kill()
	}
}

// stats asks the server for its counters; reset also restarts its peaks.
func (c *child) stats(reset bool) (serverStats, error) {
	cmd := "stats\n"
	if reset {
		cmd = "reset\n"
	}
	var s serverStats
	if _, err := io.WriteString(c.in, cmd); err != nil {
		return s, err
	}
	line, err := c.out.ReadBytes('\n')
	if err != nil {
		return s, err
	}
	return s, json.Unmarshal(line, &s)
}

// stop closes the server's input, which ends it, and waits; a server that
// does not end within 5 s is killed.
func (c *child) stop() {
	if c.cmd != nil {
		stopProcess(c.in, c.exited, 5*time.Second, c.cmd.Process.Kill)
		return
	}
	_ = c.in.Close()
	select {
	case err := <-c.served:
		if err != nil {
			progressTo(c.stderr, "loadtest: in-process server: %v", err)
		}
	case <-time.After(5 * time.Second):
		progressTo(c.stderr, "loadtest: in-process server did not stop within 5s")
	}
}

// stopProcess closes in, which ends a child process, and returns once it
// has exited (exited is closed); one still running after wait is killed.
func stopProcess(in io.Closer, exited <-chan struct{}, wait time.Duration, kill func() error) {
	_ = in.Close()
	select {
	case <-exited:
	case <-time.After(wait):
		_ = kill()
		<-exited
	}
}

// loadResult is what the clients of one cell saw while measuring.
type loadResult struct {
	elapsed   time.Duration
	latencies histogram // ns, one per measured response
	timeouts  histogram // ns after the deadline, one per measured timeout response (storm)
	statuses  map[int]int64
	errors    int64
	// answered counts every response read in the window, whether its
	// request was sent in it or before: the rate counts these. The
	// measured responses above are those whose request was sent in the
	// window too, which leaves out each connection's first answer in it.
	answered int64
}

func (r loadResult) requests() int64 { return r.latencies.count() }

// Phases of a load run, read by every client connection.
const (
	phaseWarmup int32 = iota
	phaseMeasure
	phaseDone
)

// loadClient is one keep-alive connection and what it measured.
type loadClient struct {
	latencies latencyBatch
	timeouts  latencyBatch
	statuses  map[int]int64
	answered  int64 // responses read in the window
	err       error
}

// drive runs keep-alive load from conns connections against addr: warmup
// unmeasured, then duration measured. onMeasure and onDone run at the
// start and end of the measured window (server snapshots). deadline is the
// request timeout (storm) or 0; responses with status timeoutCode then
// record how late they came after it.
func drive(ctx context.Context, addr string, conns int, warmup, duration time.Duration,
	deadline time.Duration, timeoutCode int, onMeasure, onDone func() error) (loadResult, error) {
	var phase atomic.Int32
	clients := make([]*loadClient, conns)
	var latencies, timeouts sharedHistogram
	var wg sync.WaitGroup
	for i := range clients {
		c := &loadClient{statuses: map[int]int64{}, latencies: latencyBatch{into: &latencies}, timeouts: latencyBatch{into: &timeouts}}
		clients[i] = c
		wg.Go(func() { c.run(addr, &phase, deadline, timeoutCode) })
	}
	var res loadResult
	wait := func(d time.Duration) error {
		select {
		case <-time.After(d):
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	err := wait(warmup)
	if err == nil {
		err = onMeasure()
	}
	start := time.Now()
	phase.Store(phaseMeasure)
	if err == nil {
		err = wait(duration)
	}
	phase.Store(phaseDone)
	res.elapsed = time.Since(start)
	if err == nil {
		err = onDone()
	}
	wg.Wait()
	res.statuses = map[int]int64{}
	res.latencies, res.timeouts = latencies.h, timeouts.h // every client has returned, and flushed
	for _, c := range clients {
		res.answered += c.answered
		for code, n := range c.statuses {
			res.statuses[code] += n
		}
		if c.err != nil {
			res.errors++
		}
	}
	if err != nil {
		return res, err
	}
	if res.errors == int64(conns) {
		return res, fmt.Errorf("every connection failed, the first: %w", clients[0].err)
	}
	return res, nil
}

var request = []byte("GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: loadtest\r\n\r\n")

// run sends requests one at a time until the phase is done. A connection
// error ends this client; it is counted, not retried.
func (c *loadClient) run(addr string, phase *atomic.Int32, deadline time.Duration, timeoutCode int) {
	defer c.latencies.flush()
	defer c.timeouts.flush()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		c.err = err
		return
	}
	defer conn.Close()
	br := bufio.NewReader(conn)
	var resp fasthttp.Response
	for {
		p := phase.Load()
		if p == phaseDone {
			return
		}
		if err := conn.SetDeadline(time.Now().Add(10 * time.Second)); err != nil {
			c.err = err
			return
		}
		start := time.Now()
		if _, err := conn.Write(request); err != nil {
			c.err = err
			return
		}
		resp.Reset()
		if err := resp.Read(br); err != nil {
			if !errors.Is(err, io.EOF) || phase.Load() != phaseDone {
				c.err = err
			}
			return
		}
		elapsed := time.Since(start)
		now := phase.Load()
		if now == phaseMeasure {
			c.answered++
		}
		if p != phaseMeasure || now != phaseMeasure {
			continue // started or ended outside the measured window
		}
		c.measure(elapsed, resp.StatusCode(), deadline, timeoutCode)
	}
}

// measure records a measured response: its latency, its status, and how
// late it came after deadline (when set) if its status is timeoutCode.
func (c *loadClient) measure(elapsed time.Duration, code int, deadline time.Duration, timeoutCode int) {
	c.latencies.add(int64(elapsed))
	c.statuses[code]++
	if deadline > 0 && code == timeoutCode {
		c.timeouts.add(max(int64(elapsed-deadline), 0))
	}
}

// measureThroughput runs one throughput cell.
func measureThroughput(ctx context.Context, variant string, conns int, warmup, duration time.Duration, stderr io.Writer) (throughputRow, error) {
	row := throughputRow{Variant: variant, Conns: conns}
	srv, err := startChild(scenarioThroughput, variant, stderr)
	if err != nil {
		return row, err
	}
	defer srv.stop()
	var before, after serverStats
	res, err := drive(ctx, srv.addr, conns, warmup, duration, 0, 0,
		func() (err error) { before, err = srv.stats(false); return err },
		func() (err error) { after, err = srv.stats(false); return err })
	if err != nil {
		return row, err
	}
	row.fill(res, before, after)
	return row, nil
}

// measureStorm runs the storm against one variant, then waits for its slow
// handlers to return (at most stormWork and a margin) before counting them.
func measureStorm(ctx context.Context, variant string, conns int, warmup, duration time.Duration, stderr io.Writer) (stormRow, error) {
	row := stormRow{Variant: variant, Conns: conns}
	srv, err := startChild(scenarioStorm, variant, stderr)
	if err != nil {
		return row, err
	}
	defer srv.stop()
	var before, after serverStats
	res, err := drive(ctx, srv.addr, conns, warmup, duration, stormTimeout, timeoutStatus(variant),
		func() (err error) { before, err = srv.stats(true); return err },
		func() (err error) { after, err = srv.stats(false); return err })
	if err != nil {
		return row, err
	}
	settled := after
	for end := time.Now().Add(stormWork + 2*time.Second); time.Now().Before(end); {
		if settled, err = srv.stats(false); err != nil {
			return row, err
		}
		if settled.HandlersFinished >= settled.HandlersStarted {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	row.fill(res, before, after, settled)
	return row, nil
}
