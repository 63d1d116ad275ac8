package fasttimeoutotel_test

import (
	"context"
	"net"
	"runtime"
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

// A New inside another New's handler, each with Handler inside it, as the
// package says to use it: the request ends once, and its span gets that end
// once, whichever context saw it first. The inner New keeps the earlier
// deadline and a hang-up reaches every context, so an outer deadline or a
// hang-up ends both Handlers' contexts: each recorded the end and the late
// return, four events where there are two.
func TestHandlerInsideNestedNewsRecordsTheEndOnce(t *testing.T) {
	t.Parallel()
	// Time enough, on a loaded machine, for the handler to start before
	// the deadline, as the events below need.
	const timeout = time.Second
	for _, mode := range []fasttimeout.Mode{fasttimeout.Racing, fasttimeout.Cooperative} {
		for _, tc := range []struct {
			name         string
			outer, inner time.Duration
			hangUp       bool
			want         string
		}{
			{name: "outer_deadline_first", outer: timeout, inner: time.Hour, want: fasttimeoutotel.EventTimeout},
			{name: "inner_deadline_first", outer: time.Hour, inner: timeout, want: fasttimeoutotel.EventTimeout},
			{name: "client_hang_up", outer: time.Hour, inner: time.Hour, hangUp: true, want: fasttimeoutotel.EventClientGone},
		} {
			t.Run(mode.String()+"/"+tc.name, func(t *testing.T) {
				if tc.hangUp && runtime.GOOS != "linux" {
					t.Skip("hang-ups are watched on Linux only")
				}
				t.Parallel()
				ended := make(chan sdktrace.ReadOnlySpan, 10)
				provider := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(endSignal{ended}))
				entered := make(chan struct{}, 1)
				app := func(ctx *fasthttp.RequestCtx) {
					done := fasttimeout.Context(ctx).Done()
					entered <- struct{}{}
					<-done
				}
				inner := fasttimeout.New(fasttimeoutotel.Handler(app), fasttimeout.Config{Timeout: tc.inner})
				outer := fasttimeout.New(fasttimeoutotel.Handler(inner), fasttimeout.Config{Timeout: tc.outer, Mode: mode})
				addr, shutdown := serveTCP(t, fasttimeoutotel.Middleware(outer, provider.Tracer("test")))
				if tc.hangUp {
					hangUp(t, addr, entered)
				} else {
					client := &fasthttp.Client{Dial: func(string) (net.Conn, error) { return net.Dial("tcp", addr) }, MaxIdemponentCallAttempts: 1}
					status, _, err := client.GetTimeout(nil, "http://app/wait", 10*time.Second)
					require.NoError(t, err)
					require.Equal(t, fasthttp.StatusGatewayTimeout, status)
					client.CloseIdleConnections()
				}

				span := endedSpan(t, ended, tc.name)
				require.Equal(t, []string{tc.want, fasttimeoutotel.EventLateReturn}, eventNames(span))
				assert.Equal(t, codes.Error, span.Status().Code)
				for _, e := range span.Events() {
					assert.Greater(t, attrs(e)[fasttimeoutotel.AttrTimeout].AsFloat64(), 0.0, e.Name)
				}
				shutdown()
				require.NoError(t, provider.Shutdown(context.Background()))
			})
		}
	}
}
