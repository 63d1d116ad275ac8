package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/valyala/fasthttp"

	"github.com/fasttimeout/fasttimeout"
)

// startUpstream serves h on a loopback port and returns its address.
func startUpstream(t *testing.T, h fasthttp.RequestHandler) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	server := &fasthttp.Server{Handler: h}
	go func() { _ = server.Serve(ln) }()
	t.Cleanup(func() { _ = server.Shutdown() })
	return ln.Addr().String()
}

// startGateway runs the gateway in-process on a loopback port with args
// and returns its address; the test's cleanup stops it and checks that it
// exits with status 0.
func startGateway(t *testing.T, args ...string) string {
	t.Helper()
	addr, _ := startGatewayLogged(t, args...)
	return addr
}

// startGatewayLogged is startGateway that also returns what the gateway
// writes to its stderr.
func startGatewayLogged(t *testing.T, args ...string) (addr string, stderr *syncBuffer) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	addrs := make(chan string, 1)
	exited := make(chan int, 1)
	stderr = new(syncBuffer) // the server's goroutines write to it
	go func() {
		exited <- run(ctx, append([]string{"-addr", "127.0.0.1:0"}, args...), stderr, func(a net.Addr) { addrs <- a.String() })
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case code := <-exited:
			assert.Zero(t, code, "exit status; stderr: %s", stderr.String())
			assert.Zero(t, serving(), "goroutines that run started, still running after it returned")
		case <-time.After(10 * time.Second):
			t.Error("gateway did not stop within 10s")
		}
	})
	select {
	case a := <-addrs:
		return a, stderr
	case code := <-exited:
		t.Fatalf("gateway exited with %d: %s", code, stderr.String())
	case <-time.After(10 * time.Second):
		t.Fatal("gateway did not listen within 10s")
	}
	return "", stderr
}

// syncBuffer is a bytes.Buffer safe for a logger and a test to share.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// call sends a request to the gateway and returns the response.
func call(t *testing.T, addr, method, path, body string, kv ...string) *fasthttp.Response {
	t.Helper()
	req, resp := fasthttp.AcquireRequest(), new(fasthttp.Response)
	defer fasthttp.ReleaseRequest(req)
	req.SetRequestURI("http://" + addr + path)
	req.Header.SetMethod(method)
	req.SetBodyString(body)
	for i := 0; i < len(kv); i += 2 {
		req.Header.Set(kv[i], kv[i+1])
	}
	client := &fasthttp.Client{MaxIdemponentCallAttempts: 1}
	require.NoError(t, client.DoTimeout(req, resp, 10*time.Second))
	return resp
}

