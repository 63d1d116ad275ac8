package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
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

// waitTimeout bounds every wait of these tests for something that should
// happen at once.
const waitTimeout = 10 * time.Second

// waitFor polls cond until it holds or waitTimeout passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	deadline := time.After(waitTimeout)
	for !cond() {
		select {
		case <-tick.C:
		case <-deadline:
			t.Fatalf("%s: not within %v", what, waitTimeout)
		}
	}
}

// startRawUpstream serves each request read on a loopback port with the
// raw response bytes answer returns for it, so that a test controls the
// wire; it returns the address.
func startRawUpstream(t *testing.T, answer func(req *fasthttp.Request) string) string {
	t.Helper()
	return serveLoopback(t, func(c net.Conn) {
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(waitTimeout))
		br := bufio.NewReader(c)
		for {
			var req fasthttp.Request
			if req.Read(br) != nil {
				return
			}
			if _, err := c.Write([]byte(answer(&req))); err != nil {
				return
			}
		}
	})
}

// serveLoopback listens on 127.0.0.1 and runs serve on each connection in
// a goroutine of its own; the test's cleanup closes the listener and the
// connections still open (the gateway keeps its idle upstream connections
// past its own stop), and waits for every serve to return. It returns the
// address.
func serveLoopback(t *testing.T, serve func(net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	var (
		serving sync.WaitGroup
		mu      sync.Mutex
		open    = map[net.Conn]struct{}{}
	)
	t.Cleanup(func() {
		_ = ln.Close()
		mu.Lock()
		for c := range open {
			_ = c.Close()
		}
		open = nil
		mu.Unlock()
		serving.Wait()
	})
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			if open == nil { // accepted as the cleanup ran
				mu.Unlock()
				_ = c.Close()
				return
			}
			open[c] = struct{}{}
			mu.Unlock()
			serving.Go(func() {
				serve(c)
				mu.Lock()
				delete(open, c)
				mu.Unlock()
			})
		}
	}()
	return ln.Addr().String()
}

// rawCall writes request to addr as is and reads the response.
func rawCall(t *testing.T, addr, request string) *fasthttp.Response {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	defer c.Close()
	require.NoError(t, c.SetDeadline(time.Now().Add(waitTimeout)))
	_, err = c.Write([]byte(request))
	require.NoError(t, err)
	resp := new(fasthttp.Response)
	// Room for heads over bufio's 4 KiB (TestProxyHeaderSize).
	require.NoError(t, resp.Read(bufio.NewReaderSize(c, 64<<10)))
	return resp
}

// rawExchange writes request to addr as is and returns all it reads until
// the gateway closes the connection.
func rawExchange(t *testing.T, addr, request string) string {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	defer c.Close()
	require.NoError(t, c.SetDeadline(time.Now().Add(waitTimeout)))
	_, err = c.Write([]byte(request))
	require.NoError(t, err)
	raw, err := io.ReadAll(c)
	require.NoError(t, err)
	return string(raw)
}

