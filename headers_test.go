package fasttimeout

import (
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/valyala/fasthttp"
)

// requestHeader returns a request header holding the given name, value
// pairs, parsed from the wire as a server would.
func requestHeader(t testing.TB, disableNormalizing bool, kv ...string) *fasthttp.RequestHeader {
	t.Helper()
	var b strings.Builder
	b.WriteString("GET /api HTTP/1.1\r\nHost: example.com\r\n")
	for i := 0; i < len(kv); i += 2 {
		b.WriteString(kv[i] + ": " + kv[i+1] + "\r\n")
	}
	b.WriteString("\r\n")
	h := new(fasthttp.RequestHeader)
	if disableNormalizing {
		h.DisableNormalizing()
	}
	require.NoError(t, h.Read(bufioReader(b.String())))
	return h
}

func TestIncomingBudget(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name      string
		headers   []string
		budget    time.Duration
		found     bool
		malformed bool
	}{
		{name: "no header: nothing found", headers: nil},
		{name: "grpc-timeout hours", headers: []string{"grpc-timeout", "2H"}, budget: 2 * time.Hour, found: true},
		{name: "grpc-timeout minutes", headers: []string{"grpc-timeout", "3M"}, budget: 3 * time.Minute, found: true},
		{name: "grpc-timeout seconds", headers: []string{"grpc-timeout", "5S"}, budget: 5 * time.Second, found: true},
		{name: "grpc-timeout milliseconds", headers: []string{"grpc-timeout", "250m"}, budget: 250 * time.Millisecond, found: true},
		{name: "grpc-timeout microseconds", headers: []string{"grpc-timeout", "1500u"}, budget: 1500 * time.Microsecond, found: true},
		{name: "grpc-timeout nanoseconds", headers: []string{"grpc-timeout", "99999999n"}, budget: 99999999, found: true},
		{name: "grpc-timeout 8 digits", headers: []string{"grpc-timeout", "86400000m"}, budget: 24 * time.Hour, found: true},
		{name: "grpc-timeout exactly 24h", headers: []string{"grpc-timeout", "24H"}, budget: 24 * time.Hour, found: true},
		{name: "grpc-timeout zero is found and spent", headers: []string{"grpc-timeout", "0S"}, budget: 0, found: true},
		{name: "grpc-timeout leading zeros", headers: []string{"grpc-timeout", "00000010S"}, budget: 10 * time.Second, found: true},
		{name: "grpc-timeout canonical name", headers: []string{"Grpc-Timeout", "1S"}, budget: time.Second, found: true},
		{name: "grpc-timeout upper-case name", headers: []string{"GRPC-TIMEOUT", "1S"}, budget: time.Second, found: true},
		{name: "envoy milliseconds", headers: []string{"x-envoy-expected-rq-timeout-ms", "1500"}, budget: 1500 * time.Millisecond, found: true},
		{name: "envoy zero means no timeout: no budget", headers: []string{"x-envoy-expected-rq-timeout-ms", "0"}},
		{name: "envoy one is a nearly spent budget", headers: []string{"x-envoy-expected-rq-timeout-ms", "1"}, budget: time.Millisecond, found: true},
		{name: "envoy exactly 24h", headers: []string{"x-envoy-expected-rq-timeout-ms", "86400000"}, budget: 24 * time.Hour, found: true},
		{name: "request-timeout whole seconds", headers: []string{"Request-Timeout", "5"}, budget: 5 * time.Second, found: true},
		{name: "request-timeout decimal seconds", headers: []string{"Request-Timeout", "2.5"}, budget: 2500 * time.Millisecond, found: true},
		{name: "request-timeout leading point", headers: []string{"Request-Timeout", ".25"}, budget: 250 * time.Millisecond, found: true},
		{name: "request-timeout trailing point", headers: []string{"Request-Timeout", "3."}, budget: 3 * time.Second, found: true},
		{name: "request-timeout nanosecond digits", headers: []string{"Request-Timeout", "0.0000000019"}, budget: 1, found: true},
		{name: "request-timeout exactly 24h", headers: []string{"Request-Timeout", "86400.0"}, budget: 24 * time.Hour, found: true},

		{name: "the smallest of three headers: grpc-timeout", headers: []string{"Request-Timeout", "9", "x-envoy-expected-rq-timeout-ms", "8000", "grpc-timeout", "7S"}, budget: 7 * time.Second, found: true},
		{name: "the smallest of three headers: envoy under a caller's grpc-timeout", headers: []string{"grpc-timeout", "3S", "x-envoy-expected-rq-timeout-ms", "100"}, budget: 100 * time.Millisecond, found: true},
		{name: "the smallest of three headers: request-timeout", headers: []string{"grpc-timeout", "3S", "x-envoy-expected-rq-timeout-ms", "2000", "Request-Timeout", "1"}, budget: time.Second, found: true},
		{name: "the smallest of repeated grpc-timeout lines", headers: []string{"grpc-timeout", "5S", "grpc-timeout", "100m", "grpc-timeout", "2S"}, budget: 100 * time.Millisecond, found: true},
		{name: "the smallest of repeated envoy lines", headers: []string{"x-envoy-expected-rq-timeout-ms", "900", "x-envoy-expected-rq-timeout-ms", "300"}, budget: 300 * time.Millisecond, found: true},
		{name: "the smallest of repeated request-timeout lines", headers: []string{"Request-Timeout", "4", "Request-Timeout", "2"}, budget: 2 * time.Second, found: true},
		{name: "a spent grpc-timeout among longer ones", headers: []string{"grpc-timeout", "5S", "x-envoy-expected-rq-timeout-ms", "900", "grpc-timeout", "0n"}, budget: 0, found: true},
		{name: "envoy zero gives way to grpc-timeout", headers: []string{"x-envoy-expected-rq-timeout-ms", "0", "grpc-timeout", "5S"}, budget: 5 * time.Second, found: true},
		{name: "envoy over 24h, request-timeout decides", headers: []string{"x-envoy-expected-rq-timeout-ms", "90000000", "Request-Timeout", "2"}, budget: 2 * time.Second, found: true},
		{name: "a malformed line among valid ones is counted", headers: []string{"grpc-timeout", "soon", "grpc-timeout", "2S"}, budget: 2 * time.Second, found: true, malformed: true},
		{name: "malformed grpc-timeout gives way to envoy", headers: []string{"grpc-timeout", "soon", "x-envoy-expected-rq-timeout-ms", "8000"}, budget: 8 * time.Second, found: true, malformed: true},
		{name: "malformed grpc and envoy give way to request-timeout", headers: []string{"grpc-timeout", "1X", "x-envoy-expected-rq-timeout-ms", "-1", "Request-Timeout", "9"}, budget: 9 * time.Second, found: true, malformed: true},

		{name: "grpc-timeout 9 digits", headers: []string{"grpc-timeout", "123456789n"}, malformed: true},
		{name: "grpc-timeout no digits", headers: []string{"grpc-timeout", "S"}, malformed: true},
		{name: "grpc-timeout no unit", headers: []string{"grpc-timeout", "100"}, malformed: true},
		{name: "grpc-timeout unknown unit", headers: []string{"grpc-timeout", "100s"}, malformed: true},
		{name: "grpc-timeout negative", headers: []string{"grpc-timeout", "-5S"}, malformed: true},
		{name: "grpc-timeout plus sign", headers: []string{"grpc-timeout", "+5S"}, malformed: true},
		{name: "grpc-timeout space inside", headers: []string{"grpc-timeout", "5 S"}, malformed: true},
		{name: "grpc-timeout over 24h is valid and counts as 24h", headers: []string{"grpc-timeout", "25H"}, budget: 24 * time.Hour, found: true},
		{name: "grpc-go's 30 hours in seconds counts as 24h", headers: []string{"grpc-timeout", "108000S"}, budget: 24 * time.Hour, found: true},
		{name: "grpc-timeout max 8 digits of hours counts as 24h", headers: []string{"grpc-timeout", "99999999H"}, budget: 24 * time.Hour, found: true},
		{name: "grpc-timeout empty", headers: []string{"grpc-timeout", ""}, malformed: true},
		{name: "grpc-timeout non-ASCII digits", headers: []string{"grpc-timeout", "٣S"}, malformed: true},
		{name: "grpc-timeout decimal", headers: []string{"grpc-timeout", "1.5S"}, malformed: true},
		{name: "envoy negative", headers: []string{"x-envoy-expected-rq-timeout-ms", "-1"}, malformed: true},
		{name: "envoy decimal", headers: []string{"x-envoy-expected-rq-timeout-ms", "1.5"}, malformed: true},
		{name: "envoy with unit", headers: []string{"x-envoy-expected-rq-timeout-ms", "100ms"}, malformed: true},
		{name: "envoy over 24h counts as 24h", headers: []string{"x-envoy-expected-rq-timeout-ms", "86400001"}, budget: 24 * time.Hour, found: true},
		{name: "envoy overflowing int64", headers: []string{"x-envoy-expected-rq-timeout-ms", "99999999999999999999999999"}, malformed: true},
		{name: "envoy empty", headers: []string{"x-envoy-expected-rq-timeout-ms", ""}, malformed: true},
		{name: "request-timeout negative", headers: []string{"Request-Timeout", "-1"}, malformed: true},
		{name: "request-timeout exponent", headers: []string{"Request-Timeout", "1e3"}, malformed: true},
		{name: "request-timeout two points", headers: []string{"Request-Timeout", "1.2.3"}, malformed: true},
		{name: "request-timeout point only", headers: []string{"Request-Timeout", "."}, malformed: true},
		{name: "request-timeout infinity", headers: []string{"Request-Timeout", "Inf"}, malformed: true},
		{name: "request-timeout NaN", headers: []string{"Request-Timeout", "NaN"}, malformed: true},
		{name: "request-timeout Go duration", headers: []string{"Request-Timeout", "5s"}, malformed: true},
		{name: "request-timeout over 24h counts as 24h", headers: []string{"Request-Timeout", "86400.5"}, budget: 24 * time.Hour, found: true},
		{name: "request-timeout overflowing int64", headers: []string{"Request-Timeout", "9223372036854775808"}, malformed: true},
		{name: "request-timeout huge", headers: []string{"Request-Timeout", strings.Repeat("9", 4000)}, malformed: true},
		{name: "request-timeout space inside", headers: []string{"Request-Timeout", "1 0"}, malformed: true},
		{name: "request-timeout empty", headers: []string{"Request-Timeout", ""}, malformed: true},
	} {
		for _, disableNormalizing := range []bool{false, true} {
			name := tc.name
			if disableNormalizing {
				name += " (names not normalized)"
			}
			t.Run(name, func(t *testing.T) {
				if disableNormalizing && hasUpperCaseName(tc.headers) {
					t.Skip("a server that keeps names as received finds canonical and lower-case names only")
				}
				h := requestHeader(t, disableNormalizing, tc.headers...)
				budget, found, malformed := incomingBudget(h)
				assert.Equal(t, tc.budget, budget, "budget")
				assert.Equal(t, tc.found, found, "found")
				assert.Equal(t, tc.malformed, malformed, "malformed")
			})
		}
	}
}

