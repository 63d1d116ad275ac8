package main

import (
	"bufio"
	"encoding/json"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/valyala/fasthttp"

	"github.com/fasttimeout/fasttimeout"
)

// TestChain runs client → gateway → gateway → demo as separate processes
// over 127.0.0.1, with a tap before each hop that records the deadline
// headers each one receives and when.
func TestChain(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs three processes")
	}
	const margin = 20 * time.Millisecond
	bin := t.TempDir()
	gatewayBin := build(t, ".", filepath.Join(bin, "gateway"))
	demoBin := build(t, filepath.Join("..", "demo"), filepath.Join(bin, "demo"))

	// The demo's own timeout is long: what bounds it here is the caller's.
	demo := start(t, demoBin, "REQUEST_TIMEOUT=30", "-addr", "127.0.0.1:0")
	tapDemo := startTap(t, demo)
	back := start(t, gatewayBin, "REQUEST_TIMEOUT=30", "-addr", "127.0.0.1:0", "-upstream", tapDemo.addr, "-margin", margin.String())
	tapBack := startTap(t, back)
	front := start(t, gatewayBin, "REQUEST_TIMEOUT=30", "-addr", "127.0.0.1:0", "-upstream", tapBack.addr, "-margin", margin.String())
	tapFront := startTap(t, front)

	client := &fasthttp.Client{MaxIdemponentCallAttempts: 1}
	get := func(path, grpcTimeout string) (*fasthttp.Response, time.Duration) {
		req, resp := fasthttp.AcquireRequest(), new(fasthttp.Response)
		defer fasthttp.ReleaseRequest(req)
		req.SetRequestURI("http://" + tapFront.addr + path)
		req.Header.Set("grpc-timeout", grpcTimeout)
		start := time.Now()
		require.NoError(t, client.DoTimeout(req, resp, waitTimeout))
		return resp, time.Since(start)
	}

	t.Run("the budget shrinks at each hop by the time spent and the margin", func(t *testing.T) {
		resp, _ := get("/async_sleep/0", "2S")
		require.Equal(t, fasthttp.StatusOK, resp.StatusCode(), "%s", resp.Body())
		atFront, atBack, atDemo := <-tapFront.seen, <-tapBack.seen, <-tapDemo.seen
		t.Logf("budget seen: front %s, back %s (%v later), demo %s (%v later)",
			atFront, atBack, atBack.at.Sub(atFront.at), atDemo, atDemo.at.Sub(atBack.at))

		assert.Equal(t, 2*time.Second, atFront.grpc)
		for _, hop := range []struct {
			name        string
			before, got seen
		}{
			{"back gateway", atFront, atBack},
			{"demo", atBack, atDemo},
		} {
			budget := hop.before.budget()
			// What a hop passes on is its caller's budget less the margin and
			// less the time it spent, which is at most the time between the
			// two taps, and rounded down to whole milliseconds.
			assert.LessOrEqual(t, hop.got.envoy, budget-margin, hop.name)
			assert.GreaterOrEqual(t, hop.got.envoy, budget-margin-hop.got.at.Sub(hop.before.at)-time.Millisecond, hop.name)
			assert.Equal(t, hop.got.envoy, hop.got.grpc, "%s: grpc-timeout rewritten to the same budget", hop.name)
		}
		assert.Positive(t, atDemo.envoy, "the back end sees its deadline")
	})

	t.Run("a timeout at the front is answered by its deadline, and nothing runs on", func(t *testing.T) {
		const budget = 500 * time.Millisecond
		resp, took := get("/async_sleep/20", "500m") // the demo ignores the headers
		assert.Equal(t, fasthttp.StatusGatewayTimeout, resp.StatusCode())
		assert.Equal(t, fasttimeout.DefaultBody, string(resp.Body()))
		atFront, atBack, atDemo := <-tapFront.seen, <-tapBack.seen, <-tapDemo.seen
		t.Logf("budget seen: front %s, back %s, demo %s; 504 after %v", atFront, atBack, atDemo, took)
		// The back gateway's deadline comes first: its budget less its
		// margin, from when it got the request.
		assert.GreaterOrEqual(t, took, atDemo.envoy)
		// Generous: the bound is the caller's budget; the rest is the
		// scheduling of a loaded 2-core machine.
		assert.Less(t, took, budget+time.Second)

		// Both gateways' handlers have returned (the upstream call ends at
		// the deadline): no late handler holds a connection to the hop
		// behind.
		for _, gw := range []string{front, back} {
			waitFor(t, "no late handler in "+gw, func() bool {
				c := counters(t, client, gw)
				return c.Requests == 2 && c.LateRunning == 0
			})
		}
		// The back gateway's client closes its connection to the demo at
		// its deadline (the tap closes both sides): the demo sees its
		// client gone, and its handler, which honours its context, stops
		// then, long before its 20 s sleep would end.
		waitFor(t, "the demo sees its client gone and its handler stop", func() bool {
			c := counters(t, client, demo)
			return c.ClientGone == 1 && c.InFlight == 0
		})
	})
}