func TestProxyHeaders(t *testing.T) {
	t.Run("removes the headers named in Connection, and Proxy-Connection, both ways", func(t *testing.T) {
		got := make(chan string, 1)
		upstream := startRawUpstream(t, func(req *fasthttp.Request) string {
			var seen []string
			for _, name := range []string{"X-Foo", "X-Bar", "Proxy-Connection", "Keep-Alive", "X-Kept"} {
				if req.Header.Peek(name) != nil {
					seen = append(seen, name)
				}
			}
			got <- strings.Join(seen, ",")
			return "HTTP/1.1 200 OK\r\nConnection: X-Resp-Hop\r\nX-Resp-Hop: 1\r\nProxy-Connection: keep-alive\r\n" +
				"Keep-Alive: timeout=5\r\nX-Resp-Kept: 1\r\nContent-Length: 2\r\n\r\nok"
		})
		gateway := startGateway(t, "-upstream", upstream)

		resp := rawCall(t, gateway, "GET / HTTP/1.1\r\nHost: example.com\r\nConnection: keep-alive, X-Foo\r\nConnection: X-Bar\r\n"+
			"X-Foo: 1\r\nX-Bar: 2\r\nProxy-Connection: keep-alive\r\nKeep-Alive: timeout=5\r\nX-Kept: 3\r\n\r\n")
		require.Equal(t, fasthttp.StatusOK, resp.StatusCode())
		assert.Equal(t, "X-Kept", <-got, "request headers the upstream got")
		assert.Equal(t, "ok", string(resp.Body()))
		assert.Nil(t, resp.Header.Peek("X-Resp-Hop"), "named in the upstream's Connection")
		assert.Nil(t, resp.Header.Peek("Proxy-Connection"))
		assert.Nil(t, resp.Header.Peek("Keep-Alive"))
		assert.Equal(t, "1", string(resp.Header.Peek("X-Resp-Kept")))
	})

	t.Run("keeps the framing of a response whose Connection names Content-Length", func(t *testing.T) {
		upstream := startRawUpstream(t, func(*fasthttp.Request) string {
			return "HTTP/1.1 200 OK\r\nConnection: Content-Length, X-Hop\r\nX-Hop: 1\r\nContent-Length: 5\r\n\r\nhello"
		})
		gateway := startGateway(t, "-upstream", upstream)

		// GET's body is streamed, HEAD's answer copied whole: both keep the
		// length, which frames the body the client is sent.
		for method, want := range map[string]string{"GET": "hello", "HEAD": ""} {
			raw := rawExchange(t, gateway, method+" / HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n")
			head, body, found := strings.Cut(raw, "\r\n\r\n")
			require.True(t, found, "%s: the gateway answered %q", method, raw)
			assert.True(t, strings.HasPrefix(head, "HTTP/1.1 200 OK"), "%s: %q", method, head)
			assert.Contains(t, head, "\r\nContent-Length: 5\r\n", method)
			assert.NotContains(t, head, "X-Hop", method)
			assert.Equal(t, want, body, method)
		}
	})

	t.Run("forwards trailers both ways", func(t *testing.T) {
		got := make(chan string, 1)
		upstream := startRawUpstream(t, func(req *fasthttp.Request) string {
			got <- string(req.Header.PeekTrailer("X-Checksum")) + " " + string(req.Body())
			return "HTTP/1.1 200 OK\r\nTrailer: X-Sum\r\nTransfer-Encoding: chunked\r\n\r\n" +
				"5\r\nhello\r\n0\r\nX-Sum: 42\r\nX-Unannounced: yes\r\n\r\n"
		})
		gateway := startGateway(t, "-upstream", upstream)

		resp := rawCall(t, gateway, "POST / HTTP/1.1\r\nHost: example.com\r\nTrailer: X-Checksum\r\n"+
			"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-Checksum: abc\r\n\r\n")
		require.Equal(t, fasthttp.StatusOK, resp.StatusCode())
		assert.Equal(t, "abc hello", <-got, "the upstream's request trailer and body")
		assert.Equal(t, "hello", string(resp.Body()))
		assert.Equal(t, "42", string(resp.Header.PeekTrailer("X-Sum")), "response trailer")
		assert.Equal(t, "yes", string(resp.Header.PeekTrailer("X-Unannounced")), "response trailer")
	})

	t.Run("adds the caller's address to its X-Forwarded-For in one line", func(t *testing.T) {
		got := make(chan []string, 1)
		upstream := startUpstream(t, func(ctx *fasthttp.RequestCtx) {
			var lines []string
			for _, v := range ctx.Request.Header.PeekAll(fasthttp.HeaderXForwardedFor) {
				lines = append(lines, string(v))
			}
			got <- lines
		})
		gateway := startGateway(t, "-upstream", upstream)

		resp := rawCall(t, gateway, "GET / HTTP/1.1\r\nHost: example.com\r\n"+
			"X-Forwarded-For: 192.0.2.1, 192.0.2.2\r\nX-Forwarded-For: 192.0.2.3\r\n\r\n")
		require.Equal(t, fasthttp.StatusOK, resp.StatusCode())
		assert.Equal(t, []string{"192.0.2.1, 192.0.2.2, 192.0.2.3, 127.0.0.1"}, <-got,
			"a reader of the first line (Peek) sees the whole chain, the gateway's entry last")
	})

	// RFC 9110 §7.6.3: a gateway MUST send Via in each request it forwards,
	// with the protocol version it received the request in, after the
	// entries of the hops before it.
	t.Run("adds itself to Via, with the caller's HTTP version, in one line", func(t *testing.T) {
		got := make(chan []string, 1)
		upstream := startUpstream(t, func(ctx *fasthttp.RequestCtx) {
			var lines []string
			for _, v := range ctx.Request.Header.PeekAll(fasthttp.HeaderVia) {
				lines = append(lines, string(v))
			}
			got <- lines
		})
		gateway := startGateway(t, "-upstream", upstream)

		for _, tc := range []struct{ name, request, want string }{
			{name: "HTTP/1.1", request: "GET / HTTP/1.1\r\nHost: example.com\r\n\r\n", want: "1.1 fasttimeout-gateway"},
			{name: "HTTP/1.0", request: "GET / HTTP/1.0\r\nHost: example.com\r\n\r\n", want: "1.0 fasttimeout-gateway"},
			{
				name:    "after the caller's entries",
				request: "GET / HTTP/1.1\r\nHost: example.com\r\nVia: 1.0 fred, 1.1 p.example.net\r\nVia: HTTP/2.0 edge\r\n\r\n",
				want:    "1.0 fred, 1.1 p.example.net, HTTP/2.0 edge, 1.1 fasttimeout-gateway",
			},
			{
				// Named in Connection, the caller's Via is hop-by-hop: it goes.
				name:    "a Via named in Connection",
				request: "GET / HTTP/1.1\r\nHost: example.com\r\nConnection: Via\r\nVia: 1.1 hop\r\n\r\n",
				want:    "1.1 fasttimeout-gateway",
			},
		} {
			resp := rawCall(t, gateway, tc.request)
			require.Equal(t, fasthttp.StatusOK, resp.StatusCode(), tc.name)
			assert.Equal(t, []string{tc.want}, <-got, tc.name)
			assert.Nil(t, resp.Header.Peek(fasthttp.HeaderVia), "%s: none on the response (a MAY, which nginx and Envoy do not by default)", tc.name)
		}
	})

	t.Run("forwards an HTTP/1.0 request as HTTP/1.1, with a Host if it had none", func(t *testing.T) {
		var accepted atomic.Int64
		got := make(chan string, 2)
		upstream := serveLoopback(t, func(c net.Conn) {
			defer c.Close()
			accepted.Add(1)
			_ = c.SetDeadline(time.Now().Add(waitTimeout))
			br := bufio.NewReader(c)
			for {
				var req fasthttp.Request
				if req.Read(br) != nil {
					return
				}
				got <- string(req.Header.Protocol()) + " " + string(req.Header.Host())
				if _, err := c.Write([]byte("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")); err != nil {
					return
				}
			}
		})
		gateway := startGateway(t, "-upstream", upstream)

		// An old health checker (HAProxy's httpchk) sends no Host.
		for _, request := range []string{"GET / HTTP/1.0\r\n\r\n", "GET / HTTP/1.0\r\nHost: example.com\r\n\r\n"} {
			resp := rawCall(t, gateway, request)
			require.Equal(t, fasthttp.StatusOK, resp.StatusCode(), "%q: %s", request, resp.Body())
		}
		assert.Equal(t, "HTTP/1.1 "+upstream, <-got, "the upstream's address, when the caller sent no Host")
		assert.Equal(t, "HTTP/1.1 example.com", <-got)
		assert.Equal(t, int64(1), accepted.Load(), "one upstream connection, kept alive")
	})

	// RFC 9110 §6.2: an intermediary sends its own HTTP version. An
	// HTTP/1.0 upstream's version on the gateway's answer made an HTTP/1.1
	// client read a chunked body as raw bytes until the connection closed.
	t.Run("answers in its own HTTP version, whatever the upstream's", func(t *testing.T) {
		for _, tc := range []struct{ name, method, answer, body string }{
			{name: "a body read until the upstream closes", method: "GET", answer: "HTTP/1.0 200 OK\r\n\r\nuntil-close", body: "until-close"},
			{name: "a body of known length", method: "GET", answer: "HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nhello", body: "hello"},
			{name: "an answer copied whole", method: "HEAD", answer: "HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\n"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				upstream := serveLoopback(t, func(c net.Conn) {
					defer c.Close() // after one answer: HTTP/1.0
					_ = c.SetDeadline(time.Now().Add(waitTimeout))
					var req fasthttp.Request
					if req.Read(bufio.NewReader(c)) == nil {
						_, _ = c.Write([]byte(tc.answer))
					}
				})
				gateway := startGateway(t, "-upstream", upstream)

				raw := rawExchange(t, gateway, tc.method+" / HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n")
				assert.True(t, strings.HasPrefix(raw, "HTTP/1.1 200 OK\r\n"), "%q", raw)
				// Read as net/http's client does.
				resp, err := http.ReadResponse(bufio.NewReader(strings.NewReader(raw)), &http.Request{Method: tc.method})
				require.NoError(t, err, "%q", raw)
				body, err := io.ReadAll(resp.Body)
				require.NoError(t, err, "%q", raw)
				assert.Equal(t, tc.body, string(body), "%q", raw)
			})
		}
	})

	// RFC 9110 §7.7: a proxy does not change the path or query it forwards.
	// fasthttp's client normalizes them by default: an ID with an encoded
	// slash (GitLab's /projects/group%2Fname) reached the upstream as two
	// path segments.
	t.Run("forwards the request target as received", func(t *testing.T) {
		got := make(chan string, 1)
		upstream := startRawUpstream(t, func(req *fasthttp.Request) string {
			got <- string(req.Header.RequestURI())
			return "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
		})
		gateway := startGateway(t, "-upstream", upstream)

		for _, target := range []string{
			"/projects/group%2Fname", "/a//b", "/a/./b/../c", "/%7Euser", "/caf%C3%A9", "/a%25b?q=a%20b&r=1+2",
		} {
			resp := rawCall(t, gateway, "GET "+target+" HTTP/1.1\r\nHost: example.com\r\n\r\n")
			require.Equal(t, fasthttp.StatusOK, resp.StatusCode(), target)
			assert.Equal(t, target, <-got)
		}
	})

	t.Run("answers with its own Server and Date, as nginx and Envoy do", func(t *testing.T) {
		upstream := startRawUpstream(t, func(req *fasthttp.Request) string {
			if string(req.URI().Path()) == "/chunked" {
				return "HTTP/1.1 200 OK\r\nServer: upstream/1.2.3\r\nDate: Mon, 01 Jan 2001 00:00:00 GMT\r\n" +
					"Transfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
			}
			return "HTTP/1.1 200 OK\r\nServer: upstream/1.2.3\r\nDate: Mon, 01 Jan 2001 00:00:00 GMT\r\nContent-Length: 2\r\n\r\nok"
		})
		gateway := startGateway(t, "-upstream", upstream)

		// A body of known length and a chunked one; HEAD's answer is
		// copied whole, GET's streamed.
		for _, target := range []string{"GET /", "HEAD /", "GET /chunked"} {
			raw := rawExchange(t, gateway, target+" HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n")
			head, _, found := strings.Cut(raw, "\r\n\r\n")
			require.True(t, found, "%s: the gateway answered %q", target, raw)
			require.True(t, strings.HasPrefix(head, "HTTP/1.1 200 OK"), "%s: %q", target, head)
			assert.Equal(t, 1, strings.Count(head, "\r\nServer: "), "%s: one Server line: %q", target, head)
			assert.Contains(t, head, "\r\nServer: fasttimeout-gateway\r\n", target)
			assert.NotContains(t, head, "upstream/1.2.3", target)
			assert.NotContains(t, head, "2001", "%s: the gateway's Date", target)
		}
	})

	t.Run("adds no Content-Type the upstream did not send", func(t *testing.T) {
		upstream := startRawUpstream(t, func(*fasthttp.Request) string {
			return "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 4\r\n\r\n\x89PNG"
		})
		gateway := startGateway(t, "-upstream", upstream)

		// HEAD is copied whole, GET's body streamed: both ways. Read raw, as
		// fasthttp's Peek reports text/plain for a missing Content-Type.
		for _, method := range []string{"HEAD", "GET"} {
			c, err := net.Dial("tcp", gateway)
			require.NoError(t, err)
			require.NoError(t, c.SetDeadline(time.Now().Add(waitTimeout)))
			_, err = c.Write([]byte(method + " / HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n"))
			require.NoError(t, err)
			raw, err := io.ReadAll(c)
			_ = c.Close()
			require.NoError(t, err)
			head, _, found := strings.Cut(string(raw), "\r\n\r\n")
			require.True(t, found, "%s: %q", method, raw)
			require.True(t, strings.HasPrefix(head, "HTTP/1.1 200 OK"), "%s: %q", method, head)
			assert.NotContains(t, strings.ToLower(head), "content-type", "%s: a client would take the body for text", method)
		}
	})

	// fasthttp's client writes "User-Agent: fasthttp" into a request
	// without one, and "Content-Type: application/octet-stream" into one
	// with a body and none: the upstream took the gateway's defaults for
	// the caller's (logs, bot rules, content sniffing). net/http's
	// ReverseProxy takes the same care for its User-Agent.
	t.Run("adds no User-Agent or Content-Type the caller did not send", func(t *testing.T) {
		type seen struct{ userAgent, contentType string }
		got := make(chan seen, 1)
		upstream := startRawUpstream(t, func(req *fasthttp.Request) string {
			got <- seen{string(req.Header.UserAgent()), string(req.Header.ContentType())}
			return "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
		})
		gateway := startGateway(t, "-upstream", upstream)

		for _, tc := range []struct {
			name, request string
			want          seen
		}{
			{name: "a GET without User-Agent", request: "GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"},
			{name: "a POST without Content-Type", request: "POST / HTTP/1.1\r\nHost: example.com\r\nContent-Length: 3\r\n\r\nabc"},
			{
				name:    "a POST with both, forwarded as they are",
				request: "POST / HTTP/1.1\r\nHost: example.com\r\nUser-Agent: curl/8\r\nContent-Type: text/csv\r\nContent-Length: 3\r\n\r\nabc",
				want:    seen{userAgent: "curl/8", contentType: "text/csv"},
			},
		} {
			resp := rawCall(t, gateway, tc.request)
			require.Equal(t, fasthttp.StatusOK, resp.StatusCode(), "%s: %s", tc.name, resp.Body())
			assert.Equal(t, tc.want, <-got, tc.name)
		}
	})

	for _, tc := range []struct {
		name    string
		args    []string
		forward bool
	}{
		{name: "removes the caller's X-Envoy-* control headers", forward: false},
		{name: "forwards them from a trusted caller", args: []string{"-trust-envoy-headers"}, forward: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := make(chan *fasthttp.RequestHeader, 1)
			upstream := startUpstream(t, func(ctx *fasthttp.RequestCtx) {
				h := new(fasthttp.RequestHeader)
				ctx.Request.Header.CopyTo(h)
				got <- h
			})
			gateway := startGateway(t, append([]string{"-upstream", upstream}, tc.args...)...)

			resp := call(t, gateway, "GET", "/", "",
				"X-Envoy-Upstream-Rq-Timeout-Ms", "1", "X-Envoy-Max-Retries", "5", "x-envoy-retry-on", "5xx",
				"X-Envoy-Expected-Rq-Timeout-Ms", "3000")
			require.Equal(t, fasthttp.StatusOK, resp.StatusCode())
			h := <-got
			for _, name := range []string{"X-Envoy-Upstream-Rq-Timeout-Ms", "X-Envoy-Max-Retries", "X-Envoy-Retry-On"} {
				assert.Equal(t, tc.forward, h.Peek(name) != nil, name)
			}
			budget := millis(t, h.Peek(fasttimeout.HeaderEnvoyExpectedTimeout))
			assert.LessOrEqual(t, budget, 3000*time.Millisecond, "Do's budget, within the caller's either way")
			assert.Positive(t, budget)
		})
	}
}

