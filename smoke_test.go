package fasttimeout_test

import (
	"testing"
	"time"

	"github.com/fasttimeout/fasttimeout"
	"github.com/stretchr/testify/require"
	"github.com/valyala/fasthttp"
)

func TestSmoke(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	h := fasttimeout.New(func(ctx *fasthttp.RequestCtx) {
		if string(ctx.Path()) == "/slow" {
			<-release
		}
		ctx.SetBodyString("ok")
	}, fasttimeout.Config{Timeout: 50 * time.Millisecond})
	s := serve(t, h)
	code, body, _ := s.get(t, "/fast")
	require.Equal(t, 200, code)
	require.Equal(t, "ok", body)
	start := time.Now()
	code, body, ct := s.get(t, "/slow")
	t.Log(time.Since(start))
	require.Equal(t, 504, code)
	require.Equal(t, fasttimeout.DefaultBody, body)
	require.Equal(t, "application/json", ct)
	code, _, _ = s.get(t, "/fast")
	require.Equal(t, 200, code)
}
