package fasttimeout

import (
	"bytes"
	"math"
	"strings"
	"time"

	"github.com/valyala/fasthttp"
)

// Deadline headers a caller may send (see Config.HonorDeadlineHeaders).
// Their sources are listed in docs/deadline-headers.md.
const (
	// HeaderGRPCTimeout carries a gRPC deadline in its wire format (gRPC
	// over HTTP/2, "Timeout"): 1 to 8 ASCII digits and a unit, H, M, S, m,
	// u or n (hours to nanoseconds): "250m", "5S".
	HeaderGRPCTimeout = "Grpc-Timeout"
	// HeaderEnvoyExpectedTimeout carries the whole milliseconds an Envoy
	// proxy gives the request: "1500". 0 means no timeout (Envoy sends 1 for
	// a spent budget), and gives no budget.
	HeaderEnvoyExpectedTimeout = "X-Envoy-Expected-Rq-Timeout-Ms"
	// HeaderRequestTimeout carries a number of seconds
	// (draft-thomson-hybi-http-timeout-00 defines whole seconds; a decimal
	// "2.5" is accepted on input, and Do writes whole seconds).
	HeaderRequestTimeout = "Request-Timeout"
)

// maxBudget is the longest budget a deadline header gives. Longer values are
// valid (grpc-go sends 108000S and more), but a day is beyond any configured
// request timeout, so they count as a day, far from overflow.
const maxBudget = 24 * time.Hour

// deadlineHeader is one spelling of a deadline header as fasthttp stores it:
// canonical (the default), or lower case, as Envoy and gRPC send them, for
// servers with DisableHeaderNamesNormalizing.
type deadlineHeader struct {
	name       string
	key        []byte // name, for the cheap look-up of a first line
	lower      bool   // looked up only in headers that keep names as received
	zeroIsNone bool   // 0 means no timeout, not a spent budget (Envoy)
	seconds    bool   // a whole number is whole seconds, likely rounded down (Request-Timeout)
	parse      func([]byte) (time.Duration, bool)
}

var deadlineHeaders = [...]deadlineHeader{
	{name: HeaderGRPCTimeout, key: []byte(HeaderGRPCTimeout), parse: parseGRPCTimeout},
	{name: HeaderEnvoyExpectedTimeout, key: []byte(HeaderEnvoyExpectedTimeout), zeroIsNone: true, parse: parseEnvoyTimeout},
	{name: HeaderRequestTimeout, key: []byte(HeaderRequestTimeout), seconds: true, parse: parseRequestTimeout},
	{name: "grpc-timeout", key: []byte("grpc-timeout"), lower: true, parse: parseGRPCTimeout},
	{name: "x-envoy-expected-rq-timeout-ms", key: []byte("x-envoy-expected-rq-timeout-ms"), lower: true, zeroIsNone: true, parse: parseEnvoyTimeout},
	{name: "request-timeout", key: []byte("request-timeout"), lower: true, seconds: true, parse: parseRequestTimeout},
}

// incomingBudget returns the time the caller gives this request: the
// smallest valid value among all lines of the deadline headers, not the
// first, since an outer proxy's shorter budget (Envoy passes a caller's
// grpc-timeout on) must win over a longer one the caller sent. found reports
// a valid budget, within [0, 24h], 0 meaning spent; malformed that some
// value (empty, signed, spaced, non-ASCII digits, overflowing) was ignored.
//
// A whole-seconds Request-Timeout is taken as rounded down, as Do and its
// draft write it: a finer header within the second above ("2" beside
// 2999 ms) gives the budget, so that each hop of a proxy chain does not lose
// up to a second; one beyond that second is another budget, and the
// smaller whole seconds win.
//
// It does not allocate. Names are looked up as stored: canonical, and lower
// case for servers that keep names as received.
func incomingBudget(h *fasthttp.RequestHeader) (budget time.Duration, found, malformed bool) {
	raw := keepsNames(h)
	whole := time.Duration(math.MaxInt64) // the least whole-seconds Request-Timeout; MaxInt64: none
	for i := range deadlineHeaders {
		dh := &deadlineHeaders[i]
		// PeekCanonical finds a first line without copying the name: most
		// requests have none, and PeekAll costs four times as much.
		if dh.lower && !raw || h.PeekCanonical(dh.key) == nil {
			continue
		}
		for _, v := range h.PeekAll(dh.name) {
			d, ok := dh.parse(v)
			switch {
			case !ok:
				malformed = true
			case d == 0 && dh.zeroIsNone:
			case dh.seconds && bytes.IndexByte(v, '.') < 0:
				whole = min(whole, d)
			case !found || d < budget:
				budget, found = d, true
			}
		}
	}
	if whole != math.MaxInt64 && (!found || budget >= whole+time.Second) {
		budget, found = whole, true
	}
	return budget, found, malformed
}

