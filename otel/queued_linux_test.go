package fasttimeoutotel_test

import (
	"bufio"
	"context"
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/valyala/fasthttp"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/fasttimeout/fasttimeout"
	fasttimeoutotel "github.com/fasttimeout/fasttimeout/otel"
)

// peerClosed reports whether the peer of conn, a TCP connection with
// nothing left to read, has closed it: a peek at its socket that neither
// blocks nor consumes reads the end of the stream.
func peerClosed(t *testing.T, conn net.Conn) bool {
	t.Helper()
	raw, err := conn.(syscall.Conn).SyscallConn()
	require.NoError(t, err)
	n, errno := -1, error(nil)
	require.NoError(t, raw.Control(func(fd uintptr) {
		var b [1]byte
		n, _, errno = syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
	}))
	return n == 0 && errno == nil
}

// A request that waits for the only slot, whose client hangs up meanwhile,
// is answered 499 without running its handler, so Handler never sees it:
// its span gets what a hang-up while the handler runs gets, the client-gone
// event (with timeout 0: no handler started), error.type and the status
// Error. It had only http.response.status_code 499, as if all had gone
// well. So too inside a cooperative New whose watch has not started (its
// handler never asked for Context), where the inner New answers the 499
// and the outer one returns it as its handler's.
func TestAttachRecordsClientGoneWhileQueued(t *testing.T) {
	t.Parallel()
	type row struct {
		name   string
		mode   fasttimeout.Mode
		nested bool // inside a cooperative New that watches hang-ups
	}
	var rows []row
	for _, mode := range []fasttimeout.Mode{fasttimeout.Racing, fasttimeout.Cooperative} {
		rows = append(rows, row{mode.String(), mode, false}, row{mode.String() + "/nested", mode, true})
	}
	for _, tc := range rows {
		mode := tc.mode
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ended := make(chan sdktrace.ReadOnlySpan, 2)
			provider := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(endSignal{ended}))
			stats := new(fasttimeout.Stats)
			entered, release := make(chan struct{}), make(chan struct{})
			limited := fasttimeout.New(fasttimeoutotel.Handler(func(ctx *fasthttp.RequestCtx) {
				if string(ctx.Path()) == "/first" {
					close(entered)
					<-release // holds the slot
				}
			}), fasttimeout.Config{Timeout: 5 * time.Minute, Mode: mode, MaxConcurrency: 1, Stats: stats})
			if tc.nested {
				limited = fasttimeout.New(limited, fasttimeout.Config{Timeout: 5 * time.Minute, Mode: fasttimeout.Cooperative})
			}
			traced := fasttimeoutotel.Middleware(limited, provider.Tracer("test"))
			queuedConn := make(chan net.Conn, 1) // the server's end of the queued request's connection
			addr, shutdown := serveTCP(t, func(ctx *fasthttp.RequestCtx) {
				if string(ctx.Path()) == "/second" {
					queuedConn <- ctx.Conn()
				}
				traced(ctx)
			})
			defer shutdown()
			defer func() {
				select {
				case <-release:
				default:
					close(release) // the test failed first
				}
			}()

			first, err := net.Dial("tcp", addr)
			require.NoError(t, err)
			defer first.Close()
			_, err = first.Write([]byte("GET /first HTTP/1.1\r\nHost: app\r\n\r\n"))
			require.NoError(t, err)
			<-entered
			second, err := net.Dial("tcp", addr)
			require.NoError(t, err)
			_, err = second.Write([]byte("GET /second HTTP/1.1\r\nHost: app\r\n\r\n"))
			require.NoError(t, err)
			server := <-queuedConn
			require.Eventually(t, func() bool { return stats.Snapshot().Queued == 1 }, 10*time.Second, time.Millisecond,
				"the second request waits")
			require.NoError(t, second.Close())
			require.Eventually(t, func() bool { return peerClosed(t, server) }, 10*time.Second, time.Millisecond,
				"the hang-up reached the server's socket")
			close(release)
			var resp fasthttp.Response
			require.NoError(t, resp.Read(bufio.NewReader(first)))
			require.Equal(t, fasthttp.StatusOK, resp.StatusCode())

			var span sdktrace.ReadOnlySpan
			for range 2 {
				if s := endedSpan(t, ended, mode.String()); spanAttrs(s)["url.path"].AsString() == "/second" {
					span = s
				}
			}
			require.NotNil(t, span)
			require.EqualValues(t, 1, stats.Snapshot().LeftWaiting, "answered 499 without running")
			assert.EqualValues(t, fasttimeout.StatusClientClosedRequest, spanAttrs(span)["http.response.status_code"].AsInt64())
			require.Equal(t, []string{fasttimeoutotel.EventClientGone}, eventNames(span))
			event := attrs(span.Events()[0])
			assert.Equal(t, fasttimeout.ErrClientGone.Error(), event[fasttimeoutotel.AttrCause].AsString())
			assert.Zero(t, event[fasttimeoutotel.AttrTimeout].AsFloat64())
			assert.Equal(t, codes.Error, span.Status().Code)
			assert.Equal(t, fasttimeout.ErrClientGone.Error(), span.Status().Description)
			assert.Equal(t, fasttimeoutotel.EventClientGone, spanAttrs(span)["error.type"].AsString())
			require.NoError(t, provider.Shutdown(context.Background()))
		})
	}
}