func TestGateway(t *testing.T) {
	t.Run("forwards the request and sends the upstream's answer back", func(t *testing.T) {
		upstream := startUpstream(t, func(ctx *fasthttp.RequestCtx) {
			ctx.SetStatusCode(fasthttp.StatusCreated)
			ctx.Response.Header.Set("X-Upstream", "yes")
			ctx.Response.Header.SetBytesV("Got-Budget", ctx.Request.Header.Peek(fasttimeout.HeaderEnvoyExpectedTimeout))
			ctx.Response.Header.SetBytesV("Got-Forwarded-For", ctx.Request.Header.Peek(fasthttp.HeaderXForwardedFor))
			ctx.SetBodyString(string(ctx.Method()) + " " + string(ctx.RequestURI()) + " " + string(ctx.PostBody()))
		})
		t.Setenv("REQUEST_TIMEOUT", "2s")
		gateway := startGateway(t, "-upstream", upstream)

		resp := call(t, gateway, "POST", "/items?id=7", "hello")
		assert.Equal(t, fasthttp.StatusCreated, resp.StatusCode())
		assert.Equal(t, "POST /items?id=7 hello", string(resp.Body()))
		assert.Equal(t, "yes", string(resp.Header.Peek("X-Upstream")))
		assert.Equal(t, "127.0.0.1", string(resp.Header.Peek("Got-Forwarded-For")))
		budget, err := strconv.Atoi(string(resp.Header.Peek("Got-Budget")))
		require.NoError(t, err)
		assert.LessOrEqual(t, budget, 2000)
		assert.Greater(t, budget, 1000)
	})

	t.Run("passes the caller's deadline less the margin upstream", func(t *testing.T) {
		upstream := startUpstream(t, func(ctx *fasthttp.RequestCtx) {
			ctx.SetBody(ctx.Request.Header.Peek(fasttimeout.HeaderGRPCTimeout))
		})
		gateway := startGateway(t, "-upstream", upstream, "-margin", "500ms")

		resp := call(t, gateway, "GET", "/", "", "grpc-timeout", "2S")
		require.Equal(t, fasthttp.StatusOK, resp.StatusCode())
		got := string(resp.Body())
		require.True(t, strings.HasSuffix(got, "m"), "grpc-timeout rewritten in milliseconds: %q", got)
		ms, err := strconv.Atoi(strings.TrimSuffix(got, "m"))
		require.NoError(t, err)
		assert.LessOrEqual(t, ms, 1500)
		assert.Greater(t, ms, 1000)
	})

	t.Run("answers 504 when the upstream does not answer in time", func(t *testing.T) {
		release := make(chan struct{})
		upstream := startUpstream(t, func(ctx *fasthttp.RequestCtx) { <-release })
		t.Cleanup(func() { close(release) }) // runs before the upstream's shutdown
		t.Setenv("REQUEST_TIMEOUT", "0.1")
		gateway := startGateway(t, "-upstream", upstream)

		start := time.Now()
		resp := call(t, gateway, "GET", "/slow", "")
		assert.Equal(t, fasthttp.StatusGatewayTimeout, resp.StatusCode())
		assert.Equal(t, fasttimeout.DefaultBody, string(resp.Body()), "the middleware's timeout body, whoever saw the deadline")
		assert.Less(t, time.Since(start), 5*time.Second)
	})

	t.Run("answers 504 at once for a spent budget, without calling the upstream", func(t *testing.T) {
		var calls atomic.Int64
		upstream := startUpstream(t, func(ctx *fasthttp.RequestCtx) { calls.Add(1) })
		gateway := startGateway(t, "-upstream", upstream)

		before := stats.Snapshot()
		resp := call(t, gateway, "GET", "/", "", "grpc-timeout", "0S")
		assert.Equal(t, fasthttp.StatusGatewayTimeout, resp.StatusCode())
		assert.Equal(t, fasttimeout.DefaultBody, string(resp.Body()))
		assert.Zero(t, calls.Load())
		assert.Equal(t, before.SpentBudgets+1, stats.Snapshot().SpentBudgets, "spent_budgets at /debug/vars")
	})

	t.Run("answers 502 when the upstream is down, and logs why to its stderr", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		down := ln.Addr().String()
		require.NoError(t, ln.Close())
		gateway, stderr := startGatewayLogged(t, "-upstream", down)

		resp := call(t, gateway, "GET", "/", "")
		assert.Equal(t, fasthttp.StatusBadGateway, resp.StatusCode())
		// Logged before the answer is written; through the server's
		// logger, which has run's stderr and prefix as its other lines do.
		assert.Regexp(t, `(?m)^gateway: .* - GET http://`+regexp.QuoteMeta(gateway)+`/ - upstream: .*`+regexp.QuoteMeta(down), stderr.String())
	})

	t.Run("publishes its counters at /debug/vars", func(t *testing.T) {
		upstream := startUpstream(t, func(ctx *fasthttp.RequestCtx) {})
		gateway := startGateway(t, "-upstream", upstream)
		before := stats.Snapshot()
		call(t, gateway, "GET", "/", "", "grpc-timeout", "soon")

		resp := call(t, gateway, "GET", "/debug/vars", "")
		require.Equal(t, fasthttp.StatusOK, resp.StatusCode())
		var vars struct {
			Fasttimeout fasttimeout.Counters `json:"fasttimeout"`
		}
		require.NoError(t, json.Unmarshal(resp.Body(), &vars), "%s", resp.Body())
		assert.Equal(t, before.Requests+1, vars.Fasttimeout.Requests, "/debug/vars itself is not counted")
		assert.Equal(t, before.BadDeadlineHeaders+1, vars.Fasttimeout.BadDeadlineHeaders)
	})
}

