package fasttimeout

import (
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
