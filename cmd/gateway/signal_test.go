package main

import (
	"net"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/valyala/fasthttp"

	"github.com/fasttimeout/fasttimeout/internal/proctest"
)

// TestProcess_signals runs the gateway as a child process, holds a
// connection open past the shutdown's grace with a request its upstream
// does not answer (its deadline is a minute away), and signals it.
func TestProcess_signals(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("signals are sent to a child process on Unix only")
	}
	if testing.Short() {
		t.Skip("builds the gateway and waits out a shutdown grace")
	}
	t.Parallel()
	bin := build(t, ".", filepath.Join(t.TempDir(), "gateway"))
	proctest.Signals{
		Start: func(t *testing.T) *proctest.Process {
			arrived, release := make(chan struct{}, 1), make(chan struct{})
			upstream := startUpstream(t, func(ctx *fasthttp.RequestCtx) {
				arrived <- struct{}{}
				<-release
			})
			t.Cleanup(func() { close(release) }) // runs before the upstream's shutdown
			p := proctest.Start(t, bin, proctest.Options{
				Name: "the gateway", Env: []string{"REQUEST_TIMEOUT=60"},
				Args: []string{"-upstream", upstream}, Bound: waitTimeout,
			})
			conn, err := net.Dial("tcp", p.Addr)
			require.NoError(t, err)
			t.Cleanup(func() { _ = conn.Close() })
			_, err = conn.Write([]byte("GET /hang HTTP/1.1\r\nHost: gateway\r\n\r\n"))
			require.NoError(t, err)
			select {
			case <-arrived:
			case <-time.After(waitTimeout):
				t.Fatalf("the request did not reach the upstream within %v: %s", waitTimeout, p.Stderr())
			}
			return p
		},
		Grace:     shutdownGrace,
		GraceOver: "context deadline exceeded",
	}.Run(t)
}