func TestBadInput(t *testing.T) {
	for _, tc := range []struct {
		name, env string
		args      []string
		want      string
	}{
		{name: "unknown flag", args: []string{"-bogus"}, want: "flag provided but not defined: -bogus"},
		{name: "negative margin", args: []string{"-margin", "-1s"}, want: "-margin must not be negative"},
		{name: "margin not a duration", args: []string{"-margin", "soon"}, want: "invalid value"},
		// A margin of the timeout or more spends at once the budget of
		// every caller that has no more time than the gateway: 504s for
		// nothing. The free port: a gateway that wrongly starts must not
		// fail for want of 8081.
		{name: "margin of an hour", args: []string{"-addr", "127.0.0.1:0", "-margin", "1h"}, want: "-margin must be less than REQUEST_TIMEOUT (5s), got 1h0m0s"},
		{name: "margin of the timeout", env: "2", args: []string{"-addr", "127.0.0.1:0", "-margin", "2s"}, want: "-margin must be less than REQUEST_TIMEOUT (2s), got 2s"},
		{name: "default margin over a tiny timeout", env: "5ms", args: []string{"-addr", "127.0.0.1:0"}, want: "-margin must be less than REQUEST_TIMEOUT (5ms), got 5ms"},
		{name: "negative cap", args: []string{"-max-late", "-1"}, want: "-max-late must not be negative"},
		{name: "no upstream connections", args: []string{"-max-conns", "0"}, want: "-max-conns must be positive"},
		{name: "no request body", args: []string{"-max-body", "0"}, want: "-max-body must be positive"},
		{name: "header buffer too small", args: []string{"-max-header-bytes", "1023"}, want: "-max-header-bytes must be from 1024 to 1048576, got 1023"},
		{name: "header buffer too large", args: []string{"-max-header-bytes", "1048577"}, want: "-max-header-bytes must be from 1024 to 1048576, got 1048577"},
		{name: "max-header-bytes in hex", args: []string{"-addr", "127.0.0.1:0", "-max-header-bytes", "0x2000"}, want: `invalid value "0x2000" for flag -max-header-bytes: want a decimal number`},
		{name: "adaptive not a boolean", args: []string{"-adaptive=maybe"}, want: "invalid boolean value"},
		// Go's literal forms, which flag.Int reads ("0x10" as 16): a count
		// is decimal. The free port: a gateway that wrongly starts must not
		// fail for want of 8081.
		{name: "max-late in hex", args: []string{"-addr", "127.0.0.1:0", "-max-late", "0x10"}, want: `invalid value "0x10" for flag -max-late: want a decimal number`},
		{name: "max-conns with underscores", args: []string{"-addr", "127.0.0.1:0", "-max-conns", "1_000"}, want: `invalid value "1_000" for flag -max-conns: want a decimal number`},
		{name: "max-body in octal", args: []string{"-addr", "127.0.0.1:0", "-max-body", "0o17"}, want: `invalid value "0o17" for flag -max-body: want a decimal number`},
		{name: "max-body in binary", args: []string{"-addr", "127.0.0.1:0", "-max-body", "0b11"}, want: `invalid value "0b11" for flag -max-body: want a decimal number`},
		{name: "max-late with a plus sign", args: []string{"-addr", "127.0.0.1:0", "-max-late", "+16"}, want: `invalid value "+16" for flag -max-late: want a decimal number`},
		{name: "max-conns out of range", args: []string{"-addr", "127.0.0.1:0", "-max-conns", "99999999999999999999"}, want: `invalid value "99999999999999999999" for flag -max-conns: out of range`},
		{name: "max-late not a number", args: []string{"-max-late", "many"}, want: `invalid value "many" for flag -max-late: want a decimal number`},
		{name: "upstream without port", args: []string{"-upstream", "example"}, want: "-upstream wants host:port"},
		// fasthttp dials numeric ports only: a service name, or a port out
		// of range, would make every request a 502.
		{name: "upstream port not a number", args: []string{"-upstream", "localhost:http"}, want: "-upstream wants a port number"},
		{name: "upstream port out of range", args: []string{"-upstream", "127.0.0.1:99999"}, want: "-upstream wants a port number"},
		{name: "upstream port 0", args: []string{"-upstream", "127.0.0.1:0"}, want: "-upstream wants a port number"},
		// fasthttp's client takes ":8080" for a host without a port, dials
		// ":8080:80", and every request would be a 502.
		{name: "upstream without host", args: []string{"-upstream", ":8080"}, want: `-upstream wants a host before its port (127.0.0.1:8080, say), got ":8080"`},
		{name: "addr and upstream both bad: the first flag's error", args: []string{"-addr", "nope", "-upstream", "nope"}, want: `-addr wants host:port, got "nope"`},
		// The gateway would forward each request to itself until its time
		// ran out: a 504 for every request.
		{name: "upstream is addr", args: []string{"-addr", "127.0.0.1:8081", "-upstream", "127.0.0.1:8081"}, want: "-upstream 127.0.0.1:8081 is the gateway's own -addr 127.0.0.1:8081: each request would come back to it"},
		{name: "upstream is addr, written otherwise", args: []string{"-addr", "[::ffff:127.0.0.1]:08081", "-upstream", "127.0.0.1:8081"}, want: "is the gateway's own -addr"},
		{name: "upstream is localhost, addr every address", args: []string{"-addr", ":8081", "-upstream", "localhost:8081"}, want: "-upstream localhost:8081 is the gateway's own -addr :8081"},
		{name: "upstream is localhost, addr loopback", args: []string{"-addr", "127.0.0.1:8081", "-upstream", "LOCALHOST:8081"}, want: "-upstream LOCALHOST:8081 is the gateway's own -addr 127.0.0.1:8081"},
		{name: "upstream is loopback, addr every IPv6 address", args: []string{"-addr", "[::]:8081", "-upstream", "[::1]:8081"}, want: "is the gateway's own -addr"},
		// Listen takes localhost's IPv4 address, 127.0.0.1 (the name
		// resolves to it here, as /etc/hosts has it nearly everywhere).
		{name: "upstream is addr, addr named localhost", args: []string{"-addr", "localhost:8081", "-upstream", "127.0.0.1:8081"}, want: "-upstream 127.0.0.1:8081 is the gateway's own -addr localhost:8081 (127.0.0.1:8081)"},
		{name: "addr port out of range", args: []string{"-addr", "127.0.0.1:99999"}, want: "-addr wants a port number"},
		{name: "extra argument", args: []string{"serve"}, want: `unexpected argument "serve"`},
		{name: "REQUEST_TIMEOUT garbage", env: "abc", want: `REQUEST_TIMEOUT="abc"`},
		{name: "REQUEST_TIMEOUT negative", env: "-5", want: "must be positive"},
		{name: "REQUEST_TIMEOUT absurd", env: "48h", want: "more than 24h0m0s"},
	} {
		t.Run(tc.name+" exits 2 with one line", func(t *testing.T) {
			t.Setenv("REQUEST_TIMEOUT", tc.env)
			var stderr bytes.Buffer
			// Cancelled: a gateway that wrongly starts stops at once rather
			// than serving until the test times out.
			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			code := run(ctx, tc.args, &stderr, func(net.Addr) { t.Error("must not listen") })
			assert.Equal(t, 2, code)
			assert.Contains(t, stderr.String(), tc.want)
			assert.True(t, strings.HasPrefix(stderr.String(), "gateway: "), stderr.String())
			assert.True(t, strings.HasSuffix(stderr.String(), " (see gateway -h)\n"), "points to the usage: %q", stderr.String())
			assert.Equal(t, 1, strings.Count(stderr.String(), "\n"), "one line: %q", stderr.String())
		})
	}

	t.Run("-h prints the usage, with each default and unit, and exits 0", func(t *testing.T) {
		var stderr bytes.Buffer
		assert.Zero(t, run(context.Background(), []string{"-h"}, &stderr, nil))
		help := stderr.String()
		for _, want := range []string{
			"Usage: gateway [-addr host:port] [-upstream host:port]",
			"REQUEST_TIMEOUT  request timeout, seconds (5, 2.5) or a Go duration (500ms, 1m)",
			"unset or empty means 5s",
			"-addr host:port", `(default "127.0.0.1:8081")`,
			"-upstream host:port", `(default "127.0.0.1:8080")`,
			"-margin duration", "a Go duration", "less than REQUEST_TIMEOUT", "(default 5ms)",
			"-max-late n", "(default 1000)",
			"-max-conns n", "(default 512)",
			"-max-body bytes", "4 MiB", "(default 4194304)",
			"[-max-header-bytes bytes]", "-max-header-bytes bytes", "431", "502", "(default 4096)",
			"-trust-envoy-headers",
			"-adaptive", "(default true)",
			"a second one during that wait stops it at once",
			"Exit status:", "a second SIGINT (130) or SIGTERM (143)",
		} {
			assert.Contains(t, help, want)
		}
	})
}