// hasUpperCaseName reports whether a header name is neither canonical nor
// lower case.
func hasUpperCaseName(kv []string) bool {
	for i := 0; i < len(kv); i += 2 {
		name := kv[i]
		if name != strings.ToLower(name) && name != HeaderGRPCTimeout &&
			name != HeaderEnvoyExpectedTimeout && name != HeaderRequestTimeout {
			return true
		}
	}
	return false
}

func TestIncomingBudgetDoesNotAllocate(t *testing.T) {
	h := requestHeader(t, false, "x-envoy-expected-rq-timeout-ms", "bad", "Request-Timeout", "2.5")
	allocs := testing.AllocsPerRun(100, func() { _, _, _ = incomingBudget(h) })
	assert.Zero(t, allocs)
}

func BenchmarkIncomingBudget(b *testing.B) {
	for _, bc := range []struct {
		name    string
		headers []string
	}{
		{name: "no-header", headers: []string{"Accept", "application/json", "X-Request-Id", "0af7651916cd43dd8448eb211c80319c"}},
		{name: "grpc-timeout", headers: []string{"grpc-timeout", "250m"}},
		{name: "envoy", headers: []string{"x-envoy-expected-rq-timeout-ms", "1500"}},
		{name: "request-timeout", headers: []string{"Request-Timeout", "2.5"}},
		{name: "all-malformed", headers: []string{"grpc-timeout", "1X", "x-envoy-expected-rq-timeout-ms", "-1", "Request-Timeout", "soon"}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			h := requestHeader(b, false, bc.headers...)
			b.ReportAllocs()
			for b.Loop() {
				_, _, _ = incomingBudget(h)
			}
		})
	}
}