func millis(t *testing.T, v []byte) time.Duration {
	t.Helper()
	var ms int64
	_, err := fmt.Sscan(string(v), &ms)
	require.NoError(t, err, "%q", v)
	return time.Duration(ms) * time.Millisecond
}

// paddedHead returns a message head of exactly size bytes, its final CRLF
// included: firstLine, the lines in fields, and an X-Pad line that fills it.
func paddedHead(size int, firstLine string, fields ...string) string {
	h := firstLine + "\r\n" + strings.Join(fields, "") + "X-Pad: "
	return h + strings.Repeat("a", size-len(h)-len("\r\n\r\n")) + "\r\n\r\n"
}

// The server's and the upstream client's read buffers bound the heads the
// gateway reads: a request's (431 beyond) and an upstream response's (502
// beyond, as nginx answers past proxy_buffer_size), first line included.
func TestProxyHeaderSize(t *testing.T) {
	// An upstream that reads heads of any size the gateway may forward, and
	// answers with a head of the size asked for in X-Answer-Size.
	upstream := serveLoopback(t, func(c net.Conn) {
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(waitTimeout))
		br := bufio.NewReaderSize(c, 64<<10)
		for {
			var req fasthttp.Request
			if req.Read(br) != nil {
				return
			}
			size, _ := strconv.Atoi(string(req.Header.Peek("X-Answer-Size")))
			answer := "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
			if size > 0 {
				answer = paddedHead(size, "HTTP/1.1 200 OK", "Content-Length: 2\r\n") + "ok"
			}
			if _, err := c.Write([]byte(answer)); err != nil {
				return
			}
		}
	})
	for _, tc := range []struct {
		name string
		args []string
		max  int
	}{
		{name: "by default, fasthttp's 4 KiB", max: 4096},
		{name: "with -max-header-bytes 16384", args: []string{"-max-header-bytes", "16384"}, max: 16384},
	} {
		t.Run(tc.name, func(t *testing.T) {
			gateway := startGateway(t, append([]string{"-upstream", upstream}, tc.args...)...)
			for _, c := range []struct {
				what            string
				request, answer int
				want            int
			}{
				{what: "an upstream response's head at the limit", answer: tc.max, want: fasthttp.StatusOK},
				{what: "an upstream response's head over it", answer: tc.max + 1, want: fasthttp.StatusBadGateway},
				{what: "a request's head at the limit", request: tc.max, want: fasthttp.StatusOK},
				{what: "a request's head over it", request: tc.max + 1, want: fasthttp.StatusRequestHeaderFieldsTooLarge},
			} {
				request := "GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"
				if c.answer > 0 {
					request = "GET / HTTP/1.1\r\nHost: example.com\r\nX-Answer-Size: " + strconv.Itoa(c.answer) + "\r\n\r\n"
				}
				if c.request > 0 {
					request = paddedHead(c.request, "GET / HTTP/1.1", "Host: example.com\r\n")
				}
				resp := rawCall(t, gateway, request)
				assert.Equal(t, c.want, resp.StatusCode(), "%s: %s", c.what, resp.Body())
			}
		})
	}
}

