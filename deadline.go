package fasttimeout

import (
	"time"

	"github.com/valyala/fasthttp"
)

// Deadline headers a caller may send (see Config.HonorDeadlineHeaders), in
// the order they are considered.
const (
	// HeaderGRPCTimeout carries a gRPC deadline in the gRPC wire format: 1
	// to 8 ASCII digits and a unit, H (hours), M (minutes), S (seconds), m
	// (milliseconds), u (microseconds) or n (nanoseconds): "250m", "5S".
	HeaderGRPCTimeout = "Grpc-Timeout"
	// HeaderEnvoyExpectedTimeout carries the time in whole milliseconds that
	// an Envoy proxy gives the request: "1500".
	HeaderEnvoyExpectedTimeout = "X-Envoy-Expected-Rq-Timeout-Ms"
	// HeaderRequestTimeout carries a number of seconds, whole or decimal:
	// "5", "2.5".
	HeaderRequestTimeout = "Request-Timeout"
)

// maxBudget bounds the budget a deadline header may give: beyond a day a
// request deadline is nonsense (or an attack on the arithmetic), and is
// ignored like any other malformed value.
const maxBudget = 24 * time.Hour

// The header names as fasthttp stores them: canonical when the server
// normalizes header names (the default), and lower case, as Envoy and gRPC
// send them, for servers with DisableHeaderNamesNormalizing.
var (
	grpcTimeoutKey      = []byte(HeaderGRPCTimeout)
	envoyTimeoutKey     = []byte(HeaderEnvoyExpectedTimeout)
	requestTimeoutKey   = []byte(HeaderRequestTimeout)
	grpcTimeoutLower    = []byte("grpc-timeout")
	envoyTimeoutLower   = []byte("x-envoy-expected-rq-timeout-ms")
	requestTimeoutLower = []byte("request-timeout")
)

// incomingBudget returns the time the caller gives this request, from the
// first deadline header present: grpc-timeout, X-Envoy-Expected-Rq-Timeout-Ms,
// then Request-Timeout. found reports that one was present and valid;
// malformed that one was present but not valid (and was ignored): a header
// that is malformed (empty, a sign, spaces, non-ASCII, too many digits) or
// absurd (more than 24 h) gives way to the next one. A found budget is
// within [0, 24h]; 0 means the caller's time is already spent.
//
// It does not allocate. Header names are looked up as stored, without
// normalizing them again: in canonical form, and in lower case for servers
// that keep header names as received.
func incomingBudget(h *fasthttp.RequestHeader) (budget time.Duration, found, malformed bool) {
	raw := keepsNames(h)
	if v := peekEither(h, grpcTimeoutKey, grpcTimeoutLower, raw); v != nil {
		if budget, ok := parseGRPCTimeout(v); ok {
			return budget, true, false
		}
		malformed = true
	}
	if v := peekEither(h, envoyTimeoutKey, envoyTimeoutLower, raw); v != nil {
		if budget, ok := parseEnvoyTimeout(v); ok {
			return budget, true, malformed
		}
		malformed = true
	}
	if v := peekEither(h, requestTimeoutKey, requestTimeoutLower, raw); v != nil {
		if budget, ok := parseRequestTimeout(v); ok {
			return budget, true, malformed
		}
		malformed = true
	}
	return 0, false, malformed
}

// peekEither returns the value of the header named canonical, or lower if
// h keeps header names as received (raw), or nil if it is absent. A header
// present with an empty value gives a non-nil empty slice.
func peekEither(h *fasthttp.RequestHeader, canonical, lower []byte, raw bool) []byte {
	if v := h.PeekCanonical(canonical); v != nil || !raw {
		return v
	}
	return h.PeekCanonical(lower)
}

// keepsNames reports whether h keeps header names as received
// (Server.DisableHeaderNamesNormalizing) instead of storing them in canonical
// form: only then can a lower-case name be stored. RequestHeader has no
// getter for it, but DisableNormalizing returns the previous setting, which
// is then restored.
func keepsNames(h *fasthttp.RequestHeader) bool {
	if h.DisableNormalizing() {
		return true
	}
	h.EnableNormalizing()
	return false
}

// parseGRPCTimeout parses a grpc-timeout value: 1 to 8 ASCII digits and a
// unit (H, M, S, m, u, n). ok is false for anything else and for more than
// maxBudget.
func parseGRPCTimeout(v []byte) (d time.Duration, ok bool) {
	n := len(v) - 1
	if n < 1 || n > 8 {
		return 0, false
	}
	var unit time.Duration
	switch v[n] {
	case 'H':
		unit = time.Hour
	case 'M':
		unit = time.Minute
	case 'S':
		unit = time.Second
	case 'm':
		unit = time.Millisecond
	case 'u':
		unit = time.Microsecond
	case 'n':
		unit = time.Nanosecond
	default:
		return 0, false
	}
	var x int64 // at most 99,999,999: no overflow
	for _, c := range v[:n] {
		if c < '0' || c > '9' {
			return 0, false
		}
		x = x*10 + int64(c-'0')
	}
	if x > int64(maxBudget/unit) {
		return 0, false
	}
	return time.Duration(x) * unit, true
}

// parseEnvoyTimeout parses a whole, non-negative number of milliseconds.
func parseEnvoyTimeout(v []byte) (d time.Duration, ok bool) {
	const maxMillis = int64(maxBudget / time.Millisecond)
	if len(v) == 0 {
		return 0, false
	}
	var x int64
	for _, c := range v {
		if c < '0' || c > '9' {
			return 0, false
		}
		x = x*10 + int64(c-'0')
		if x > maxMillis { // checked at each digit, so x never overflows
			return 0, false
		}
	}
	return time.Duration(x) * time.Millisecond, true
}

// parseRequestTimeout parses a non-negative number of seconds, whole ("5")
// or decimal ("2.5", ".5", "5."), with at least one digit. Digits beyond
// the ninth after the point are below a nanosecond and ignored.
func parseRequestTimeout(v []byte) (d time.Duration, ok bool) {
	const maxSeconds = int64(maxBudget / time.Second)
	var secs, nanos int64
	digits, point := 0, -1
	scale := int64(time.Second)
	for i, c := range v {
		switch {
		case c == '.' && point < 0:
			point = i
		case c < '0' || c > '9':
			return 0, false
		case point < 0:
			secs = secs*10 + int64(c-'0')
			if secs > maxSeconds {
				return 0, false
			}
			digits++
		default:
			if scale > 1 {
				scale /= 10
				nanos += int64(c-'0') * scale
			}
			digits++
		}
	}
	if digits == 0 {
		return 0, false
	}
	d = time.Duration(secs)*time.Second + time.Duration(nanos)
	if d > maxBudget {
		return 0, false
	}
	return d, true
}
