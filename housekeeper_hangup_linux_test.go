package fasttimeout

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/valyala/fasthttp"
)

// TestHousekeeper_rests_once_a_hung_up_context_has_ended: a cooperative
// request whose client hung up has its context ended (ErrClientGone) while
// its handler, which ignores it, runs on. Nothing can change that context
// any more, so it is no longer watched: else it would keep the housekeeper
// ticking every Precision until its deadline (an hour here) or its
// handler's return.
func TestHousekeeper_rests_once_a_hung_up_context_has_ended(t *testing.T) {
	t.Parallel()
	type started struct {
		h *housekeeper
		b *requestContext
	}
	startedc := make(chan started, 1)
	release := make(chan struct{})
	addr := serveTCP(t, New(func(ctx *fasthttp.RequestCtx) {
		b := Context(ctx).(*requestContext)
		startedc <- started{lookup(ctx).m.housekeeper, b}
		<-release // ignores its context
	}, Config{Timeout: time.Hour, Mode: Cooperative}))
	t.Cleanup(func() { close(release) }) // before the server's shutdown

	conn, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	_, err = conn.Write([]byte("GET / HTTP/1.1\r\nHost: test\r\n\r\n"))
	require.NoError(t, err)
	p := receive(t, startedc, "the handler's start")
	require.False(t, p.h.resting.Load(), "a context with a deadline is watched")
	require.NoError(t, conn.Close())

	receive(t, p.b.Done(), "the context's end at the hang-up")
	require.ErrorIs(t, context.Cause(p.b), ErrClientGone)
	require.Eventually(t, p.h.resting.Load, 10*time.Second, time.Millisecond, "the housekeeper rests, the handler still running")
	assert.False(t, p.h.watched(p.b), "the ended context is no longer watched")
}
