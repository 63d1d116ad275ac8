package fasttimeout_test

import (
	"fmt"
	"io"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/fasthttputil"

	"github.com/fasttimeout/fasttimeout"
)

// TestNew_rejects_bad_configuration checks that New panics on every invalid
// field, with a message that names the field and quotes the bad value.
func TestNew_rejects_bad_configuration(t *testing.T) {
	t.Parallel()
	ok := func(*fasthttp.RequestCtx) {}
	tests := []struct {
		name    string
		handler fasthttp.RequestHandler
		cfg     fasttimeout.Config
		want    string
	}{
		{"nil_handler", nil, fasttimeout.Config{}, "New needs a handler, got nil"},
		{"negative_timeout", ok, fasttimeout.Config{Timeout: -time.Second}, "Config.Timeout must not be negative, got -1s"},
		// A bare number is nanoseconds: 5 meant as seconds would time out
		// every request.
		{"timeout_as_a_bare_number", ok, fasttimeout.Config{Timeout: 5}, "Config.Timeout must be at least 1ms, as TimeoutFromEnv's, got 5ns"},
		{"timeout_under_a_millisecond", ok, fasttimeout.Config{Timeout: 999 * time.Microsecond}, "got 999µs"},
		{"status_below_100", ok, fasttimeout.Config{StatusCode: 42}, "Config.StatusCode must be a final HTTP status (200-599), got 42"},
		{"status_informational", ok, fasttimeout.Config{StatusCode: fasthttp.StatusContinue}, "Config.StatusCode must be a final HTTP status (200-599), got 100"},
		{"status_199", ok, fasttimeout.Config{StatusCode: 199}, "got 199"},
		{"status_above_599", ok, fasttimeout.Config{StatusCode: 600}, "got 600"},
		{"unknown_mode", ok, fasttimeout.Config{Mode: 7}, "Config.Mode must be Racing or Cooperative, got Mode(7)"},
		{"precision_too_fine", ok, fasttimeout.Config{Precision: time.Microsecond}, "Config.Precision must be at least 100µs, got 1µs"},
		{"negative_margin", ok, fasttimeout.Config{DeadlineMargin: -1}, "Config.DeadlineMargin must not be negative, got -1ns"},
		{"negative_late_cap", ok, fasttimeout.Config{MaxLateHandlers: -1}, "Config.MaxLateHandlers must not be negative, got -1"},
		{"negative_concurrency", ok, fasttimeout.Config{MaxConcurrency: -3}, "Config.MaxConcurrency must not be negative, got -3"},
		{"negative_queue_age", ok, fasttimeout.Config{MaxQueueAge: -time.Minute}, "Config.MaxQueueAge must not be negative, got -1m0s"},
		{"negative_retry_after", ok, fasttimeout.Config{RetryAfter: -time.Second}, "Config.RetryAfter must not be negative, got -1s"},
		// fasthttp drops the body of a 204 or 304, and sends a 205's
		// against RFC 9110 §15.3.6.
		{"body_with_status_204", ok, fasttimeout.Config{StatusCode: fasthttp.StatusNoContent, Body: []byte("busy")}, "Config.StatusCode 204 has no body, so Config.Body must be empty, got 4 bytes"},
		{"body_with_status_205", ok, fasttimeout.Config{StatusCode: fasthttp.StatusResetContent, Body: []byte("busy")}, "Config.StatusCode 205"},
		{"body_with_status_304", ok, fasttimeout.Config{StatusCode: fasthttp.StatusNotModified, Body: []byte("busy")}, "Config.StatusCode 304"},
		{"content_type_with_a_line_break", ok, fasttimeout.Config{ContentType: "text/plain\r\nX-Injected: yes"}, `Config.ContentType must not hold a control character ('\r' at byte 10), got "text/plain\r\nX-Injected: yes"`},
		{"content_type_with_a_nul", ok, fasttimeout.Config{ContentType: "text/plain\x00"}, `('\x00' at byte 10), got "text/plain\x00"`},
		{"content_type_with_a_del", ok, fasttimeout.Config{ContentType: "text/plain\x7f"}, `('\x7f' at byte 10), got "text/plain\x7f"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			defer func() {
				msg, _ := recover().(string)
				assert.True(t, strings.HasPrefix(msg, "fasttimeout: "), "panic message %q", msg)
				assert.Contains(t, msg, tt.want)
			}()
			fasttimeout.New(tt.handler, tt.cfg)
			t.Error("New did not panic")
		})
	}
}

// TestNew_status_without_a_body reads off the wire what a client gets for
// a timeout answered with a status that has no body: none, and what
// OnTimeout sees is what goes out.
func TestNew_status_without_a_body(t *testing.T) {
	t.Parallel()
	for _, mode := range allModes {
		for _, code := range []int{fasthttp.StatusNoContent, fasthttp.StatusResetContent, fasthttp.StatusNotModified} {
			t.Run(fmt.Sprintf("%s_%d", mode, code), func(t *testing.T) {
				t.Parallel()
				seen := make(chan string, 1)
				head, body := rawTimeoutResponse(t, fasttimeout.Config{
					Mode: mode, StatusCode: code,
					OnTimeout: func(_ *fasthttp.RequestCtx, resp *fasthttp.Response) { seen <- string(resp.Body()) },
				})
				assert.True(t, strings.HasPrefix(head, fmt.Sprintf("HTTP/1.1 %d ", code)), "status line of %q", head)
				assert.Empty(t, body)
				if code == fasthttp.StatusResetContent {
					// RFC 9110 §15.3.6: a 205 says its content is empty.
					assert.Contains(t, head, "\r\nContent-Length: 0\r\n")
				}
				assert.Empty(t, receive(t, seen, "OnTimeout's body"), "OnTimeout sees what is sent")
			})
		}
	}
}

// TestNew_timeout_response_without_a_body_has_no_content_type reads the
// Content-Type of timeout responses off the wire: a response with no body
// claims no type of its own, unless the configuration names one.
func TestNew_timeout_response_without_a_body_has_no_content_type(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		cfg      fasttimeout.Config
		wantType string // "": no Content-Type line
	}{
		{"empty body", fasttimeout.Config{Body: []byte{}}, ""},
		{"status 204", fasttimeout.Config{StatusCode: fasthttp.StatusNoContent}, ""},
		{"status 205", fasttimeout.Config{StatusCode: fasthttp.StatusResetContent}, ""},
		{"status 304", fasttimeout.Config{StatusCode: fasthttp.StatusNotModified}, ""},
		{"empty body with a content type set", fasttimeout.Config{Body: []byte{}, ContentType: "text/plain"}, "text/plain"},
		{"the default body", fasttimeout.Config{}, fasttimeout.DefaultContentType},
	}
	for _, mode := range allModes {
		for _, tt := range tests {
			t.Run(fmt.Sprintf("%s, %s", tt.name, mode), func(t *testing.T) {
				t.Parallel()
				cfg := tt.cfg
				cfg.Mode = mode
				head, _ := rawTimeoutResponse(t, cfg)
				if tt.wantType == "" {
					assert.NotContains(t, head, "\r\nContent-Type:")
				} else {
					assert.Contains(t, head, "\r\nContent-Type: "+tt.wantType+"\r\n")
				}
			})
		}
	}
}

// rawTimeoutResponse serves a handler that waits for its context's end
// with New(cfg) and a short timeout, and returns the head and body of the
// timeout response as they come off the wire.
func rawTimeoutResponse(t *testing.T, cfg fasttimeout.Config) (head, body string) {
	t.Helper()
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	cfg.Timeout = shortTimeout
	s := serve(t, fasttimeout.New(waitDone(release), cfg))
	conn, err := s.ln.(*fasthttputil.InmemoryListener).Dial()
	require.NoError(t, err)
	defer conn.Close()
	_, err = io.WriteString(conn, "GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
	require.NoError(t, err)
	require.NoError(t, conn.SetReadDeadline(time.Now().Add(waitTimeout)))
	raw, err := io.ReadAll(conn) // to the close the server answers with
	require.NoError(t, err)
	head, body, found := strings.Cut(string(raw), "\r\n\r\n")
	require.True(t, found, "a whole response: %q", raw)
	return head, body
}

func TestMode_String(t *testing.T) {
	t.Parallel()
	assert.Equal(t, "racing", fasttimeout.Racing.String())
	assert.Equal(t, "cooperative", fasttimeout.Cooperative.String())
	assert.Equal(t, "Mode(9)", fasttimeout.Mode(9).String())
}

func TestMode_text_round_trip(t *testing.T) {
	t.Parallel()
	for _, mode := range allModes {
		text, err := mode.MarshalText()
		require.NoError(t, err)
		var got fasttimeout.Mode
		require.NoError(t, got.UnmarshalText(text))
		assert.Equal(t, mode, got)
	}
	var m fasttimeout.Mode
	assert.ErrorContains(t, m.UnmarshalText([]byte("fast")), `got "fast"`)
	_, err := fasttimeout.Mode(9).MarshalText()
	assert.Error(t, err)
}

func TestTimeoutFunc(t *testing.T) {
	t.Parallel()

	t.Run("chooses the timeout per path", func(t *testing.T) {
		t.Parallel()
		for _, mode := range allModes {
			release := make(chan struct{})
			s := serve(t, fasttimeout.New(waitDone(release), fasttimeout.Config{
				Timeout: time.Minute,
				Mode:    mode,
				TimeoutFunc: func(ctx *fasthttp.RequestCtx) time.Duration {
					if string(ctx.Path()) == "/quick" {
						return 20 * time.Millisecond
					}
					return 0 // the configured minute
				},
			}))
			status, _, _ := s.get(t, "/quick")
			assert.Equal(t, fasthttp.StatusGatewayTimeout, status, mode)
			close(release)
		}
	})

	t.Run("zero or negative means the configured timeout", func(t *testing.T) {
		t.Parallel()
		for _, d := range []time.Duration{0, -time.Second} {
			left := make(chan time.Duration, 1)
			s := serve(t, fasttimeout.New(func(ctx *fasthttp.RequestCtx) {
				r, _ := fasttimeout.Remaining(ctx)
				left <- r
			}, fasttimeout.Config{Timeout: time.Minute, TimeoutFunc: func(*fasthttp.RequestCtx) time.Duration { return d }}))
			s.get(t, "/")
			r := receive(t, left, "the handler's Remaining")
			// Not d: a minute, less however long a loaded machine took to
			// run the handler.
			assert.LessOrEqual(t, r, time.Minute)
			assert.Greater(t, r, 30*time.Second)
		}
	})

	// math.MaxInt64 is a common way to say "no timeout": the deadline
	// start+timeout overflowed, and every request got the timeout response
	// at once without running.
	t.Run("the longest timeouts do not overflow", func(t *testing.T) {
		t.Parallel()
		for _, mode := range allModes {
			for _, cfg := range []fasttimeout.Config{
				{Timeout: math.MaxInt64},
				{TimeoutFunc: func(*fasthttp.RequestCtx) time.Duration { return math.MaxInt64 }},
			} {
				cfg.Mode = mode
				left := make(chan time.Duration, 1)
				s := serve(t, fasttimeout.New(func(ctx *fasthttp.RequestCtx) {
					r, _ := fasttimeout.Remaining(ctx)
					left <- r
					ctx.SetBodyString("ran")
				}, cfg))
				status, body, _ := s.get(t, "/")
				assert.Equal(t, fasthttp.StatusOK, status, mode)
				assert.Equal(t, "ran", body)
				assert.Greater(t, receive(t, left, "the handler's Remaining"), 100*365*24*time.Hour)
			}
		}
	})

	t.Run("the caller's budget still applies to a chosen timeout", func(t *testing.T) {
		t.Parallel()
		left := make(chan time.Duration, 1)
		s := serve(t, fasttimeout.New(func(ctx *fasthttp.RequestCtx) {
			r, _ := fasttimeout.Remaining(ctx)
			left <- r
		}, fasttimeout.Config{
			HonorDeadlineHeaders: true,
			TimeoutFunc:          func(*fasthttp.RequestCtx) time.Duration { return time.Hour },
		}))
		send(t, s, "grpc-timeout", "2S")
		assert.LessOrEqual(t, receive(t, left, "the handler's Remaining"), 2*time.Second)
	})
}

func TestSkip(t *testing.T) {
	t.Parallel()
	for _, mode := range allModes {
		t.Run("skipped requests run without deadline, "+mode.String(), func(t *testing.T) {
			t.Parallel()
			stats := new(fasttimeout.Stats)
			type seen struct{ remaining, deadline bool }
			seenc := make(chan seen, 1)
			s := serve(t, fasttimeout.New(func(ctx *fasthttp.RequestCtx) {
				_, remaining := fasttimeout.Remaining(ctx)
				_, deadline := fasttimeout.Context(ctx).Deadline()
				if string(ctx.Path()) == "/health" {
					assert.Zero(t, stats.Snapshot().InFlight, "a skipped request is not in flight")
				} else {
					assert.EqualValues(t, 1, stats.Snapshot().InFlight)
				}
				seenc <- seen{remaining: remaining, deadline: deadline}
				if string(ctx.Path()) == "/health" {
					// Outlive the timeout: a skipped request is never answered 504.
					<-time.After(60 * time.Millisecond)
				}
			}, fasttimeout.Config{
				Timeout: 20 * time.Millisecond, Mode: mode, Stats: stats, HonorDeadlineHeaders: true,
				// Only /health would time out if it were not skipped: /api
				// must not on a stalled machine, for Timeouts to stay zero.
				TimeoutFunc: onlyTimingOut("/health"),
				Skip:        func(ctx *fasthttp.RequestCtx) bool { return string(ctx.Path()) == "/health" },
			}))

			status, _, _ := s.get(t, "/health")
			assert.Equal(t, fasthttp.StatusOK, status)
			assert.Equal(t, seen{}, receive(t, seenc, "the handler's report"), "no deadline for a skipped request")
			s.get(t, "/api")
			assert.Equal(t, seen{remaining: true, deadline: true}, receive(t, seenc, "the handler's report"))

			req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
			req.SetRequestURI("http://test/health")
			req.Header.Set("grpc-timeout", "0S")
			require.NoError(t, s.client.DoTimeout(req, resp, 10*time.Second))
			assert.Equal(t, fasthttp.StatusOK, resp.StatusCode(), "deadline headers do not apply to skipped requests")
			<-seenc
			fasthttp.ReleaseRequest(req)
			fasthttp.ReleaseResponse(resp)

			c := stats.Snapshot()
			assert.Equal(t, int64(3), c.Requests)
			assert.Zero(t, c.Timeouts)
		})
	}
}

// TestNew_zero_Timeout_means_DefaultTimeout reads the deadline a handler
// gets from a zero Config: DefaultTimeout after the request's arrival
// (fasthttp's ctx.Time()), in both modes.
func TestNew_zero_Timeout_means_DefaultTimeout(t *testing.T) {
	t.Parallel()
	for _, mode := range allModes {
		t.Run(mode.String(), func(t *testing.T) {
			t.Parallel()
			timeout := make(chan time.Duration, 1)
			s := serve(t, fasttimeout.New(reportTimeout(timeout), fasttimeout.Config{Mode: mode}))
			status, _, _ := s.get(t, "/")
			assert.Equal(t, fasthttp.StatusOK, status)
			assert.Equal(t, fasttimeout.DefaultTimeout, receive(t, timeout, "the handler's deadline"))
			assert.Equal(t, 5*time.Second, fasttimeout.DefaultTimeout, "the documented 5 s")
		})
	}
}

// TestNew_StatusCode_range_ends_are_accepted: StatusCode takes every final
// status, 200 to 599 inclusive (TestNew_rejects_bad_configuration has the
// 199 and 600 beyond them); a timeout then answers with it.
func TestNew_StatusCode_range_ends_are_accepted(t *testing.T) {
	t.Parallel()
	for _, mode := range allModes {
		for _, code := range []int{fasthttp.StatusOK, 599} {
			t.Run(fmt.Sprintf("%s_%d", mode, code), func(t *testing.T) {
				t.Parallel()
				head, body := rawTimeoutResponse(t, fasttimeout.Config{Mode: mode, StatusCode: code})
				assert.True(t, strings.HasPrefix(head, fmt.Sprintf("HTTP/1.1 %d ", code)), "status line of %q", head)
				assert.Equal(t, fasttimeout.DefaultBody, body)
			})
		}
	}
}

// TestNew_Body_nil_or_empty reads the timeout response's body off the
// wire: a nil Body means DefaultBody, an empty non-nil one an empty body.
func TestNew_Body_nil_or_empty(t *testing.T) {
	t.Parallel()
	for _, mode := range allModes {
		for _, tc := range []struct {
			name string
			body []byte
			want string
		}{
			{"nil", nil, fasttimeout.DefaultBody},
			{"empty", []byte{}, ""},
		} {
			t.Run(tc.name+"_"+mode.String(), func(t *testing.T) {
				t.Parallel()
				head, body := rawTimeoutResponse(t, fasttimeout.Config{Mode: mode, Body: tc.body})
				assert.True(t, strings.HasPrefix(head, "HTTP/1.1 504 "), "status line of %q", head)
				assert.Equal(t, tc.want, body)
				assert.Contains(t, head, fmt.Sprintf("\r\nContent-Length: %d\r\n", len(tc.want)))
			})
		}
	}
}