// keepsNames reports whether h keeps header names as received
// (Server.DisableHeaderNamesNormalizing), so that a lower-case name can be
// stored. There is no getter: DisableNormalizing returns the old setting,
// which is then restored.
func keepsNames(h *fasthttp.RequestHeader) bool {
	if h.DisableNormalizing() {
		return true
	}
	h.EnableNormalizing()
	return false
}

// parseGRPCTimeout parses a grpc-timeout value (see HeaderGRPCTimeout),
// capped at maxBudget.
func parseGRPCTimeout(v []byte) (d time.Duration, ok bool) {
	n := len(v) - 1
	if n < 1 || n > 8 {
		return 0, false
	}
	u := strings.IndexByte(grpcUnitLetters, v[n])
	// 1 to 8 digits and no point, which parseDecimal would take: no overflow.
	x, _, ok := parseDecimal(v[:n])
	if u < 0 || !ok || bytes.IndexByte(v[:n], '.') >= 0 {
		return 0, false
	}
	unit := grpcUnits[u]
	if x > int64(maxBudget/unit) {
		return maxBudget, true
	}
	return time.Duration(x) * unit, true
}

// grpcUnitLetters are the units of grpc-timeout, hours to nanoseconds, and
// grpcUnits their values, in the same order.
const grpcUnitLetters = "HMSmun"

var grpcUnits = [len(grpcUnitLetters)]time.Duration{time.Hour, time.Minute, time.Second, time.Millisecond, time.Microsecond, time.Nanosecond}

// maxWhole bounds the whole part of the numbers parseDecimal reads: beyond
// it a number would overflow, and is malformed.
const maxWhole = (math.MaxInt64 - 9) / 10

// parseEnvoyTimeout parses a whole, non-negative number of milliseconds,
// capped at maxBudget.
func parseEnvoyTimeout(v []byte) (d time.Duration, ok bool) {
	ms, _, ok := parseDecimal(v)
	if !ok || bytes.IndexByte(v, '.') >= 0 { // whole: no point
		return 0, false
	}
	return min(time.Duration(ms), maxBudget/time.Millisecond) * time.Millisecond, true
}

// parseRequestTimeout parses a number of seconds (see parseDecimal), capped
// at maxBudget.
func parseRequestTimeout(v []byte) (d time.Duration, ok bool) {
	const maxSeconds = int64(maxBudget / time.Second)
	secs, nanos, ok := parseDecimal(v)
	if !ok {
		return 0, false
	}
	if secs >= maxSeconds {
		return maxBudget, true
	}
	return time.Duration(secs)*time.Second + time.Duration(nanos), true
}

// parseDecimal parses a non-negative decimal, whole ("5") or with a point
// ("2.5", ".5", "5."), with at least one digit, into its whole part and its
// fraction in billionths, ignoring digits beyond the ninth after the point.
// A whole part that could overflow is invalid.
func parseDecimal(v []byte) (whole, billionths int64, ok bool) {
	point := false
	scale := int64(1e9)
	for _, c := range v {
		switch {
		case c == '.' && !point:
			point = true
		case c < '0' || c > '9':
			return 0, 0, false
		case !point:
			if whole > maxWhole { // whole never overflows
				return 0, 0, false
			}
			whole = whole*10 + int64(c-'0')
		case scale > 1: // else a digit beyond the ninth after the point
			scale /= 10
			billionths += int64(c-'0') * scale
		}
	}
	// Every byte but one point is a digit: there is one unless v is empty
	// or a lone point.
	return whole, billionths, len(v) > 0 && string(v) != "."
}