// TestLogLines checks that the lines the gateway writes once its options
// are read, the fatal ones too, carry the prefix and the time its
// logger's lines do; only a bad flag's line, before it starts, has none.
func TestLogLines(t *testing.T) {
	t.Setenv("REQUEST_TIMEOUT", "")
	logLine := regexp.MustCompile(`^gateway: \d{4}/\d{2}/\d{2} \d{2}:\d{2}:\d{2} `)

	t.Run("a listen failure exits 1 with one logged line", func(t *testing.T) {
		taken, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		defer taken.Close()
		var stderr bytes.Buffer
		ctx, cancel := context.WithCancel(context.Background())
		cancel() // a gateway that wrongly listens stops at once
		code := run(ctx, []string{"-addr", taken.Addr().String()}, &stderr, func(net.Addr) { t.Error("must not listen") })
		assert.Equal(t, 1, code)
		assert.Equal(t, 1, strings.Count(stderr.String(), "\n"), "one line: %q", stderr.String())
		assert.Regexp(t, logLine, stderr.String())
		assert.Contains(t, stderr.String(), "listen tcp "+taken.Addr().String())
	})

	t.Run("every line from start to stop", func(t *testing.T) {
		var stderr bytes.Buffer
		ctx, cancel := context.WithCancel(context.Background())
		code := run(ctx, []string{"-addr", "127.0.0.1:0"}, &stderr, func(net.Addr) { cancel() })
		require.Zero(t, code, stderr.String())
		lines := strings.Split(strings.TrimSuffix(stderr.String(), "\n"), "\n")
		require.NotEmpty(t, lines)
		assert.Contains(t, lines[0], "listening on 127.0.0.1:")
		for _, line := range lines {
			assert.Regexp(t, logLine, line)
		}
	})
}