func TestProxyBodies(t *testing.T) {
	t.Run("answers 413 to a request body over -max-body", func(t *testing.T) {
		var calls atomic.Int64
		upstream := startUpstream(t, func(ctx *fasthttp.RequestCtx) { calls.Add(1) })
		gateway := startGateway(t, "-upstream", upstream, "-max-body", "1024")

		resp := call(t, gateway, "POST", "/upload", strings.Repeat("x", 4096))
		assert.Equal(t, fasthttp.StatusRequestEntityTooLarge, resp.StatusCode())
		assert.Equal(t, "application/json", string(resp.Header.ContentType()))
		assert.Zero(t, calls.Load(), "the upstream is not called")

		resp = call(t, gateway, "POST", "/upload", strings.Repeat("x", 1024))
		assert.Equal(t, fasthttp.StatusOK, resp.StatusCode(), "a body at the limit goes through")
	})

	t.Run("streams the upstream's response to the client as it comes", func(t *testing.T) {
		const chunks = 6
		next := make(chan struct{})
		upstream := startUpstream(t, func(ctx *fasthttp.RequestCtx) {
			ctx.SetBodyStreamWriter(func(w *bufio.Writer) {
				for i := range chunks {
					fmt.Fprintf(w, "chunk-%d;", i)
					if w.Flush() != nil {
						return
					}
					if i < chunks-1 {
						select { // the next chunk only once the client has this one
						case <-next:
						case <-time.After(waitTimeout):
							return
						}
					}
				}
			})
		})
		t.Setenv("REQUEST_TIMEOUT", "30s")
		gateway := startGateway(t, "-upstream", upstream)

		c, err := net.Dial("tcp", gateway)
		require.NoError(t, err)
		defer c.Close()
		require.NoError(t, c.SetDeadline(time.Now().Add(waitTimeout)))
		_, err = c.Write([]byte("GET /events HTTP/1.1\r\nHost: example.com\r\n\r\n"))
		require.NoError(t, err)
		br := bufio.NewReader(c)
		var h fasthttp.ResponseHeader
		require.NoError(t, h.Read(br), "the response header arrives before the body is complete")
		require.Equal(t, fasthttp.StatusOK, h.StatusCode())
		var got strings.Builder
		buf := make([]byte, 4096)
		for i := range chunks {
			want := fmt.Sprintf("chunk-%d;", i)
			for !strings.Contains(got.String(), want) {
				n, err := br.Read(buf)
				require.NoError(t, err, "waiting for %s, got %q", want, got.String())
				got.Write(buf[:n])
			}
			if i < chunks-1 {
				next <- struct{}{}
			}
		}
	})
}

