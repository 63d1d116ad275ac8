//go:build linux

package fasttimeout

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// The hang-up watcher's costs:
//
//	go test -run '^$' -bench 'Hangup' -benchtime 2000x .
//
// AddRemove is one watch and its removal on a live, registered connection.
// PeerGone is the look at a queued request's live connection as it gets
// its slot.
// Notice is the delay from a client's close to the callback (p50 and max
// over b.N closes). Idle10k holds 10 000 registrations (the clients in a
// child process: one process may not have 20 000 descriptors) and reports
// the process's CPU time (getrusage) over the run as a share of one core,
// against Idle0 with nothing watched.

func BenchmarkHangupAddRemove(b *testing.B) {
	var w hangupWatcher
	s, _ := tcpPair(b, tcpListener(b))
	cb := func() {}
	b.ReportAllocs()
	for b.Loop() {
		h, ok := w.add(s, cb)
		if !ok {
			b.Fatal("not watched")
		}
		w.remove(h)
	}
}

func BenchmarkHangupPeerGone(b *testing.B) {
	s, _ := tcpPair(b, tcpListener(b))
	b.ReportAllocs()
	for b.Loop() {
		if peerGone(s) {
			b.Fatal("a live client seen gone")
		}
	}
}

func BenchmarkHangupNotice(b *testing.B) {
	var w hangupWatcher
	ln := tcpListener(b)
	delays := make([]time.Duration, 0, b.N)
	for range b.N {
		b.StopTimer()
		s, c := tcpPair(b, ln)
		fired := make(chan time.Time, 1)
		h, ok := w.add(s, func() { fired <- time.Now() })
		if !ok {
			b.Fatal("not watched")
		}
		b.StartTimer()
		closed := time.Now()
		c.Close()
		select {
		case at := <-fired:
			delays = append(delays, at.Sub(closed))
		case <-time.After(hangupWait):
			b.Fatal("no callback")
		}
		w.remove(h)
		s.Close()
	}
	slices.Sort(delays)
	b.ReportMetric(float64(delays[len(delays)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(delays[len(delays)-1].Microseconds()), "max-µs")
}

func BenchmarkHangupIdle0(b *testing.B)   { benchHangupIdle(b, 0) }
func BenchmarkHangupIdle10k(b *testing.B) { benchHangupIdle(b, 10000) }

func benchHangupIdle(b *testing.B, n int) {
	var w hangupWatcher
	var handles []hangupHandle
	addNs := 0.0
	if n > 0 {
		conns := holdClients(b, n)
		start := time.Now()
		for _, c := range conns {
			h, ok := w.add(c, func() { b.Error("idle client reported gone") })
			if !ok {
				b.Fatal("not watched")
			}
			handles = append(handles, h)
		}
		addNs = float64(time.Since(start).Nanoseconds()) / float64(n)
	}
	before := cpuTime(b)
	start := time.Now()
	b.ResetTimer()
	for range b.N {
		time.Sleep(10 * time.Millisecond) // an idle window
	}
	b.StopTimer()
	b.ReportMetric(100*float64(cpuTime(b)-before)/float64(time.Since(start)), "cpu-%")
	if n > 0 {
		b.ReportMetric(addNs, "add-ns/conn") // after ResetTimer, which drops metrics
	}
	for _, h := range handles {
		w.remove(h)
	}
}

// cpuTime is the process's user and system time so far.
func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// holdClients starts a child process that opens n connections to a new
// listener and keeps them open until the benchmark ends; it returns the
// accepted ends.
func holdClients(b *testing.B, n int) []net.Conn {
	ln := tcpListener(b)
	cmd := exec.Command(os.Args[0], "-test.run=^TestHangupHoldClients$")
	cmd.Env = append(os.Environ(), "HANGUP_HOLD_ADDR="+ln.Addr().String(), "HANGUP_HOLD_N="+strconv.Itoa(n))
	stdin, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		stdin.Close() // the child exits, closing its connections
		_ = cmd.Wait()
	})
	conns := make([]net.Conn, 0, n)
	for range n {
		c, err := ln.Accept()
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { c.Close() })
		conns = append(conns, c)
	}
	return conns
}

// TestHangupHoldClients is the child process of holdClients; run by itself
// it does nothing.
func TestHangupHoldClients(t *testing.T) {
	addr, n := os.Getenv("HANGUP_HOLD_ADDR"), os.Getenv("HANGUP_HOLD_N")
	if addr == "" {
		return
	}
	count, err := strconv.Atoi(n)
	if err != nil {
		t.Fatal(err)
	}
	conns := make([]net.Conn, 0, count)
	for range count {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			fmt.Fprintln(os.Stderr, "hold clients:", err)
			os.Exit(1)
		}
		conns = append(conns, c)
	}
	_, _ = io.Copy(io.Discard, bufio.NewReader(os.Stdin)) // until the parent closes stdin
	for _, c := range conns {
		c.Close()
	}
	os.Exit(0) // skip TestMain's leak check: only the parent's tests count
}