// build builds the command in dir into out, from dir, so that it works
// whether the command is a package of this module or a module of its own.
func build(t *testing.T, dir, out string) string {
	t.Helper()
	abs, err := filepath.Abs(out)
	require.NoError(t, err)
	cmd := exec.Command("go", "build", "-o", abs, ".")
	cmd.Dir = dir
	output, err := cmd.CombinedOutput()
	require.NoError(t, err, "go build in %s: %s", dir, output)
	return abs
}

var listeningOn = regexp.MustCompile(`listening on (127\.0\.0\.1:\d+)`)

// start runs bin with the environment variable env and args, and returns
// the address it says it listens on; the test's cleanup stops it.
func start(t *testing.T, bin, env string, args ...string) string {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), env)
	stderr, err := cmd.StderrPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	exited := make(chan struct{})
	addrs := make(chan string, 1)
	go func() {
		defer close(exited)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			if m := listeningOn.FindStringSubmatch(sc.Text()); m != nil {
				select {
				case addrs <- m[1]:
				default:
				}
			}
			t.Logf("%s: %s", filepath.Base(bin), sc.Text())
		}
		_ = cmd.Wait()
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(os.Interrupt)
		select {
		case <-exited:
		case <-time.After(waitTimeout):
			_ = cmd.Process.Kill()
			<-exited
		}
	})
	select {
	case addr := <-addrs:
		return addr
	case <-exited:
		t.Fatalf("%s exited before listening", bin)
	case <-time.After(waitTimeout):
		t.Fatalf("%s did not listen within %v", bin, waitTimeout)
	}
	return ""
}

// seen is a request as a tap saw it: when, and its deadline headers.
type seen struct {
	at          time.Time
	grpc, envoy time.Duration // 0 if absent
}

// budget is the smallest of the budgets seen.
func (s seen) budget() time.Duration {
	switch {
	case s.envoy == 0:
		return s.grpc
	case s.grpc == 0:
		return s.envoy
	}
	return min(s.grpc, s.envoy)
}

func (s seen) String() string {
	return "grpc-timeout " + s.grpc.String() + ", x-envoy-expected-rq-timeout-ms " + s.envoy.String()
}

// tap is a loopback TCP relay to a server that records each request it
// passes on.
type tap struct {
	addr string
	seen chan seen
}

func startTap(t *testing.T, server string) *tap {
	t.Helper()
	tp := &tap{seen: make(chan seen, 16)}
	tp.addr = serveLoopback(t, func(in net.Conn) { tp.relay(in, server) })
	return tp
}

// relay passes requests from in to server one by one, recording them, and
// the server's bytes back as they come. Either side closing closes both.
func (tp *tap) relay(in net.Conn, server string) {
	defer in.Close()
	out, err := net.Dial("tcp", server)
	if err != nil {
		return
	}
	defer out.Close()
	go func() {
		_, _ = io.Copy(in, out)
		_ = in.Close()
	}()
	br, bw := bufio.NewReader(in), bufio.NewWriter(out)
	for {
		var req fasthttp.Request
		if req.Read(br) != nil {
			return
		}
		s := seen{at: time.Now()}
		if v := req.Header.Peek(fasttimeout.HeaderGRPCTimeout); v != nil {
			s.grpc = parseGRPC(v)
		}
		if v := req.Header.Peek(fasttimeout.HeaderEnvoyExpectedTimeout); v != nil {
			ms, _ := strconv.Atoi(string(v))
			s.envoy = time.Duration(ms) * time.Millisecond
		}
		select {
		case tp.seen <- s:
		default:
		}
		if req.Write(bw) != nil || bw.Flush() != nil {
			return
		}
	}
}

// parseGRPC parses the grpc-timeout values of this test: "2S", "500m".
func parseGRPC(v []byte) time.Duration {
	s := string(v)
	n, _ := strconv.Atoi(s[:len(s)-1])
	if strings.HasSuffix(s, "S") {
		return time.Duration(n) * time.Second
	}
	return time.Duration(n) * time.Millisecond
}

// counters reads a gateway's counters at /debug/vars.
func counters(t *testing.T, client *fasthttp.Client, addr string) fasttimeout.Counters {
	t.Helper()
	req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	req.SetRequestURI("http://" + addr + "/debug/vars")
	require.NoError(t, client.DoTimeout(req, resp, waitTimeout))
	var vars struct {
		Fasttimeout fasttimeout.Counters `json:"fasttimeout"`
	}
	require.NoError(t, json.Unmarshal(resp.Body(), &vars), "%s", resp.Body())
	return vars.Fasttimeout
}