func TestProxyUpstreamConnections(t *testing.T) {
	t.Run("waits for a free upstream connection", func(t *testing.T) {
		arrived := make(chan struct{}, 2)
		release := make(chan struct{})
		upstream := startUpstream(t, func(ctx *fasthttp.RequestCtx) {
			arrived <- struct{}{}
			select {
			case <-release:
			case <-time.After(waitTimeout):
			}
		})
		t.Setenv("REQUEST_TIMEOUT", "30s")
		gateway := startGateway(t, "-upstream", upstream, "-max-conns", "1")

		statuses := make(chan int, 2)
		get := func() { statuses <- call(t, gateway, "GET", "/", "").StatusCode() }
		before := stats.Snapshot().Requests
		go get()
		<-arrived // the one connection is busy
		go get()
		waitFor(t, "the second request in the gateway", func() bool { return stats.Snapshot().Requests == before+2 })
		close(release)
		assert.Equal(t, fasthttp.StatusOK, <-statuses)
		assert.Equal(t, fasthttp.StatusOK, <-statuses, "the second waited for the connection instead of a 502")
	})

	// An upstream whose keep-alive timeout is shorter than the gateway's
	// idle one (gunicorn's is 2 s, Node's 5 s, fasthttp's client keeps
	// 10 s), or that restarted, has closed connections the gateway still
	// holds idle. The gateway sent the next request on one, and every
	// method but the idempotent ones, which it sent again, got 502: a POST
	// after a few seconds of quiet failed every time. It now finds the
	// close before it writes the request, which any method may then take
	// to a new connection.
	for _, method := range []string{"GET", "DELETE", "POST"} {
		t.Run("a "+method+" on a connection the upstream closed while idle", func(t *testing.T) {
			var accepted, requests atomic.Int64
			closed := make(chan struct{}, 1)
			upstream := serveLoopback(t, func(c net.Conn) {
				accepted.Add(1)
				_ = c.SetDeadline(time.Now().Add(waitTimeout))
				var req fasthttp.Request
				if req.Read(bufio.NewReader(c)) == nil {
					requests.Add(1)
					_, _ = c.Write([]byte("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"))
				}
				_ = c.Close() // after one answer, without saying so
				closed <- struct{}{}
			})
			dialed := make(chan net.Conn, 2)
			testHookDialed = func(c net.Conn) {
				select {
				case dialed <- c:
				default: // only the first is looked at
				}
			}
			t.Cleanup(func() { testHookDialed = nil })
			t.Setenv("REQUEST_TIMEOUT", "30s")
			gateway := startGateway(t, "-upstream", upstream)

			require.Equal(t, fasthttp.StatusOK, call(t, gateway, "GET", "/", "").StatusCode())
			// The gateway's end of the connection has taken in the
			// upstream's close: the request below comes after it, not
			// during it (an upstream that closes a connection as a request
			// goes out on it is the case below).
			<-closed
			var pooled net.Conn
			select {
			case pooled = <-dialed:
			case <-time.After(waitTimeout):
				t.Fatal("the gateway dialled the upstream, but not through dialUpstream")
			}
			waitFor(t, "the close to reach the gateway", func() bool { return !idleConnUsable(pooled) })

			resp := call(t, gateway, method, "/", "")
			assert.Equal(t, fasthttp.StatusOK, resp.StatusCode(), "%s", resp.Body())
			assert.Equal(t, "ok", string(resp.Body()))
			assert.Equal(t, int64(2), accepted.Load(), "one new connection")
			assert.Equal(t, int64(2), requests.Load(), "the second request sent once")
		})
	}

	// Several connections idle in the pool, and the upstream closes one
	// (its keep-alive timeout), two or all (a restart). The gateway dropped
	// every idle connection at the first closed one it found, and dialled
	// for each of them afterwards; it now drops that one alone (fasthttp
	// closes it) and sends the request on the next pooled one, checked as
	// well, but after a second closed one drops the rest and dials. The
	// requests go one at a time on connections the test closes
	// (Connection: close): the gateway has put its upstream connection
	// back in the pool before it closes the client's. Three of them then
	// take the pooled connections in turn (fasthttp's default, FIFO), so
	// that the last request goes on the first's, then the second's.
	//
	// A restart's closes may reach the gateway one after another: the peek
	// finds the first, and the next crosses the request written on its
	// connection, which gets no answer (lose: the upstream closes them all
	// as it reads the request). A GET is sent once more then, on a new
	// connection, however many tries the peek stopped before: after two,
	// the one lost is the first on a new connection, and the resend a
	// fourth try. It got 502 when the peek had stopped a try, since only a
	// first try was resent.
	for _, tc := range []struct {
		name    string
		close   string // "one": the connection of the first of three requests; "two": of the first two; "all"
		method  string // of the last request
		lose    bool   // the upstream restarts as the last request reaches it: no answer
		dialled int64  // connections the upstream accepts in all
		sent    int64  // times the upstream reads the last request
	}{
		{name: "a POST after the upstream closed one of 3 idle connections", close: "one", method: "POST", dialled: 3, sent: 1},
		{name: "a POST after the upstream closed all of 3 idle connections", close: "all", method: "POST", dialled: 4, sent: 1},
		{name: "a GET after the upstream closed one of 3 idle connections, and the next as it went out", close: "one", method: "GET", lose: true, dialled: 4, sent: 2},
		{name: "a GET after the upstream closed two of 3 idle connections, and a new one as it went out", close: "two", method: "GET", lose: true, dialled: 5, sent: 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const pooled = 3
			var (
				accepted atomic.Int64
				sent     atomic.Int64
				mu       sync.Mutex
				conns    []net.Conn // the upstream's
				served   []net.Conn // the connection of each request after the held ones
				held     = make(chan struct{}, pooled)
				release  = make(chan struct{})
			)
			closeAll := func() {
				mu.Lock()
				defer mu.Unlock()
				for _, c := range conns {
					_ = c.Close()
				}
			}
			upstream := serveLoopback(t, func(c net.Conn) {
				accepted.Add(1)
				mu.Lock()
				conns = append(conns, c)
				mu.Unlock()
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(waitTimeout))
				br := bufio.NewReader(c)
				for {
					var req fasthttp.Request
					if req.Read(br) != nil {
						return
					}
					switch string(req.URI().Path()) {
					case "/hold":
						held <- struct{}{}
						<-release
					case "/last":
						if sent.Add(1) == 1 && tc.lose {
							closeAll()
							return
						}
					default:
						mu.Lock()
						served = append(served, c)
						mu.Unlock()
					}
					if _, err := c.Write([]byte("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")); err != nil {
						return
					}
					// After the answer, without saying so.
					switch string(req.URI().Path()) {
					case "/close-one", "/close-two":
						mu.Lock()
						_ = served[0].Close()
						if string(req.URI().Path()) == "/close-two" {
							_ = served[1].Close()
						}
						mu.Unlock()
					case "/close-all":
						closeAll()
					}
				}
			})
			var dialled []net.Conn // the gateway's
			testHookDialed = func(c net.Conn) {
				mu.Lock()
				dialled = append(dialled, c)
				mu.Unlock()
			}
			t.Cleanup(func() { testHookDialed = nil })
			t.Setenv("REQUEST_TIMEOUT", "30s")
			gateway := startGateway(t, "-upstream", upstream)
			exchange := func(method, path string) string {
				return rawExchange(t, gateway, method+" "+path+" HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\n\r\n")
			}

			// Three requests at once, held until all three are in: three
			// upstream connections, idle once they are answered.
			answers := make(chan string, pooled)
			for range pooled {
				go func() { answers <- exchange("GET", "/hold") }()
			}
			for range pooled {
				<-held
			}
			close(release)
			for range pooled {
				require.Contains(t, <-answers, "200 OK")
			}
			for _, path := range []string{"/", "/", "/close-" + tc.close} {
				require.Contains(t, exchange("GET", path), "200 OK")
			}
			want := map[string]int{"one": 1, "two": 2, "all": pooled}[tc.close]
			waitFor(t, "the closes to reach the gateway", func() bool {
				mu.Lock()
				defer mu.Unlock()
				closed := 0
				for _, c := range dialled {
					if !idleConnUsable(c) {
						closed++
					}
				}
				return closed == want
			})

			answer := exchange(tc.method, "/last")
			assert.Contains(t, answer, "200 OK")
			assert.True(t, strings.HasSuffix(answer, "\r\n\r\nok"), "%s", answer)
			assert.Equal(t, tc.dialled, accepted.Load(), "connections the upstream accepted")
			assert.Equal(t, tc.sent, sent.Load(), "times the upstream read it")
		})
	}

	// An upstream that closes the connection once it has read a request,
	// without an answer: as one whose keep-alive timeout ran out just as
	// the request came, or one that crashed on it. The upstream may have
	// acted on it, so only an idempotent request is sent again, once.
	for _, tc := range []struct {
		method string
		closes int64 // the first closes requests read get no answer
		want   int
		sent   int64
	}{
		{method: "GET", closes: 1, want: fasthttp.StatusOK, sent: 2},
		{method: "QUERY", closes: 1, want: fasthttp.StatusOK, sent: 2},        // idempotent too (RFC 10008)
		{method: "POST", closes: 1, want: fasthttp.StatusBadGateway, sent: 1}, // never sent twice
		{method: "GET", closes: 3, want: fasthttp.StatusBadGateway, sent: 2},  // nor thrice
	} {
		t.Run(fmt.Sprintf("a %s the upstream closed %d connections on", tc.method, tc.closes), func(t *testing.T) {
			var sent atomic.Int64
			upstream := serveLoopback(t, func(c net.Conn) {
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(waitTimeout))
				var req fasthttp.Request
				if req.Read(bufio.NewReader(c)) != nil {
					return
				}
				if string(req.URI().Path()) == "/close" && sent.Add(1) <= tc.closes {
					return // read, no answer
				}
				_, _ = c.Write([]byte("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"))
			})
			t.Setenv("REQUEST_TIMEOUT", "30s")
			gateway := startGateway(t, "-upstream", upstream)

			resp := call(t, gateway, tc.method, "/close", "")
			assert.Equal(t, tc.want, resp.StatusCode(), "%s", resp.Body())
			assert.Equal(t, tc.sent, sent.Load(), "times the upstream read it")
		})
	}

	// fasthttp's client dials IPv4 only unless told otherwise: an upstream
	// given as [::1]:port got 502 for every request ("couldn't find dns
	// entries for the given domain"), and so did a host name whose only
	// address is IPv6 (a "localhost" that resolves to ::1, where Node 17
	// and later listen by default).
	t.Run("forwards to an upstream on IPv6", func(t *testing.T) {
		ln, err := net.Listen("tcp", "[::1]:0")
		if err != nil {
			t.Skipf("no IPv6 loopback: %v", err)
		}
		server := &fasthttp.Server{Handler: func(ctx *fasthttp.RequestCtx) { ctx.SetBodyString("over IPv6") }}
		go func() { _ = server.Serve(ln) }()
		t.Cleanup(func() { _ = server.Shutdown() })
		t.Setenv("REQUEST_TIMEOUT", "30s")
		gateway := startGateway(t, "-upstream", ln.Addr().String())

		resp := call(t, gateway, "GET", "/", "")
		assert.Equal(t, fasthttp.StatusOK, resp.StatusCode(), "%s", resp.Body())
		assert.Equal(t, "over IPv6", string(resp.Body()))
	})

	t.Run("answers 504, not 502, when the budget runs out waiting", func(t *testing.T) {
		arrived := make(chan struct{}, 1)
		release := make(chan struct{})
		upstream := startUpstream(t, func(ctx *fasthttp.RequestCtx) {
			arrived <- struct{}{}
			select {
			case <-release:
			case <-time.After(waitTimeout):
			}
		})
		t.Cleanup(func() { close(release) })
		t.Setenv("REQUEST_TIMEOUT", "30s")
		gateway := startGateway(t, "-upstream", upstream, "-max-conns", "1")

		first := make(chan int, 1)
		go func() { first <- call(t, gateway, "GET", "/", "").StatusCode() }()
		<-arrived
		resp := call(t, gateway, "GET", "/", "", "grpc-timeout", "200m")
		assert.Equal(t, fasthttp.StatusGatewayTimeout, resp.StatusCode())
		assert.Equal(t, fasttimeout.DefaultBody, string(resp.Body()))
		release <- struct{}{}
		assert.Equal(t, fasthttp.StatusOK, <-first)
	})
}

