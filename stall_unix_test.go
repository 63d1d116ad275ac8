//go:build unix

package fasttimeout_test

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/valyala/fasthttp"

	"github.com/fasttimeout/fasttimeout"
)

// stallServerEnv makes the test binary serve as the child of
// TestLate_process_stall (see TestMain) in the mode it names.
const stallServerEnv = "FASTTIMEOUT_STALL_SERVER"

const (
	stallTimeout = 50 * time.Millisecond
	stallSleep   = 200 * time.Millisecond
	stallPause   = 400 * time.Millisecond
)

// runStallServer serves handlers that sleep past their deadline on
// 127.0.0.1, prints the address, then "started" for each request, and stops
// when its standard input closes.
func runStallServer(mode string) {
	if admission, ok := strings.CutPrefix(mode, "admission/"); ok {
		runAdmissionStallServer(admission)
	}
	m, ln, say := stallChildListen(mode)
	h := fasttimeout.New(func(ctx *fasthttp.RequestCtx) {
		say("started")
		time.Sleep(stallSleep) // ignores its context
		ctx.SetBodyString("own")
	}, fasttimeout.Config{Timeout: stallTimeout, Mode: m})
	go func() { _ = fasthttp.Serve(ln, h) }()
	say("addr " + ln.Addr().String())
	_, _ = io.Copy(io.Discard, os.Stdin)
	os.Exit(0)
}

// stallChildListen reads a child server's mode and listens on 127.0.0.1,
// exiting with status 2 if either fails. say prints a line for the test,
// one at a time.
func stallChildListen(mode string) (m fasttimeout.Mode, ln net.Listener, say func(string)) {
	if err := m.UnmarshalText([]byte(mode)); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	var mu sync.Mutex
	return m, ln, func(s string) {
		mu.Lock()
		defer mu.Unlock()
		fmt.Println(s)
	}
}

// stallChild is a child server of the stall tests: the test binary run as
// the server that stallServerEnv names.
type stallChild struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	lines *bufio.Scanner // its standard output, after the address
	addr  string
}

// startStallChild starts the child server kind and reads its address. The
// test's cleanup resumes it, if stopped, and ends it.
func startStallChild(t *testing.T, kind string) *stallChild {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), stallServerEnv+"="+kind)
	stdin, err := cmd.StdinPipe()
	require.NoError(t, err)
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	cmd.Stderr = os.Stderr
	require.NoError(t, cmd.Start())
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGCONT)
		_ = stdin.Close()
		assert.NoError(t, cmd.Wait())
	})
	lines := bufio.NewScanner(stdout)
	require.True(t, lines.Scan(), "the child prints its address")
	addr, ok := strings.CutPrefix(lines.Text(), "addr ")
	require.True(t, ok, "got %q", lines.Text())
	return &stallChild{cmd: cmd, stdin: stdin, lines: lines, addr: addr}
}

// stall stops the whole child process for d: every timer in it, the
// runtime's and the handlers', is due at once when it resumes.
func (c *stallChild) stall(t *testing.T, d time.Duration) {
	t.Helper()
	require.NoError(t, c.cmd.Process.Signal(syscall.SIGSTOP))
	time.Sleep(d) // the stall itself, not a wait for something to happen
	require.NoError(t, c.cmd.Process.Signal(syscall.SIGCONT))
}

// A process stopped while its handlers sleep past their deadline wakes up
// with every timer due at once: the handlers' sleeps and the deadlines. The
// handlers' own responses must not get through, whichever runs first.
func TestLate_process_stall(t *testing.T) {
	for _, mode := range []string{"racing", "cooperative"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			const n = 20
			child := startStallChild(t, mode)
			addr, lines := child.addr, child.lines

			type result struct {
				status int
				body   string
				err    error
			}
			results := make(chan result, n)
			for i := range n {
				go func() {
					c, err := dialStress(addr)
					if err != nil {
						results <- result{err: err}
						return
					}
					defer c.close()
					err = c.do("/", fmt.Sprintf("S%016x", i))
					results <- result{c.resp.StatusCode(), string(c.resp.Body()), err}
				}()
			}
			for range n {
				require.True(t, lines.Scan(), "the child says each handler started")
				require.Equal(t, "started", lines.Text())
			}
			// Every handler is asleep now: stop the whole process past
			// both their deadlines and their sleeps.
			child.stall(t, stallPause)

			own := 0
			for range n {
				r := <-results
				require.NoError(t, r.err)
				if r.status == fasthttp.StatusOK && r.body == "own" {
					own++
					continue
				}
				assert.Equal(t, fasttimeout.DefaultStatusCode, r.status)
				assert.Equal(t, fasttimeout.DefaultBody, r.body)
			}
			assert.Zero(t, own, "own responses of handlers that returned %v after their deadline", stallSleep-stallTimeout)
		})
	}
}

