package fasttimeout_test

import (
	"bytes"
	"context"
	"io"
	"io/fs"
	"mime/multipart"
	"net/http"
	"os"
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
				hasDeadline bool
				left        time.Duration
				cause       error
			}
			seenc := make(chan seen, 1)
			s := serve(t, fasttimeout.New(fasttimeout.NetHTTPHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				deadline, ok := r.Context().Deadline()
				<-r.Context().Done()
				seenc <- seen{hasDeadline: ok, left: time.Until(deadline), cause: context.Cause(r.Context())}
			})), fasttimeout.Config{Timeout: actInTime, Mode: mode})) // the handler must run

			status, _, _ := s.get(t, "/")
			assert.Equal(t, fasthttp.StatusGatewayTimeout, status)
			v := receive(t, seenc, "the handler's look at r.Context()")
			assert.True(t, v.hasDeadline)
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
		assert.False(t, receive(t, deadlines, "the handler's look at its deadline"))
	})

	t.Run("panics on a nil handler", func(t *testing.T) {
		t.Parallel()
		// Each of these would panic on every request, before a line of
		// the handler ran, and the panic, re-raised on the server
		// goroutine, ends the process at the first request.
		for _, tc := range []struct {
			name string
			h    http.Handler
			want string
		}{
			{"nil interface", nil, "fasttimeout: NetHTTPHandler needs a handler, got nil"},
			{"nil http.HandlerFunc", http.HandlerFunc(nil), "fasttimeout: NetHTTPHandler needs a handler, got a nil http.HandlerFunc"},
			{"nil pointer to a value method", (*valueHandler)(nil), "fasttimeout: NetHTTPHandler needs a handler, got a nil *fasttimeout_test.valueHandler"},
			{"nil pointer to a struct embedding a handler", (*embeddingHandler)(nil), "fasttimeout: NetHTTPHandler needs a handler, got a nil *fasttimeout_test.embeddingHandler"},
		} {
			assert.PanicsWithValue(t, tc.want, func() { fasttimeout.NetHTTPHandler(tc.h) }, tc.name)
		}
	})

	t.Run("serves a nil pointer whose pointer method does not dereference it", func(t *testing.T) {
		t.Parallel()
		s := serve(t, fasttimeout.New(fasttimeout.NetHTTPHandler((*nilSafeHandler)(nil)), fasttimeout.Config{Timeout: time.Minute}))
		status, body, _ := s.get(t, "/")
		assert.Equal(t, fasthttp.StatusOK, status)
		assert.Equal(t, "nil-safe", body)
	})

	t.Run("serves a nil function whose own ServeHTTP does not call it", func(t *testing.T) {
		t.Parallel()
		s := serve(t, fasttimeout.New(fasttimeout.NetHTTPHandler(nilSafeFunc(nil)), fasttimeout.Config{Timeout: time.Minute}))
		status, body, _ := s.get(t, "/")
		assert.Equal(t, fasthttp.StatusOK, status)
		assert.Equal(t, "nil-safe func", body)
	})
}

// valueHandler has a value receiver: a nil *valueHandler cannot serve.
type valueHandler struct{ body string }

func (h valueHandler) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	_, _ = io.WriteString(w, h.body)
}

// embeddingHandler serves through the handler it embeds: a nil
// *embeddingHandler cannot serve.
type embeddingHandler struct{ http.Handler }

// nilSafeHandler's pointer method works on a nil receiver, as a method may.
type nilSafeHandler struct{}

func (h *nilSafeHandler) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	_, _ = io.WriteString(w, "nil-safe")
}

// nilSafeFunc is a function type whose ServeHTTP, unlike
// http.HandlerFunc's, works with a nil function, as a method may.
type nilSafeFunc func(w http.ResponseWriter)

func (f nilSafeFunc) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	if f == nil {
		_, _ = io.WriteString(w, "nil-safe func")
		return
	}
	f(w)
}