// A client that asks for a large streamed response and stops reading it.
// The server's write blocked with no deadline, so the stream was never
// closed and its upstream connection never given back: with -max-conns 1,
// every later request waited for that connection and got 504, and
// shutdown waited for the stalled write for good. The server's
// WriteTimeout (REQUEST_TIMEOUT) now ends the write.
func TestProxyClientThatStopsReading(t *testing.T) {
	chunk := make([]byte, 1<<20)
	upstream := startUpstream(t, func(ctx *fasthttp.RequestCtx) {
		if string(ctx.Path()) != "/big" {
			ctx.SetBodyString("small")
			return
		}
		ctx.SetBodyStreamWriter(func(w *bufio.Writer) {
			for range 64 { // far more than the sockets' buffers hold
				if _, err := w.Write(chunk); err != nil || w.Flush() != nil {
					return
				}
			}
		})
	})
	t.Setenv("REQUEST_TIMEOUT", "300ms")
	// The gateway's cleanup requires it to stop within 10 s, stalled
	// client and all.
	gateway := startGateway(t, "-upstream", upstream, "-max-conns", "1", "-adaptive=false")

	stalled, err := net.Dial("tcp", gateway)
	require.NoError(t, err)
	t.Cleanup(func() { _ = stalled.Close() }) // after the gateway's cleanup: still stalled at shutdown
	_, err = stalled.Write([]byte("GET /big HTTP/1.1\r\nHost: example.com\r\n\r\n"))
	require.NoError(t, err)
	var h fasthttp.ResponseHeader
	require.NoError(t, h.Read(bufio.NewReader(stalled)))
	require.Equal(t, fasthttp.StatusOK, h.StatusCode())
	// Reads nothing more.

	waitFor(t, "a request served beside the stalled client", func() bool {
		return call(t, gateway, "GET", "/small", "").StatusCode() == fasthttp.StatusOK
	})
}