// TestStopAtStart ends the context before the Serve goroutine runs, as a
// SIGTERM while the gateway starts does: fasthttp's Shutdown closes only the
// listeners Serve has registered, so the gateway must not go on accepting
// once run has returned, nor still be starting to serve.
func TestStopAtStart(t *testing.T) {
	t.Setenv("REQUEST_TIMEOUT", "")
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	for range 20 {
		var addr string
		var stderr bytes.Buffer
		code := run(ctx, []string{"-addr", "127.0.0.1:0"}, &stderr, func(a net.Addr) { addr = a.String() })
		require.Zero(t, code, stderr.String())
		conn, err := net.Dial("tcp", addr)
		if err == nil {
			_ = conn.Close()
			t.Fatalf("%s still accepts connections after run returned", addr)
		}
		require.Zero(t, serving(), "goroutines that run started, still running after it returned")
	}
}

// serving counts the goroutines that run started (Serve's) and that are
// still running, not merely exiting once their work is done. Only one test
// at a time calls run: those that do are not parallel.
func serving() int {
	buf := make([]byte, 1<<20)
	n := runtime.Stack(buf, true)
	for n == len(buf) {
		buf = make([]byte, 2*len(buf))
		n = runtime.Stack(buf, true)
	}
	count := 0
	for g := range strings.SplitSeq(string(buf[:n]), "\n\n") {
		_, frames, _ := strings.Cut(g, "\n")
		if strings.Contains(g, "\ncreated by github.com/fasttimeout/fasttimeout/cmd/gateway.run in ") &&
			!strings.HasPrefix(frames, "runtime.goexit1(") {
			count++
		}
	}
	return count
}