// The child of TestAdmission_process_stall: a limit of admissionStallLimit
// slots, and its timeouts by path.
const (
	admissionStallLimit = 4
	runnerTimeout       = 3 * time.Second  // /ignore, /honour: past before the stall ends
	queuedShortTimeout  = time.Second      // /short: its deadline passes in the stall
	queuedLongTimeout   = 10 * time.Second // /long: its share (a tenth) ends in the stall, not its deadline
	holdTimeout         = time.Minute      // /hold
	admissionStall      = runnerTimeout + runnerTimeout/2
)

// runAdmissionStallServer serves, on 127.0.0.1 in the mode it is given and
// under a fixed limit of admissionStallLimit slots, handlers that hold
// their slot until the test says "mark" on standard input: /ignore then
// sleeps past its deadline, /honour waits for its context to end. /short
// and /long return at once. /hold returns once admissionStallLimit of them
// run at once. Each of those prints "started" and its secret. /ping
// answers with its secret and /stats with Stats, outside the middleware
// (Config.Skip). It prints its address, then "marked" once every held
// handler has been let go, with "late" if one of them had less than half its
// time left by then, and stops when its standard input closes.
func runAdmissionStallServer(mode string) {
	m, ln, say := stallChildListen(mode)
	var stats fasttimeout.Stats
	mark := make(chan struct{})
	var held sync.WaitGroup // the handlers holding a slot until the mark
	var late atomic.Bool    // one of them had little time left at the mark
	var holding atomic.Int32
	allHolding := make(chan struct{})
	hold := func(ctx *fasthttp.RequestCtx) {
		<-mark
		// Half its time left at least: its deadline passes in the stall,
		// not as the test stops the process.
		if left, _ := fasttimeout.Remaining(ctx); left < runnerTimeout/2 {
			late.Store(true)
		}
		held.Done()
	}
	h := fasttimeout.New(func(ctx *fasthttp.RequestCtx) {
		secret := string(ctx.Request.Header.Peek("X-Secret"))
		switch string(ctx.Path()) {
		case "/ignore":
			held.Add(1)
			say("started " + secret)
			hold(ctx)
			time.Sleep(runnerTimeout) // ignores its context: returns in the stall, past its deadline
		case "/honour":
			held.Add(1)
			say("started " + secret)
			hold(ctx)
			<-fasttimeout.Context(ctx).Done()
		case "/hold":
			say("started " + secret)
			if holding.Add(1) == admissionStallLimit {
				close(allHolding)
			}
			<-allHolding
		case "/ping":
			replyWithSecret(ctx, "ping", secret)
			return
		case "/stats":
			ctx.SetBodyString(stats.String())
			return
		default:
			say("started " + secret)
		}
		replyWithSecret(ctx, "own", secret)
	}, fasttimeout.Config{
		Timeout: queuedShortTimeout, Mode: m, MaxConcurrency: admissionStallLimit, Stats: &stats,
		TimeoutFunc: func(ctx *fasthttp.RequestCtx) time.Duration {
			switch string(ctx.Path()) {
			case "/ignore", "/honour":
				return runnerTimeout
			case "/long":
				return queuedLongTimeout
			case "/hold":
				return holdTimeout
			}
			return queuedShortTimeout
		},
		Skip: func(ctx *fasthttp.RequestCtx) bool {
			path := string(ctx.Path())
			return path == "/ping" || path == "/stats"
		},
	})
	go func() { _ = fasthttp.Serve(ln, h) }()
	say("addr " + ln.Addr().String())
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		if in.Text() == "mark" {
			close(mark)
			held.Wait()
			if late.Load() {
				say("marked late")
			} else {
				say("marked")
			}
		}
	}
	os.Exit(0)
}