// TestProxyBurst sends 600 requests at once through the gateway with the
// default -max-conns (512): the upstream holds each until 512 are in, so
// 88 must wait for a connection. All of them are answered 200. Admission is
// off (-adaptive=false): this upstream answers nothing until 512 requests
// are in at once, and an adaptive limit grows only as requests come back,
// so it would refuse most of them; the wait for a connection is what is
// tested here.
func TestProxyBurst(t *testing.T) {
	const burst, maxConns = 600, fasthttp.DefaultMaxConnsPerHost
	var inUpstream, most atomic.Int64
	full := make(chan struct{})
	var fullOnce sync.Once
	upstream := startUpstream(t, func(ctx *fasthttp.RequestCtx) {
		n := inUpstream.Add(1)
		defer inUpstream.Add(-1)
		for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
		}
		if n >= maxConns {
			fullOnce.Do(func() { close(full) })
		}
		select {
		case <-full:
		case <-time.After(waitTimeout):
		}
	})
	t.Setenv("REQUEST_TIMEOUT", "30s")
	gateway := startGateway(t, "-upstream", upstream, "-adaptive=false")

	client := &fasthttp.Client{MaxConnsPerHost: burst, MaxIdemponentCallAttempts: 1}
	statuses := make(chan int, burst)
	for range burst {
		go func() {
			req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
			defer fasthttp.ReleaseRequest(req)
			defer fasthttp.ReleaseResponse(resp)
			req.SetRequestURI("http://" + gateway + "/")
			if err := client.DoTimeout(req, resp, 2*waitTimeout); err != nil {
				statuses <- 0
				return
			}
			statuses <- resp.StatusCode()
		}()
	}
	counts := map[int]int{}
	for range burst {
		counts[<-statuses]++
	}
	t.Logf("%d concurrent requests through the gateway: statuses %v; at most %d at once in the upstream", burst, counts, most.Load())
	assert.Equal(t, map[int]int{fasthttp.StatusOK: burst}, counts)
	assert.LessOrEqual(t, most.Load(), int64(maxConns))
}

// timingOut is an upstream client whose calls end in fasthttp's timeout at
// their deadline, as a wait for a connection or a read cut short by it does.
type timingOut struct{}

func (timingOut) Do(*fasthttp.Request, *fasthttp.Response) error { return fasthttp.ErrTimeout }
func (timingOut) DoDeadline(_ *fasthttp.Request, _ *fasthttp.Response, deadline time.Time) error {
	time.Sleep(time.Until(deadline))
	return fasthttp.ErrTimeout
}

func TestProxyTimeoutBody(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		handler fasthttp.RequestHandler
		header  []string
	}{
		// The upstream call sees the deadline first: forwardTo answers. The
		// caller's 20 ms are the call's budget (Do), not the request's.
		{
			name:    "when the upstream call times out",
			handler: fasttimeout.New(forwardTo(timingOut{}, "upstream.invalid", false), fasttimeout.Config{Timeout: time.Minute}),
			header:  []string{fasttimeout.HeaderGRPCTimeout, "20m"},
		},
		// The middleware sees it first: it answers.
		{name: "when the middleware times out", handler: fasttimeout.New(func(ctx *fasthttp.RequestCtx) {
			<-fasttimeout.Context(ctx).Done()
		}, fasttimeout.Config{Timeout: time.Millisecond})},
	} {
		t.Run("the same 504 "+tc.name, func(t *testing.T) {
			t.Parallel()
			resp := call(t, startUpstream(t, tc.handler), "GET", "/", "", tc.header...)
			assert.Equal(t, fasthttp.StatusGatewayTimeout, resp.StatusCode())
			assert.Equal(t, fasttimeout.DefaultBody, string(resp.Body()))
			assert.Equal(t, fasttimeout.DefaultContentType, string(resp.Header.ContentType()))
		})
	}
}

