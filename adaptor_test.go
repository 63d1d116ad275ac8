package fasttimeout_test

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/valyala/fasthttp"

	"github.com/fasttimeout/fasttimeout"
)

func TestNetHTTPHandler(t *testing.T) {
	t.Parallel()

	for _, mode := range allModes {
		t.Run("r.Context() carries the deadline and is cancelled with ErrTimeout, "+mode.String(), func(t *testing.T) {
			t.Parallel()
			type seen struct {
				left  time.Duration
				cause error
			}
			seenc := make(chan seen, 1)
			s := serve(t, fasttimeout.New(fasttimeout.NetHTTPHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				deadline, ok := r.Context().Deadline()
				require.True(t, ok)
				<-r.Context().Done()
				seenc <- seen{left: time.Until(deadline), cause: context.Cause(r.Context())}
			})), fasttimeout.Config{Timeout: 30 * time.Millisecond, Mode: mode}))

			status, _, _ := s.get(t, "/")
			assert.Equal(t, fasthttp.StatusGatewayTimeout, status)
			v := <-seenc
			assert.LessOrEqual(t, v.left, time.Duration(0))
			assert.ErrorIs(t, v.cause, fasttimeout.ErrTimeout)
		})
	}

	t.Run("a handler that finishes in time answers as written", func(t *testing.T) {
		t.Parallel()
		s := serve(t, fasttimeout.New(fasttimeout.NetHTTPHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/plain")
			w.WriteHeader(http.StatusCreated)
			_, _ = w.Write([]byte("created " + r.URL.Path))
		})), fasttimeout.Config{Timeout: time.Minute}))

		status, body, contentType := s.get(t, "/items")
		assert.Equal(t, fasthttp.StatusCreated, status)
		assert.Equal(t, "created /items", body)
		assert.Equal(t, "text/plain", contentType)
	})

	t.Run("r.Context() outside New is cancelled only by shutdown", func(t *testing.T) {
		t.Parallel()
		deadlines := make(chan bool, 1)
		s := serve(t, fasttimeout.NetHTTPHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			_, ok := r.Context().Deadline()
			deadlines <- ok
		})))
		status, _, _ := s.get(t, "/")
		assert.Equal(t, fasthttp.StatusOK, status)
		assert.False(t, <-deadlines)
	})

	t.Run("panics on a nil handler", func(t *testing.T) {
		t.Parallel()
		assert.PanicsWithValue(t, "fasttimeout: NetHTTPHandler needs a handler, got nil", func() { fasttimeout.NetHTTPHandler(nil) })
	})
}
