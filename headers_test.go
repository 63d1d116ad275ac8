package fasttimeout

import (
	"math"
	"math/rand/v2"
	"strconv"
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
		{name: "whole-second request-timeout rounded down beside envoy", headers: []string{"Request-Timeout", "2", "x-envoy-expected-rq-timeout-ms", "2999"}, budget: 2999 * time.Millisecond, found: true},
		{name: "whole-second request-timeout rounded down beside grpc-timeout", headers: []string{"grpc-timeout", "2500m", "Request-Timeout", "2"}, budget: 2500 * time.Millisecond, found: true},
		{name: "whole-second request-timeout beside an equal envoy", headers: []string{"Request-Timeout", "2", "x-envoy-expected-rq-timeout-ms", "2000"}, budget: 2 * time.Second, found: true},
		{name: "whole-second request-timeout under envoy by a second or more", headers: []string{"Request-Timeout", "2", "x-envoy-expected-rq-timeout-ms", "3000"}, budget: 2 * time.Second, found: true},
		{name: "whole-second request-timeout over envoy", headers: []string{"Request-Timeout", "2", "x-envoy-expected-rq-timeout-ms", "1500"}, budget: 1500 * time.Millisecond, found: true},
		{name: "decimal request-timeout is exact beside envoy", headers: []string{"Request-Timeout", "2.0", "x-envoy-expected-rq-timeout-ms", "2999"}, budget: 2 * time.Second, found: true},
		{name: "the least whole request-timeout line beside envoy", headers: []string{"Request-Timeout", "3", "Request-Timeout", "2", "x-envoy-expected-rq-timeout-ms", "2500"}, budget: 2500 * time.Millisecond, found: true},
		{name: "whole request-timeout 24h beside envoy 24h", headers: []string{"Request-Timeout", "90000", "x-envoy-expected-rq-timeout-ms", "90000000"}, budget: 24 * time.Hour, found: true},
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

// TestSetBudgetHeaders_round_trip writes budgets of every magnitude as Do
// does and reads each header back on its own, as an upstream that knows
// only that one would: each holds the budget rounded down to its unit
// (grpc-timeout milliseconds, or seconds from ~27.8 h, where 8 digits of
// milliseconds end, up to 99999999S; Request-Timeout seconds, absent under
// one), which incomingBudget reads as that at most 24 h, and the three
// together as their smallest. FuzzSetBudgetHeaders checks only that
// smallest, which hides a wrong grpc-timeout behind
// X-Envoy-Expected-Rq-Timeout-Ms, and never writes grpc-timeout's seconds.
func TestSetBudgetHeaders_round_trip(t *testing.T) {
	t.Parallel()
	budgets := []time.Duration{
		minUpstreamBudget, minUpstreamBudget + 1, 1500 * time.Microsecond,
		time.Second - 1, time.Second, time.Second + 1, 2500 * time.Millisecond,
		maxBudget - 1, maxBudget, maxBudget + time.Millisecond,
		99999999*time.Millisecond + 999999, 100000000 * time.Millisecond, 100000000*time.Millisecond + 999*time.Millisecond,
		99999999*time.Second + 999*time.Millisecond, 100000000 * time.Second, math.MaxInt64,
	}
	rng := rand.New(rand.NewPCG(1, 2)) // deterministic: CI runs it as it is
	for range 2000 {
		// Log-uniform from 1 ms to ~292 years.
		secs := minUpstreamBudget.Seconds() * math.Pow(float64(math.MaxInt64)/float64(minUpstreamBudget), rng.Float64())
		budgets = append(budgets, max(minUpstreamBudget, time.Duration(secs*float64(time.Second))))
	}
	grpcUnits := map[byte]time.Duration{'H': time.Hour, 'M': time.Minute, 'S': time.Second, 'm': time.Millisecond, 'u': time.Microsecond, 'n': time.Nanosecond}
	// Stale lines, each name's to be replaced by one: in both spellings,
	// and in lower case only (as they are on a server that keeps names).
	stale := [][][2]string{{
		{HeaderGRPCTimeout, "1H"}, {HeaderRequestTimeout, "3600"}, {HeaderEnvoyExpectedTimeout, "3600000"},
		{"grpc-timeout", "1n"}, {"request-timeout", "0"}, {"x-envoy-expected-rq-timeout-ms", "1"},
	}, {
		{"grpc-timeout", "1n"}, {"request-timeout", "0"}, {"x-envoy-expected-rq-timeout-ms", "1"},
	}}
	for i := range 4 {
		raw, lines := i%2 == 1, stale[i/2]
		for _, b := range budgets {
			var h fasthttp.RequestHeader
			if raw {
				h.DisableNormalizing()
			}
			h.SetRequestURI("/")
			for _, kv := range lines {
				h.Add(kv[0], kv[1])
			}
			setBudgetHeaders(&h, b)

			// read returns the value of the one line of dh as written, in
			// full, and as incomingBudget reads it.
			read := func(dh *deadlineHeader, unit time.Duration) (written, d time.Duration, ok bool) {
				vals := h.PeekAll(dh.name)
				if len(vals) == 0 {
					return 0, 0, false
				}
				require.Len(t, vals, 1, "%s for %v (names kept: %v): %q", dh.name, b, raw, h.String())
				v := string(vals[0])
				if dh.name == HeaderGRPCTimeout && v != "" {
					v, unit = v[:len(v)-1], grpcUnits[v[len(v)-1]]
				}
				n, err := strconv.ParseInt(v, 10, 64)
				require.NoError(t, err, "%s %q for %v", dh.name, vals[0], b)
				d, ok = dh.parse(vals[0])
				require.True(t, ok, "%s %q for %v is not valid", dh.name, vals[0], b)
				return time.Duration(n) * unit, d, true
			}
			check := func(name string, written, d, want time.Duration) {
				assert.Equal(t, want, written, "%s for %v", name, b)
				assert.Equal(t, min(want, maxBudget), d, "%s for %v, read", name, b)
			}
			envoy, envoyRead, ok := read(&deadlineHeaders[1], time.Millisecond)
			require.True(t, ok, "%v: no %s", b, HeaderEnvoyExpectedTimeout)
			check(HeaderEnvoyExpectedTimeout, envoy, envoyRead, b.Truncate(time.Millisecond))
			grpc, grpcRead, ok := read(&deadlineHeaders[0], 0)
			require.True(t, ok, "%v: no %s", b, HeaderGRPCTimeout)
			wantGRPC := b.Truncate(time.Millisecond)
			if b >= 100000000*time.Millisecond {
				wantGRPC = min(b.Truncate(time.Second), 99999999*time.Second)
			}
			check(HeaderGRPCTimeout, grpc, grpcRead, wantGRPC)
			seconds, secondsRead, ok := read(&deadlineHeaders[2], time.Second)
			if b < time.Second {
				assert.False(t, ok, "%s %q for %v, under a second", HeaderRequestTimeout, h.Peek(HeaderRequestTimeout), b)
				secondsRead = maxBudget
			} else {
				require.True(t, ok, "%v: no %s", b, HeaderRequestTimeout)
				check(HeaderRequestTimeout, seconds, secondsRead, b.Truncate(time.Second))
			}
			if raw {
				for _, name := range []string{"grpc-timeout", "request-timeout", "x-envoy-expected-rq-timeout-ms"} {
					assert.Nil(t, h.Peek(name), "stale %s line left for %v", name, b)
				}
			}

			got, found, malformed := incomingBudget(&h)
			assert.True(t, found && !malformed, "%v: found %v, malformed %v", b, found, malformed)
			// Request-Timeout's whole seconds are rounded down: the two
			// finer headers, within the second above, give the budget.
			assert.Equal(t, min(envoyRead, grpcRead), got, "the smaller of the two finer headers for %v", b)
			if b >= time.Second {
				assert.GreaterOrEqual(t, got, secondsRead, "Request-Timeout is rounded down")
			}
			assert.LessOrEqual(t, got, b, "never more than written")
			if t.Failed() {
				return // the first budget that fails says enough
			}
		}
	}
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