// loggedLines keeps what a server logs.
type loggedLines struct {
	mu    sync.Mutex
	lines []string
}

func (l *loggedLines) Printf(format string, args ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines = append(l.lines, fmt.Sprintf(format, args...))
}

func (l *loggedLines) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.lines, "\n")
}

// A request whose context ends before its upstream call (Do does not call
// the upstream then) is not a failure of the upstream: no 502, and nothing
// logged about the upstream. At shutdown it gets 503 and Retry-After; after a
// hang-up nobody reads the answer.
func TestProxyContextEndsBeforeTheUpstreamCall(t *testing.T) {
	for _, tc := range []struct {
		name string
		end  func(server *fasthttp.Server, client net.Conn) // ends the request's context
		want int                                            // the status the client reads; 0: none
	}{
		{
			name: "shutdown",
			end:  func(server *fasthttp.Server, _ net.Conn) { go func() { _ = server.Shutdown() }() },
			want: fasthttp.StatusServiceUnavailable,
		},
		{
			name: "hang-up",
			end:  func(_ *fasthttp.Server, client net.Conn) { _ = client.Close() },
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.want == 0 && runtime.GOOS != "linux" {
				t.Skip("hang-ups are watched on Linux only")
			}
			var calls atomic.Int64
			upstream := startUpstream(t, func(*fasthttp.RequestCtx) { calls.Add(1) })
			forward := forwardTo(&fasthttp.HostClient{Addr: upstream}, upstream, false)
			started, returned := make(chan struct{}, 1), make(chan struct{}, 1)
			logged := new(loggedLines)
			server := &fasthttp.Server{Logger: logged, Handler: fasttimeout.New(func(ctx *fasthttp.RequestCtx) {
				defer func() { returned <- struct{}{} }()
				started <- struct{}{}
				select {
				case <-fasttimeout.Context(ctx).Done():
				case <-time.After(waitTimeout):
				}
				forward(ctx)
			}, fasttimeout.Config{Timeout: time.Minute})}
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			require.NoError(t, err)
			served := make(chan error, 1)
			go func() { served <- server.Serve(ln) }()
			t.Cleanup(func() {
				assert.NoError(t, server.Shutdown())
				select {
				case err := <-served:
					assert.NoError(t, err, "Serve")
				case <-time.After(waitTimeout):
					t.Error("Serve did not return")
				}
			})

			client, err := net.Dial("tcp", ln.Addr().String())
			require.NoError(t, err)
			defer client.Close()
			require.NoError(t, client.SetDeadline(time.Now().Add(waitTimeout)))
			_, err = client.Write([]byte("GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"))
			require.NoError(t, err)
			select {
			case <-started:
			case <-time.After(waitTimeout):
				t.Fatal("the handler did not start")
			}
			tc.end(server, client)
			if tc.want != 0 {
				var resp fasthttp.Response
				require.NoError(t, resp.Read(bufio.NewReader(client)))
				assert.Equal(t, tc.want, resp.StatusCode(), "%s", resp.Body())
				assert.Equal(t, "1", string(resp.Header.Peek(fasthttp.HeaderRetryAfter)))
				assert.Equal(t, `{"detail":"Server shutting down, retry later"}`, string(resp.Body()))
			}
			select {
			case <-returned:
			case <-time.After(waitTimeout):
				t.Fatal("the handler did not return")
			}
			assert.Zero(t, calls.Load(), "upstream calls")
			assert.NotContains(t, logged.String(), "upstream:", "logged as a failure of the upstream")
		})
	}
}

// fasthttp quotes the head of a request or response it cannot read in its
// error, up to about 400 bytes: the gateway's log got the callers'
// Authorization and Cookie headers from any malformed request, and an
// upstream's Set-Cookie from a malformed or oversized response head.
func TestProxyLogsNoHeaderValues(t *testing.T) {
	const secret = "s3cret-token"
	upstream := startRawUpstream(t, func(req *fasthttp.Request) string {
		if string(req.URI().Path()) == "/big" {
			return paddedHead(defaultMaxHeader+1, "HTTP/1.1 200 OK", "Set-Cookie: session="+secret+"\r\n", "Content-Length: 2\r\n") + "ok"
		}
		return "HTTP/1.1 200 OK\r\nSet-Cookie: session=" + secret + "\r\nno colon here\r\nContent-Length: 2\r\n\r\nok"
	})
	for _, tc := range []struct {
		name    string
		request string
		status  int
		logged  string // what the line says instead
	}{
		{
			name:    "a malformed request",
			request: "GET / HTTP/1.1\r\nHost: example.com\r\nAuthorization: Bearer " + secret + "\r\nno colon here\r\n\r\n",
			status:  fasthttp.StatusBadRequest,
			logged:  "error when reading request headers",
		},
		{
			name:    "a malformed upstream response",
			request: "GET / HTTP/1.1\r\nHost: example.com\r\n\r\n",
			status:  fasthttp.StatusBadGateway,
			logged:  "upstream: error when reading response headers",
		},
		{
			name:    "an upstream response's head over -max-header-bytes",
			request: "GET /big HTTP/1.1\r\nHost: example.com\r\n\r\n",
			status:  fasthttp.StatusBadGateway,
			// The flag that raises the limit, not fasthttp's
			// "increase readbuffersize".
			logged: "upstream: response head over -max-header-bytes\n",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			gateway, stderr := startGatewayLogged(t, "-upstream", upstream)
			resp := rawCall(t, gateway, tc.request)
			assert.Equal(t, tc.status, resp.StatusCode(), "%s", resp.Body())
			// The server logs a request it could not read once it has
			// answered it.
			waitFor(t, "the log line", func() bool { return strings.Contains(stderr.String(), tc.logged) })
			assert.NotContains(t, stderr.String(), secret)
		})
	}
}
