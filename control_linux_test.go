package fasttimeout

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/valyala/fasthttp"
)

// The client of a racing request hangs up while Extend moves its deadline
// (the call is callMoving, and the hang-up settles it gone). Extend reports
// false and leaves the deadline as it was, in both modes: a handler told
// true, the request over, would work on for nobody. Not parallel: it sets
// the process's test hook.
func TestExtend_hang_up_while_the_deadline_moves_reports_false(t *testing.T) {
	for _, mode := range []Mode{Racing, Cooperative} {
		t.Run(mode.String(), func(t *testing.T) {
			testExtendHangUpWhileTheDeadlineMoves(t, mode)
		})
	}
}

func testExtendHangUpWhileTheDeadlineMoves(t *testing.T, mode Mode) {
	type seen struct {
		err            error
		extended       bool
		cause          error
		before, after  int64 // the call's deadline
		ctxBefore, ctx time.Time
	}
	moving := make(chan struct{})
	got := make(chan seen, 1)
	addr := serveTCP(t, New(func(ctx *fasthttp.RequestCtx) {
		var s seen
		cx := Context(ctx)
		c := lookup(ctx)
		if !waitFor(func() bool { return c.watch.Load()&watchMask == watchRegistered }) {
			s.err = errors.New("the watch never started")
			got <- s
			return
		}
		hook := func(mc *call) {
			if mc.ctx != ctx {
				return // another test's request
			}
			close(moving) // the client hangs up now
			select {
			case <-cx.Done():
			case <-time.After(hangupWait):
			}
		}
		testHookMove.Store(&hook)
		defer testHookMove.Store(nil)
		s.before = c.deadline.Load()
		s.ctxBefore, _ = cx.Deadline()
		s.extended = Extend(ctx, time.Hour)
		s.cause = context.Cause(cx)
		s.after = c.deadline.Load()
		s.ctx, _ = cx.Deadline()
		got <- s
	}, Config{Timeout: time.Minute, Mode: mode}))

	conn, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	_, err = conn.Write([]byte("GET / HTTP/1.1\r\nHost: test\r\n\r\n"))
	require.NoError(t, err)
	select {
	case <-moving:
	case s := <-got:
		t.Fatal(s.err)
	}
	require.NoError(t, conn.Close())

	s := <-got
	require.NoError(t, s.err)
	require.ErrorIs(t, s.cause, ErrClientGone, "the hang-up came while the deadline moved")
	assert.False(t, s.extended, "Extend reports false: the client is gone")
	assert.Equal(t, s.before, s.after, "the call's deadline is as it was")
	assert.Equal(t, s.ctxBefore, s.ctx, "the context's deadline is as it was")
}