// A net/http handler that hijacks its connection after its deadline (a
// WebSocket upgrade, or httputil.ReverseProxy passing on a backend's 101,
// after a slow start) must not get it: fasthttpadaptor hands the handler
// the connection at once, and the server has answered the request with the
// timeout response and reads the next one from that connection. What the
// handler wrote there would reach the client as the answer to its next
// request.
func TestNetHTTPHandler_a_late_Hijack_does_not_take_the_connection(t *testing.T) {
	t.Parallel()
	for _, mode := range allModes {
		t.Run(mode.String(), func(t *testing.T) {
			t.Parallel()
			answered := make(chan struct{})
			hijacked := make(chan error, 1)
			s := startStressLoopback(t, fasttimeout.New(fasttimeout.NetHTTPHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path != "/upgrade" {
					_, _ = io.WriteString(w, "second")
					return
				}
				<-r.Context().Done() // past the deadline
				conn, _, err := http.NewResponseController(w).Hijack()
				if err == nil {
					<-answered // the client has the timeout response
					_, err = io.WriteString(conn, "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nleak")
				}
				hijacked <- err
			})), fasttimeout.Config{Timeout: actInTime, TimeoutFunc: onlyTimingOut("/upgrade"), Mode: mode})) // /upgrade must run

			c, err := dialStress(s.addr)
			require.NoError(t, err)
			defer c.close()
			requireTimeoutResponse(t, c.get(t, "/upgrade", "a"))
			close(answered)
			err = receive(t, hijacked, "the late handler's hijack")
			assert.ErrorIs(t, err, fasttimeout.ErrTimeout, "a hijack after the deadline fails")
			resp := c.get(t, "/second", "b")
			assert.Equal(t, "second", string(resp.Body()), "the answer to the next request is its own")
		})
	}
}

// A net/http handler that hijacks in time keeps the connection past the
// deadline, through http.ResponseController as through http.Hijacker.
func TestNetHTTPHandler_a_Hijack_in_time_keeps_the_connection(t *testing.T) {
	t.Parallel()
	for _, mode := range allModes {
		t.Run(mode.String(), func(t *testing.T) {
			t.Parallel()
			s := startStressLoopback(t, fasttimeout.New(fasttimeout.NetHTTPHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				conn, _, err := http.NewResponseController(w).Hijack()
				if err != nil {
					http.Error(w, err.Error(), http.StatusInternalServerError)
					return
				}
				defer conn.Close()
				<-r.Context().Done() // the handler's return, after the hijack
				_, _ = io.WriteString(conn, "HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nhijacked")
			})), fasttimeout.Config{Timeout: actInTime, Mode: mode})) // the hijack must come in time

			c, err := dialStress(s.addr)
			require.NoError(t, err)
			defer c.close()
			resp := c.get(t, "/", "a")
			assert.Equal(t, fasthttp.StatusOK, resp.StatusCode())
			assert.Equal(t, "hijacked", string(resp.Body()))
		})
	}
}

// The temporary files of a multipart form the handler parsed are removed
// when it returns, as net/http and fasthttpadaptor remove them: the handler
// parses its own copy of the request (the one with the request's context),
// whose form fasthttpadaptor never sees.
func TestNetHTTPHandler_removes_the_files_of_a_parsed_multipart_form(t *testing.T) {
	t.Parallel()
	for _, mode := range allModes {
		t.Run(mode.String(), func(t *testing.T) {
			t.Parallel()
			files := make(chan string, 1)
			s := serve(t, fasttimeout.New(fasttimeout.NetHTTPHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				name := ""
				if assert.NoError(t, r.ParseMultipartForm(1)) { // the file part goes to disk
					if f, err := r.MultipartForm.File["upload"][0].Open(); assert.NoError(t, err) {
						if file, ok := f.(*os.File); assert.True(t, ok, "the upload is on disk") {
							name = file.Name()
						}
						_ = f.Close()
					}
				}
				files <- name
			})), fasttimeout.Config{Timeout: waitTimeout, Mode: mode}))

			var body bytes.Buffer
			form := multipart.NewWriter(&body)
			part, err := form.CreateFormFile("upload", "upload.txt")
			require.NoError(t, err)
			_, err = part.Write(bytes.Repeat([]byte("x"), 1000))
			require.NoError(t, err)
			require.NoError(t, form.Close())
			req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
			defer fasthttp.ReleaseRequest(req)
			defer fasthttp.ReleaseResponse(resp)
			req.SetRequestURI("http://test/upload")
			req.Header.SetMethod(fasthttp.MethodPost)
			req.Header.SetContentType(form.FormDataContentType())
			req.SetBody(body.Bytes())
			require.NoError(t, s.client.DoTimeout(req, resp, waitTimeout))
			assert.Equal(t, fasthttp.StatusOK, resp.StatusCode())

			name := receive(t, files, "the name of the uploaded file")
			require.NotEmpty(t, name)
			t.Cleanup(func() { _ = os.Remove(name) })
			_, err = os.Stat(name)
			assert.ErrorIs(t, err, fs.ErrNotExist, "the upload's temporary file is removed once the response is out")
		})
	}
}

