package fasttimeout

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/valyala/fasthttp"
)

// upstreamDoer answers at once, calling nothing.
type upstreamDoer struct{}

func (upstreamDoer) Do(*fasthttp.Request, *fasthttp.Response) error                    { return nil }
func (upstreamDoer) DoDeadline(*fasthttp.Request, *fasthttp.Response, time.Time) error { return nil }

// Do gives a cooperative request a context, for the hang-up watch, only if
// the watch can start: a request whose timeout is too short to be watched
// (unless its handler moves its deadline) got one on every call of Do, and
// kept the housekeeper ticking, for nothing.
func TestDo_makes_a_context_only_for_a_watch_that_can_start(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		timeout time.Duration
		disarm  bool
		want    bool
	}{
		{name: "a timeout long enough to be watched", timeout: time.Minute, want: true},
		{name: "a timeout too short to be watched", timeout: minWatchedTimeout / 2},
		{name: "a short timeout switched off by Disarm", timeout: minWatchedTimeout / 2, disarm: true, want: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			made := make(chan bool, 1)
			h := New(func(ctx *fasthttp.RequestCtx) {
				if tc.disarm {
					Disarm(ctx)
				}
				var req fasthttp.Request
				var resp fasthttp.Response
				_ = Do(ctx, upstreamDoer{}, &req, &resp)
				made <- lookup(ctx).bridge.Load() != nil
			}, Config{Timeout: tc.timeout, Mode: Cooperative})
			var ctx fasthttp.RequestCtx
			ctx.Init(new(fasthttp.Request), nil, nil) // a connection, as far as the watch can tell
			h(&ctx)
			assert.Equal(t, tc.want, <-made)
		})
	}
}

// errors.Is asks an error's Unwrap at every look, and a gateway may look
// several times per failed call (ErrTimeout for a 504, its client's own
// errors for a 502): Do's errors answer without allocating.
func TestDo_errors_match_without_allocating(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
		is   []error // what it matches
		not  error   // what it does not
	}{
		{name: "no time left", err: errBudgetSpent, is: []error{ErrTimeout}, not: context.Canceled},
		{name: "the upstream out of time", err: upstreamTimedOut(fasthttp.ErrTimeout), is: []error{ErrTimeout, fasthttp.ErrTimeout}, not: context.Canceled},
		{name: "the client gone", err: errClientLeft, is: []error{ErrClientGone, context.Canceled}, not: ErrTimeout},
		{name: "the server shutting down", err: errShuttingDown, is: []error{ErrShutdown, context.Canceled}, not: ErrTimeout},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, target := range tc.is {
				assert.ErrorIs(t, tc.err, target)
			}
			assert.NotErrorIs(t, tc.err, tc.not)
			allocs := testing.AllocsPerRun(100, func() {
				for _, target := range tc.is {
					_ = errors.Is(tc.err, target)
				}
				_ = errors.Is(tc.err, tc.not)
			})
			assert.Zero(t, allocs)
		})
	}
}
