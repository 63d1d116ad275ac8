package fasttimeout

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/fasthttputil"
)

// One goroutine of a handler makes the request's context while another
// moves its deadline: Disarm or Extend runs after the context was made with
// the old deadline and before it was published, so it cannot find it. The
// context must still end up with the new deadline: before the fix it kept
// the old one, and in cooperative mode the housekeeper cancelled it at that
// deadline with ErrTimeout while the request, extended, went on and
// answered 200. Not parallel: it sets the process's test hook.
func TestContext_made_while_the_deadline_moves_gets_the_new_one(t *testing.T) {
	const timeout = 2 * time.Second
	for _, mode := range []Mode{Racing, Cooperative} {
		for _, move := range []string{"Disarm", "Extend"} {
			t.Run(mode.String()+"/"+move, func(t *testing.T) {
				type seen struct {
					moved        bool
					callDeadline int64 // the call's deadline once moved
					oldDeadline  int64
					ctxDeadline  time.Time
					hasDeadline  bool
					expiredAtOld bool // the housekeeper's decision at the old deadline
				}
				got := make(chan seen, 1)
				getOnce(t, New(func(ctx *fasthttp.RequestCtx) {
					var s seen
					hook := func(c *call) {
						if c.ctx != ctx {
							return // another test's request
						}
						s.oldDeadline = c.deadline.Load()
						if move == "Disarm" {
							s.moved = Disarm(ctx)
						} else {
							s.moved = Extend(ctx, time.Hour)
						}
					}
					testHookContext.Store(&hook)
					cx := Context(ctx)
					testHookContext.Store(nil)
					s.callDeadline = lookup(ctx).deadline.Load()
					s.ctxDeadline, s.hasDeadline = cx.Deadline()
					s.expiredAtOld = cx.(*requestContext).expire(s.oldDeadline)
					got <- s
					ctx.SetBodyString("ok")
				}, Config{Timeout: timeout, Mode: mode}))
				s := <-got

				require.True(t, s.moved, "%s before the deadline", move)
				if move == "Disarm" {
					assert.Equal(t, int64(noDeadline), s.callDeadline)
					assert.False(t, s.hasDeadline, "the context has no deadline once the call is disarmed")
				} else {
					assert.Equal(t, s.oldDeadline+int64(time.Hour), s.callDeadline)
					assert.True(t, s.hasDeadline)
					assert.Equal(t, epoch.Add(time.Duration(s.callDeadline)), s.ctxDeadline, "the context has the extended deadline")
				}
				assert.False(t, s.expiredAtOld, "the context outlives the deadline it was made with")
			})
		}
	}
}

// A racing call's timer reads the state and the deadline, then
// compare-and-swaps the state to timedOut. An Extend that ran entirely in
// between used to leave the state word as it was (running -> moving ->
// running), so the timer timed the call out against the deadline from
// before the move. Each move now changes the word, within the generation.
func TestExtend_changes_the_state_word(t *testing.T) {
	t.Parallel()
	type seen struct {
		before, after uint64
		moved         bool
	}
	got := make(chan seen, 1)
	getOnce(t, New(func(ctx *fasthttp.RequestCtx) {
		c := lookup(ctx)
		var s seen
		s.before = c.state.Load()
		for range 20 { // past the 16 moves the word counts: they wrap
			s.moved = Extend(ctx, time.Millisecond)
		}
		s.after = c.state.Load()
		got <- s
	}, Config{Timeout: time.Minute}))
	s := <-got

	require.True(t, s.moved)
	assert.Equal(t, callRunning, s.after&phaseMask, "running again")
	assert.Equal(t, s.before/generation, s.after/generation, "the same generation")
	assert.Equal(t, uint64(20*moveStep)&movesMask, (s.after-s.before)&movesMask, "twenty moves counted")
}

// getOnce sends one GET to h on a fasthttp server over an in-memory
// listener; h reports what it saw on its own channel. The test's cleanup
// stops the server.
func getOnce(t *testing.T, h fasthttp.RequestHandler) {
	t.Helper()
	ln := fasthttputil.NewInmemoryListener()
	srv := &fasthttp.Server{Handler: h}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	conn, err := ln.Dial()
	require.NoError(t, err)
	t.Cleanup(func() {
		_ = conn.Close()
		require.NoError(t, srv.Shutdown())
		_ = ln.Close()
		<-served
	})
	_, err = conn.Write([]byte("GET / HTTP/1.1\r\nHost: test\r\n\r\n"))
	require.NoError(t, err)
}