// A net/http handler past its deadline that sets a write deadline on its
// connection (http.ResponseController) must not cut the timeout response
// short: in racing mode the connection writes it under the late handler's
// deadline when the handler sets it before fasthttp takes the answer
// (here while OnTimeout runs), in cooperative mode whenever it does.
func TestNetHTTPHandler_a_late_SetWriteDeadline_does_not_reach_the_timeout_response(t *testing.T) {
	t.Parallel()
	for _, mode := range allModes {
		t.Run(mode.String(), func(t *testing.T) {
			t.Parallel()
			set := make(chan error, 1)
			s := startStressLoopback(t, fasttimeout.New(fasttimeout.NetHTTPHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path != "/late" {
					_, _ = io.WriteString(w, "second")
					return
				}
				<-r.Context().Done() // past the deadline
				set <- http.NewResponseController(w).SetWriteDeadline(time.Now().Add(-time.Second))
			})), fasttimeout.Config{
				Timeout:     actInTime, // /late must run
				TimeoutFunc: onlyTimingOut("/late"),
				Mode:        mode,
				// Racing: the timeout response waits for the late handler's
				// SetWriteDeadline; cooperative: it has already come.
				OnTimeout: func(*fasthttp.RequestCtx, *fasthttp.Response) {
					select {
					case err := <-set:
						assert.ErrorIs(t, err, fasttimeout.ErrTimeout, "a write deadline after the deadline fails")
					case <-time.After(stressBound):
						assert.Fail(t, "no SetWriteDeadline from the late handler")
					}
				},
			}))

			c, err := dialStress(s.addr)
			require.NoError(t, err)
			defer c.close()
			requireTimeoutResponse(t, c.get(t, "/late", "a"))
			resp := c.get(t, "/second", "b")
			assert.Equal(t, "second", string(resp.Body()), "the connection lives on")
		})
	}
}

// Once a Flush has made the response a stream, or a Hijack has taken the
// connection, the middleware has let go of the request: a later Hijack must
// fail as net/http's would after a Hijack, or with http.ErrNotSupported
// after a Flush (the server is writing the stream on that connection), and
// not look the request up in a RequestCtx the middleware is ending (a data
// race), nor report that it timed out.
func TestNetHTTPHandler_a_Hijack_after_the_response_left_fails_cleanly(t *testing.T) {
	t.Parallel()
	for _, mode := range allModes {
		t.Run("after a Flush, "+mode.String(), func(t *testing.T) {
			t.Parallel()
			hijacked := make(chan error, 1)
			s := serve(t, fasttimeout.New(fasttimeout.NetHTTPHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				rc := http.NewResponseController(w)
				_, _ = io.WriteString(w, "streamed")
				assert.NoError(t, rc.Flush())
				conn, _, err := rc.Hijack()
				if conn != nil {
					_ = conn.Close()
				}
				hijacked <- err
			})), fasttimeout.Config{Timeout: waitTimeout, Mode: mode}))

			status, body, _ := s.get(t, "/")
			assert.Equal(t, fasthttp.StatusOK, status)
			assert.Equal(t, "streamed", body)
			assert.ErrorIs(t, receive(t, hijacked, "the Hijack after the Flush"), http.ErrNotSupported)
		})

		t.Run("a second time, "+mode.String(), func(t *testing.T) {
			t.Parallel()
			hijacked := make(chan error, 1)
			s := startStressLoopback(t, fasttimeout.New(fasttimeout.NetHTTPHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				rc := http.NewResponseController(w)
				conn, _, err := rc.Hijack()
				if !assert.NoError(t, err) {
					return
				}
				defer conn.Close()
				_, _, err = rc.Hijack()
				hijacked <- err
				_, _ = io.WriteString(conn, "HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nhijacked")
			})), fasttimeout.Config{Timeout: waitTimeout, Mode: mode}))

			c, err := dialStress(s.addr)
			require.NoError(t, err)
			defer c.close()
			resp := c.get(t, "/", "a")
			assert.Equal(t, "hijacked", string(resp.Body()))
			assert.ErrorIs(t, receive(t, hijacked, "the second Hijack"), http.ErrHijacked)
		})
	}
}
