// A connection is reused after a timeout and after a late handler, in both
// modes: the next request on it gets its own answer. With a streamed request
// body a racing timeout closes it instead.
package fasttimeout_test

import (
	"bytes"
	"fmt"
	"io"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/valyala/fasthttp"

	"github.com/fasttimeout/fasttimeout"
)

func TestKeepAlive(t *testing.T) {
	for _, tc := range []struct {
		name string
		mode fasttimeout.Mode
		slow func(ctx *fasthttp.RequestCtx, answered <-chan struct{})
	}{
		{"racing_handler_ignoring_its_context", fasttimeout.Racing, func(_ *fasthttp.RequestCtx, answered <-chan struct{}) { <-answered }},
		{"racing_handler_honouring_its_context", fasttimeout.Racing, func(ctx *fasthttp.RequestCtx, answered <-chan struct{}) {
			<-fasttimeout.Context(ctx).Done()
			<-answered
		}},
		{"cooperative_handler_honouring_its_context", fasttimeout.Cooperative, func(ctx *fasthttp.RequestCtx, _ <-chan struct{}) {
			<-fasttimeout.Context(ctx).Done()
		}},
	} {
		t.Run("the_next_request_after_a_timeout_is_served_on_the_same_connection/"+tc.name, func(t *testing.T) {
			t.Parallel()
			answered := make(chan struct{}, 1)
			lateDone := make(chan struct{}, 1)
			var stats fasttimeout.Stats
			h := fasttimeout.New(func(ctx *fasthttp.RequestCtx) {
				secret := string(ctx.Request.Header.Peek("X-Secret"))
				if string(ctx.Path()) == "/slow" {
					tc.slow(ctx, answered)
					replyWithSecret(ctx, "late", secret) // must reach nobody
					lateDone <- struct{}{}
					return
				}
				replyWithSecret(ctx, "fast", secret)
			}, fasttimeout.Config{Timeout: actInTime, TimeoutFunc: onlyTimingOut("/slow"), Mode: tc.mode, Stats: &stats, // /slow must run
				OnTimeout: func(*fasthttp.RequestCtx, *fasthttp.Response) {
					select {
					case answered <- struct{}{}:
					default:
					}
				}})
			server := startStressLoopback(t, h)
			c, err := dialStress(server.addr)
			require.NoError(t, err)
			defer c.close()

			resp := c.get(t, "/slow", "S0000000000000001")
			requireTimeoutResponse(t, resp)
			require.False(t, resp.ConnectionClose(), "the timeout response keeps the connection")
			requireOwnResponse(t, c.get(t, "/fast", "S0000000000000002"), "fast", "S0000000000000002")
			receive(t, lateDone, "end of the late handler")
			requireOwnResponse(t, c.get(t, "/fast", "S0000000000000003"), "fast", "S0000000000000003")
			require.EqualValues(t, 1, server.ln.accepted.Load(), "one connection for all requests")
			require.Eventually(t, func() bool { return stats.Snapshot().InFlight == 0 }, stressBound, 5*time.Millisecond)
			got := stats.Snapshot() // InFlight 0: the late return is counted in full
			require.Zero(t, got.LateRunning)
			require.EqualValues(t, 1, got.Timeouts)
			require.EqualValues(t, 1, got.LateFinished)
		})
	}
}

// With Server.StreamRequestBody a late racing handler may still be reading
// its body from the connection, so the timeout response closes it (fasthttp
// does, for an answer given with TimeoutErrorWithResponse): nothing the
// client sends next can reach that handler as its body. A cooperative
// timeout is answered once the handler has returned, and the connection
// serves the next request.
func TestKeepAlive_streamed_request_body(t *testing.T) {
	const bodySize = 256 << 10
	for _, tc := range []struct {
		name   string
		mode   fasttimeout.Mode
		closes bool
	}{
		{"racing_timeout_closes_the_connection", fasttimeout.Racing, true},
		{"cooperative_timeout_keeps_the_connection", fasttimeout.Cooperative, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			answered := make(chan struct{})
			var answerOnce sync.Once
			read := make(chan []byte, 1)
			h := fasttimeout.New(func(ctx *fasthttp.RequestCtx) {
				if string(ctx.Path()) != "/upload" {
					replyWithSecret(ctx, "fast", string(ctx.Request.Header.Peek("X-Secret")))
					return
				}
				body := ctx.RequestBodyStream()
				got, _ := io.ReadAll(io.LimitReader(body, 1<<10))
				if tc.mode == fasttimeout.Racing {
					<-answered // late, its body still on the connection
				} else {
					<-fasttimeout.Context(ctx).Done()
				}
				rest, _ := io.ReadAll(body) // ends with an error once the connection is closed
				read <- append(got, rest...)
			}, fasttimeout.Config{Timeout: actInTime, TimeoutFunc: onlyTimingOut("/upload"), Mode: tc.mode, // /upload must run
				OnTimeout: func(*fasthttp.RequestCtx, *fasthttp.Response) { answerOnce.Do(func() { close(answered) }) }})
			server := startStressLoopback(t, h, func(s *fasthttp.Server) { s.StreamRequestBody = true })
			c, err := dialStress(server.addr)
			require.NoError(t, err)
			defer c.close()

			require.NoError(t, c.conn.SetDeadline(time.Now().Add(stressBound)))
			// Written on another goroutine: a racing server never reads all
			// of it, and the write ends only as the connection closes.
			written := make(chan error, 1)
			go func() {
				_, err := fmt.Fprintf(c.conn, "POST /upload HTTP/1.1\r\nHost: stream.test\r\nContent-Length: %d\r\n\r\n%s", bodySize, bytes.Repeat([]byte{'a'}, bodySize))
				written <- err
			}()
			require.NoError(t, c.resp.Read(c.br))
			requireTimeoutResponse(t, &c.resp)
			require.Equal(t, tc.closes, c.resp.ConnectionClose(), "Connection: close on the timeout response")

			got := receive(t, read, "the handler's read of its body")
			require.NotEmpty(t, got)
			require.Equal(t, len(got), bytes.Count(got, []byte{'a'}), "the handler read only its own body")
			if tc.closes {
				require.Error(t, c.do("/fast", "S0000000000000001"), "a request on the closed connection")
				c.close()
				receive(t, written, "the end of the body's write") // ended by the close, if not before
				return
			}
			require.NoError(t, receive(t, written, "the whole body written"))
			require.Len(t, got, bodySize, "the cooperative handler read its whole body")
			requireOwnResponse(t, c.get(t, "/fast", "S0000000000000002"), "fast", "S0000000000000002")
			require.EqualValues(t, 1, server.ln.accepted.Load(), "one connection for both requests")
		})
	}
}
