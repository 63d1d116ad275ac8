package fasttimeout

import (
	"bufio"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/fasthttputil"
)

// A racing handler that panics with ErrHandlerGoexit itself (a value it
// recovered elsewhere, say) has not called runtime.Goexit: its worker lives
// on, and goes back to the pool as after any panic in time. Kept out of it,
// it would wait for work forever, and the connection's next request would
// start another: one worker, not two, serves both requests here.
func TestPanics_racing_panic_of_ErrHandlerGoexit_keeps_the_worker(t *testing.T) {
	t.Parallel()
	workers := make(chan *housekeeper, 2)
	h := New(func(ctx *fasthttp.RequestCtx) {
		workers <- lookup(ctx).m.housekeeper
		if string(ctx.Path()) == "/panics" {
			panic(ErrHandlerGoexit)
		}
	}, Config{Timeout: 5 * time.Minute, Mode: Racing, IgnoreHangups: true})
	recovered := make(chan any, 1)
	ln := fasthttputil.NewInmemoryListener()
	serveOn(t, &fasthttp.Server{Handler: func(ctx *fasthttp.RequestCtx) {
		defer func() {
			if v := recover(); v != nil { // re-raised in time on the server goroutine
				recovered <- v
				ctx.SetStatusCode(fasthttp.StatusInternalServerError)
			}
		}()
		h(ctx)
	}}, ln)
	conn, err := ln.Dial()
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close() }) // before serveOn's Shutdown, which waits for it
	br := bufio.NewReader(conn)
	var resp fasthttp.Response
	for _, path := range []string{"/panics", "/returns"} { // one connection: its worker is the one idle
		_, err = conn.Write([]byte("GET " + path + " HTTP/1.1\r\nHost: test\r\n\r\n"))
		require.NoError(t, err)
		require.NoError(t, resp.Read(br))
	}
	assert.Equal(t, fasthttp.StatusOK, resp.StatusCode())
	assert.Equal(t, ErrHandlerGoexit, receive(t, recovered, "the panic re-raised"))
	hk := receive(t, workers, "the first request's handler")
	receive(t, workers, "the second request's handler")
	assert.Len(t, *hk.snapshot.Load(), 1, "the workers started")
}
