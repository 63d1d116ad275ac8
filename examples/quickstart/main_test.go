package main

import (
	"os"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/valyala/fasthttp"

	"github.com/fasttimeout/fasttimeout"
	"github.com/fasttimeout/fasttimeout/examples/internal/inmem"
)

// The README's quick start is this program, word for word, so that what
// it shows compiles and does what it says.
func TestQuickStartIsTheREADMEs(t *testing.T) {
	t.Parallel()
	readme, err := os.ReadFile("../../README.md")
	require.NoError(t, err)
	_, after, found := strings.Cut(string(readme), "## Quick start\n\n```go\n")
	require.True(t, found, "README.md has no Go block under ## Quick start")
	block, _, found := strings.Cut(after, "```\n")
	require.True(t, found, "the quick start's Go block is not closed")
	program, err := os.ReadFile("main.go")
	require.NoError(t, err)
	assert.Equal(t, string(program), block)
}

func TestQuickStart(t *testing.T) {
	t.Parallel()
	bounded := fasttimeout.New(handler, fasttimeout.Config{Timeout: 50 * time.Millisecond})

	t.Run("a request slower than the timeout gets 504 and the default body", func(t *testing.T) {
		t.Parallel()
		status, body := inmem.Get(t, inmem.Serve(t, bounded), "/")
		assert.Equal(t, fasthttp.StatusGatewayTimeout, status)
		assert.JSONEq(t, fasttimeout.DefaultBody, body)
	})
	t.Run("the handler stops at the deadline, its context done", func(t *testing.T) {
		t.Parallel()
		// What the handler left in its own response says which way it
		// went: 503 when its context ended first, 200 and "done" when it
		// ran its two seconds of work for nobody.
		left := make(chan int, 1)
		recording := fasttimeout.New(func(ctx *fasthttp.RequestCtx) {
			handler(ctx)
			left <- ctx.Response.StatusCode()
		}, fasttimeout.Config{Timeout: 50 * time.Millisecond})
		status, _ := inmem.Get(t, inmem.Serve(t, recording), "/")
		assert.Equal(t, fasthttp.StatusGatewayTimeout, status)
		select {
		case got := <-left:
			assert.Equal(t, fasthttp.StatusServiceUnavailable, got, "the handler's own status: it did not stop at the deadline")
		case <-time.After(10 * time.Second):
			t.Fatal("the handler did not return")
		}
	})
	t.Run("a request cut short by a shutdown gets 503", func(t *testing.T) {
		t.Parallel()
		unbounded := fasttimeout.New(handler, fasttimeout.Config{Timeout: time.Minute})
		assert.Equal(t, fasthttp.StatusServiceUnavailable, inmem.ShutdownDuring(t, unbounded, "/"))
	})
	t.Run("a request within the timeout gets the handler's answer", func(t *testing.T) {
		t.Parallel()
		status, body := inmem.Get(t, inmem.Serve(t, fasttimeout.New(handler, fasttimeout.Config{Timeout: time.Minute})), "/")
		assert.Equal(t, fasthttp.StatusOK, status)
		assert.Equal(t, "done", body)
	})
}