// BenchmarkDeadlineHeadersFastPath measures a racing request served by New
// without a network, with the caller's deadline headers off, on but absent,
// and on and present.
func BenchmarkDeadlineHeadersFastPath(b *testing.B) {
	handler := func(ctx *fasthttp.RequestCtx) { ctx.SetStatusCode(fasthttp.StatusOK) }
	for _, bc := range []struct {
		name   string
		honor  bool
		header string
	}{
		{name: "honor-off", honor: false},
		{name: "honor-on/no-header", honor: true},
		{name: "honor-on/grpc-timeout", honor: true, header: "grpc-timeout"},
	} {
		b.Run(bc.name, func(b *testing.B) {
			h := New(handler, Config{Timeout: time.Second, HonorDeadlineHeaders: bc.honor})
			var req fasthttp.Request
			req.SetRequestURI("http://example.com/api/items?limit=10")
			req.Header.Set("Accept", "application/json")
			req.Header.Set("X-Request-Id", "0af7651916cd43dd8448eb211c80319c")
			if bc.header != "" {
				req.Header.Set(bc.header, "250m")
			}
			var ctx fasthttp.RequestCtx
			ctx.Init(&req, nil, nil)
			b.ReportAllocs()
			for b.Loop() {
				ctx.Response.Reset()
				h(&ctx)
			}
		})
	}
}
