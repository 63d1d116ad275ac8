//go:build unix

package fasttimeout_test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
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
	var m fasttimeout.Mode
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
	say := func(s string) {
		mu.Lock()
		defer mu.Unlock()
		fmt.Println(s)
	}
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

// A process stopped while its handlers sleep past their deadline wakes up
// with every timer due at once: the handlers' sleeps and the deadlines. The
// handlers' own responses must not get through, whichever runs first. On
// 2e568c9, racing mode let several of them through.
func TestLate_process_stall(t *testing.T) {
	for _, mode := range []string{"racing", "cooperative"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			const n = 20
			cmd := exec.Command(os.Args[0], "-test.run=^$")
			cmd.Env = append(os.Environ(), stallServerEnv+"="+mode)
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
			require.NoError(t, cmd.Process.Signal(syscall.SIGSTOP))
			time.Sleep(stallPause)
			require.NoError(t, cmd.Process.Signal(syscall.SIGCONT))

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