// TestAdmission_process_stall stops a server for longer than its timeout
// while admissionStallLimit handlers hold its slots and requests wait for
// one, and checks what happens when it wakes, every timer due at once: the
// held handlers return (one kind ignoring its context, the other honouring
// it), their deadlines, and the waits of the queued requests. No queued
// request runs: each waited past its deadline (/short) or past its share of
// it (/long) by the time a slot came free. Each request gets one answer,
// its own on its connection, the slots all come back (admissionStallLimit
// requests run at once afterwards), and Stats add up. A freed slot is
// handed over by comparing the waiter's end of wait with the clock: else
// /long requests would run after the stall whenever a held handler's
// return ran before their timers.
func TestAdmission_process_stall(t *testing.T) {
	for _, mode := range []string{"racing", "cooperative"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			child := startStallChild(t, "admission/"+mode)
			addr, lines := child.addr, child.lines
			started := make(chan string, 64)
			marked := make(chan string, 1)
			go func() {
				defer close(started)
				for lines.Scan() {
					if secret, ok := strings.CutPrefix(lines.Text(), "started "); ok {
						started <- secret
					} else {
						marked <- lines.Text()
					}
				}
			}()
			control, err := dialStress(addr)
			require.NoError(t, err)
			defer control.close()
			statsCalls := int64(0)
			snapshot := func() fasttimeout.Counters {
				statsCalls++
				var c fasttimeout.Counters
				resp := control.get(t, "/stats", "stats")
				require.NoError(t, json.Unmarshal(resp.Body(), &c))
				return c
			}

			type answer struct {
				path, secret string
				status       int
				body         string
				own          bool // the next request on the connection got its own answer
				err          error
			}
			answers := make(chan answer, 32)
			send := func(path string, i int) {
				go func() {
					a := answer{path: path, secret: fmt.Sprintf("S%s%02d", path[1:], i)}
					c, err := dialStress(addr)
					if err != nil {
						a.err = err
						answers <- a
						return
					}
					defer c.close()
					if a.err = c.do(path, a.secret); a.err == nil {
						a.status, a.body = c.resp.StatusCode(), string(c.resp.Body())
						if a.err = c.do("/ping", a.secret+"p"); a.err == nil {
							a.own = string(c.resp.Body()) == "ping:"+a.secret+"p"
						}
					}
					answers <- a
				}()
			}
			// The slots, held.
			runners := map[string]bool{}
			for i := range admissionStallLimit {
				path := []string{"/ignore", "/honour"}[i%2]
				send(path, i)
				runners[fmt.Sprintf("S%s%02d", path[1:], i)] = true
			}
			for range admissionStallLimit {
				secret := receive(t, started, "a handler holding a slot")
				require.True(t, runners[secret], "%s ran", secret)
			}
			// The queue.
			const queued = 8
			for i := range queued {
				send([]string{"/short", "/long"}[i%2], i)
			}
			require.True(t, waitUntil(func() bool { return snapshot().Queued == queued }), "the requests queued")
			// Let the held handlers go, then stop the process past every
			// deadline of theirs and of /short, and every share of /long.
			_, err = io.WriteString(child.stdin, "mark\n")
			require.NoError(t, err)
			if receive(t, marked, "the child's mark") != "marked" {
				t.Skip("a held handler had less than half its time left before the stall: the machine is too slow for this test")
			}
			child.stall(t, admissionStall)

			refused, spent := int64(0), int64(0)
			for range admissionStallLimit + queued {
				a := receive(t, answers, "an answer")
				require.NoError(t, a.err, "%s %s", a.path, a.secret)
				assert.True(t, a.own, "%s %s: the next request on its connection got another answer", a.path, a.secret)
				switch {
				case runners[a.secret]:
					assert.Equal(t, fasttimeout.DefaultStatusCode, a.status, "%s %s: %q", a.path, a.secret, a.body)
				case a.status == fasthttp.StatusServiceUnavailable:
					refused++
				case a.status == fasttimeout.DefaultStatusCode && a.path == "/short":
					spent++ // handed a slot past its deadline
				default:
					t.Errorf("%s %s, queued: %d %q", a.path, a.secret, a.status, a.body)
				}
			}
			// The late handlers return; then every slot is free again.
			require.True(t, waitUntil(func() bool { return snapshot().InFlight == 0 }), "the handlers returned")
			for i := range admissionStallLimit {
				send("/hold", i)
			}
			for range admissionStallLimit {
				a := receive(t, answers, "the answer to a request beside the others at the limit")
				require.NoError(t, a.err)
				assert.Equal(t, fasthttp.StatusOK, a.status, "%s %s: %q", a.path, a.secret, a.body)
				assert.True(t, a.own)
			}
			// Printed before their answers, as any queued request's would
			// have been.
			for holds := 0; holds < admissionStallLimit; {
				secret := receive(t, started, "a handler that ran")
				if strings.HasPrefix(secret, "Shold") {
					holds++
				} else {
					t.Errorf("%s ran, after the stall", secret)
				}
			}

			require.True(t, waitUntil(func() bool { return snapshot().InFlight == 0 }), "the handlers returned")
			got := snapshot()
			pings := int64(2*admissionStallLimit + queued)
			assert.Equal(t, pings+statsCalls+2*admissionStallLimit+queued, got.Requests, "requests: %+v", got)
			assert.Equal(t, int64(2*admissionStallLimit), got.Admitted)
			assert.Equal(t, int64(queued), got.Queued)
			assert.Equal(t, refused, got.Rejected)
			assert.Equal(t, spent, got.SpentBudgets)
			assert.Equal(t, admissionStallLimit+spent, got.Timeouts)
			assert.Equal(t, int64(admissionStallLimit), got.LateFinished)
			assert.Zero(t, got.LateRunning)
			assert.Zero(t, got.Waiting)
			assert.Equal(t, int64(admissionStallLimit), got.ConcurrencyLimit)
			t.Logf("queued: %d refused, %d handed a slot past their deadline", refused, spent)
		})
	}
}
