package main

import (
	"net"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/valyala/fasthttp"

	"github.com/fasttimeout/fasttimeout/internal/proctest"
)

// buildDemo builds the demo into a temporary folder of t.
func buildDemo(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "demo")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	require.NoError(t, err, "go build: %s", out)
	return bin
}

// TestProcess_signals runs the demo as a child process, holds a connection
// open past the shutdown's grace with a blocking handler (racing mode does
// not answer it at shutdown: its deadline is a minute away), and signals
// it.
func TestProcess_signals(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("signals are sent to a child process on Unix only")
	}
	if testing.Short() {
		t.Skip("builds the demo and waits out a shutdown grace")
	}
	t.Parallel()
	bin := buildDemo(t)
	proctest.Signals{
		Start: func(t *testing.T) *proctest.Process {
			p := proctest.Start(t, bin, proctest.Options{
				Name: "the demo", Env: []string{"REQUEST_TIMEOUT=60"}, Bound: eventuallyBound,
			})
			conn, err := net.Dial("tcp", p.Addr)
			require.NoError(t, err)
			t.Cleanup(func() { _ = conn.Close() })
			_, err = conn.Write([]byte("GET /sleep/3600 HTTP/1.1\r\nHost: demo\r\n\r\n"))
			require.NoError(t, err)
			eventually(t, "the request runs", func() bool {
				_, body, err := fasthttp.GetTimeout(nil, "http://"+p.Addr+"/debug/vars", time.Second)
				return err == nil && strings.Contains(string(body), `"in_flight":1,`)
			})
			return p
		},
		Grace:     shutdownGrace,
		GraceOver: "shutdown: context deadline exceeded",
	}.Run(t)
}