func TestOptions(t *testing.T) {
	t.Setenv("REQUEST_TIMEOUT", "")
	for _, tc := range []struct {
		args         []string
		wantAdaptive bool
	}{
		{nil, true},
		{[]string{"-adaptive"}, true},
		{[]string{"-adaptive=true"}, true},
		{[]string{"-adaptive=false"}, false},
	} {
		o, err := parseOptions(tc.args, io.Discard)
		require.NoError(t, err, tc.args)
		assert.Equal(t, tc.wantAdaptive, o.adaptive, tc.args)
	}

	t.Run("counts are decimal, a leading zero too", func(t *testing.T) {
		// flag.Int read "010" as octal 8.
		o, err := parseOptions([]string{"-max-late", "010", "-max-conns", "010", "-max-body", "0100", "-max-header-bytes", "08192"}, io.Discard)
		require.NoError(t, err)
		assert.Equal(t, 10, o.maxLate)
		assert.Equal(t, 10, o.maxConns)
		assert.Equal(t, 100, o.maxBody)
		assert.Equal(t, 8192, o.maxHeader)

		o, err = parseOptions(nil, io.Discard)
		require.NoError(t, err)
		assert.Equal(t, 1000, o.maxLate, "the default")
		assert.Equal(t, fasthttp.DefaultMaxConnsPerHost, o.maxConns, "the default")
		assert.Equal(t, fasthttp.DefaultMaxRequestBodySize, o.maxBody, "the default")
		assert.Equal(t, 4096, o.maxHeader, "the default, fasthttp's ReadBufferSize")
	})

	t.Run("-adaptive=false serves", func(t *testing.T) {
		upstream := startUpstream(t, func(ctx *fasthttp.RequestCtx) { ctx.SetBodyString("up") })
		gateway := startGateway(t, "-upstream", upstream, "-adaptive=false")
		resp := call(t, gateway, "GET", "/", "")
		assert.Equal(t, fasthttp.StatusOK, resp.StatusCode())
		assert.Equal(t, "up", string(resp.Body()))
	})
}

func TestForwardsToItself(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		addr, upstream string
		want           bool
	}{
		{"127.0.0.1:8081", "127.0.0.1:8081", true},
		{"localhost:8081", "LOCALHOST:8081", true},
		{"127.0.0.1:8081", "[::ffff:127.0.0.1]:8081", true},
		{":8081", "127.0.0.1:8081", true},
		{"0.0.0.0:8081", "[::1]:8081", true},
		{"[::]:8081", "localhost:8081", true},
		{":8081", "0.0.0.0:8081", true},
		{"127.0.0.1:8081", "127.0.0.1:8080", false}, // the defaults
		{"127.0.0.1:0", "127.0.0.1:8080", false},    // any free port: not the upstream's, which is taken
		{"127.0.0.1:8081", "127.0.0.2:8081", false}, // another address
		{"127.0.0.1:8081", "localhost:8081", true},  // dialled in turn with ::1: some connections come back
		{"[::1]:8081", "LocalHost:8081", true},
		{"127.0.0.1:8081", "localhost:8080", false}, // another port
		{"192.0.2.1:8081", "localhost:8081", false}, // not a loopback address
		{":8081", "192.0.2.1:8081", false},          // names and other addresses are not resolved
		{"[::1]:8081", "example.com:8081", false},   // nor compared
	} {
		assert.Equal(t, tc.want, forwardsToItself(tc.addr, tc.upstream), "-addr %s -upstream %s", tc.addr, tc.upstream)
	}
}
