package main

import (
	"errors"
	"net"
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"
)

// noFDsEnv, when set, makes the test binary run the generator's side of
// TestLoadWorker_a_dial_the_generator_cannot_make_is_not_sent with its
// file descriptors used up: the limit is the process's, so it runs in a
// process of its own, where no other test's files meet it.
const noFDsEnv = "FASTTIMEOUT_LOADTEST_TEST_NO_FDS"

// A connection the generator cannot open for want of a file descriptor
// of its own (its limit reached, with thousands of requests out at 10x)
// is the load test's failure, as an arrival dropped for want of a
// connection is: not sent, not a connect error, which the report puts
// down to the server (its accept loop starved, its listen queue full).
func TestLoadWorker_a_dial_the_generator_cannot_make_is_not_sent(t *testing.T) {
	if os.Getenv(noFDsEnv) != "" {
		dialWithoutFDs(t)
		return
	}
	t.Parallel()
	cmd := exec.Command(os.Args[0], "-test.run=^TestLoadWorker_a_dial_the_generator_cannot_make_is_not_sent$",
		"-test.count=1", "-test.timeout=1m", "-test.v")
	cmd.Env = append(os.Environ(), noFDsEnv+"=1")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("the generator without file descriptors: %v\n%s", err, out)
	}
}

// dialWithoutFDs sends a request with every file descriptor of the
// process in use, and checks what became of it.
func dialWithoutFDs(t *testing.T) {
	// A listener that never accepts: a server's accept would fail
	// without a descriptor too (Linux takes one before it waits), and
	// the dial must fail on this side before it reaches any server.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	g := newOpenLoop(ln.Addr().String(), 30*time.Second, 1)
	var results []result
	g.observe = func(r result) { results = append(results, r) }
	defer g.shutdown()
	w := &loadWorker{g: g}
	defer w.drop(false)

	var l syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
		t.Fatal(err)
	}
	l.Cur = min(l.Cur, 256)
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
		t.Fatal(err)
	}
	var files []*os.File
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	for {
		f, err := os.Open(os.DevNull)
		if errors.Is(err, syscall.EMFILE) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, f)
	}

	w.send(arrival{id: 1, at: time.Now()})
	if len(results) != 1 || results[0].outcome != outDropped || w.conn != nil {
		t.Errorf("a request whose connection the generator could not open (no file descriptor): results %+v; want one, not sent (dropped, %d), not a connect error (%d)",
			results, outDropped, outConnect)
	}
}
