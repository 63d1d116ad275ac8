package fasttimeout

import (
	"bytes"
	"math"
	"time"

	"github.com/valyala/fasthttp"
)

// maxQueueSkew bounds how far a proxy's start time may be from now: beyond
// it, either way, is a wrong unit, a broken clock or a forged header.
const maxQueueSkew = time.Hour

// queueHeader is one spelling of a header that carries a request's start
// time, as fasthttp stores it (see deadlineHeader).
type queueHeader struct {
	name  string
	key   []byte // name, for the cheap look-up of a first line
	lower bool   // looked up only in headers that keep names as received
	trace bool   // an AWS trace id, not a time stamp
	// parse returns a value's time in Unix nanoseconds, and whether it is valid.
	parse func(v []byte, now int64) (t int64, ok bool)
}

var queueHeaders = [...]queueHeader{
	{name: "X-Request-Start", key: []byte("X-Request-Start"), parse: parseRequestStart},
	{name: "X-Queue-Start", key: []byte("X-Queue-Start"), parse: parseRequestStart},
	{name: "X-Amzn-Trace-Id", key: []byte("X-Amzn-Trace-Id"), trace: true, parse: parseTraceStart},
	{name: "x-request-start", key: []byte("x-request-start"), lower: true, parse: parseRequestStart},
	{name: "x-queue-start", key: []byte("x-queue-start"), lower: true, parse: parseRequestStart},
	{name: "x-amzn-trace-id", key: []byte("x-amzn-trace-id"), lower: true, trace: true, parse: parseTraceStart},
}

// requestStart returns when the proxy in front first saw the request, from
// all lines of X-Request-Start, X-Queue-Start and X-Amzn-Trace-Id, as
// Config.HonorQueueHeaders describes; found reports a valid start, malformed
// that some value was ignored. start is now minus the age, keeping now's
// monotonic reading. It does not allocate.
func requestStart(h *fasthttp.RequestHeader, now time.Time) (start time.Time, found, malformed bool) {
	nowNs := now.UnixNano()
	// Every value is read, so that a malformed one is counted either way.
	// The earliest valid time stamp and trace id; MaxInt64: none (a valid
	// one is no later than now).
	stamp, trace := int64(math.MaxInt64), int64(math.MaxInt64)
	raw := keepsNames(h)
	for i := range queueHeaders {
		qh := &queueHeaders[i]
		// Cheap first look, as in incomingBudget.
		if qh.lower && !raw || h.PeekCanonical(qh.key) == nil {
			continue
		}
		for _, v := range h.PeekAll(qh.name) {
			t, ok := qh.parse(v, nowNs)
			switch {
			case !ok:
				malformed = true
			case qh.trace:
				trace = min(trace, t)
			default:
				stamp = min(stamp, t)
			}
		}
	}
	switch {
	case stamp != math.MaxInt64:
		return now.Add(-time.Duration(nowNs - stamp)), true, malformed
	case trace != math.MaxInt64:
		return now.Add(-time.Duration(nowNs - trace)), true, malformed
	}
	return time.Time{}, false, malformed
}

// requestStartUnits are tried in order; the first that puts the value within
// an hour of now wins; a thousand times apart, at most one can (for any now
// past 1970's first hour).
var requestStartUnits = [...]int64{
	int64(time.Second), int64(time.Millisecond), int64(time.Microsecond), int64(time.Nanosecond),
}

// parseRequestStart parses an X-Request-Start or X-Queue-Start value into
// Unix nanoseconds, no later than now; ok is false if it is invalid or over
// an hour away in every unit. Digits beyond the ninth after the point are
// ignored. Whole seconds are taken at the end of their second, so that the
// age is never overestimated; a finer unit's is off by under a millisecond.
func parseRequestStart(v []byte, now int64) (t int64, ok bool) {
	v = bytes.TrimPrefix(v, []byte("t="))
	whole, frac, ok := parseDecimal(v) // frac: of one unit, in billionths
	if !ok {
		return 0, false
	}
	point := bytes.IndexByte(v, '.')
	wholeSeconds := point < 0 || point == len(v)-1
	for _, unit := range requestStartUnits {
		if whole > (math.MaxInt64-int64(time.Second))/unit {
			continue // beyond 2262 in this unit
		}
		t = whole*unit + frac/(int64(time.Second)/unit)
		if wholeSeconds && unit == int64(time.Second) {
			t += int64(time.Second) // the end of that second
		}
		if nearNow(t, now) {
			return min(t, now), true
		}
	}
	return 0, false
}

// parseTraceStart parses an X-Amzn-Trace-Id value into Unix nanoseconds at
// the end of the second of its Self field (which an AWS load balancer sets
// when the header came with a Root), else its Root, no later than now;
// ok is false if that field is missing, invalid ("Self=" and a bare "Self"
// included) or over an hour away. Of repeated fields, the first counts.
// Spaces around ';'-separated fields are ignored, but not around '=', which
// AWS never writes ("Root = 1-…" is no Root).
func parseTraceStart(v []byte, now int64) (t int64, ok bool) {
	var self, root []byte
	for len(v) > 0 {
		var field []byte
		field, v, _ = bytes.Cut(v, []byte(";"))
		name, value, _ := bytes.Cut(bytes.TrimSpace(field), []byte("="))
		if value == nil {
			// A bare "Self" or "Root" is that field, invalid: left nil, it
			// would let the Root, or a later one, count.
			value = name[:0]
		}
		switch string(name) { // does not allocate
		case "Self":
			if self == nil {
				self = value
			}
		case "Root":
			if root == nil {
				root = value
			}
		}
	}
	id := self
	if id == nil {
		id = root
	}
	secs, ok := traceSeconds(id)
	t = (secs + 1) * int64(time.Second) // the end of that second
	if !ok || !nearNow(t, now) {
		return 0, false
	}
	return min(t, now), true
}

// traceSeconds returns the epoch seconds of a trace id "1-<8 hex digits of
// seconds>-<hex id>". 1 to 24 id digits are accepted: AWS's own example of a
// Self field has 23 of the 24, and only the seconds are used.
func traceSeconds(id []byte) (secs int64, ok bool) {
	const head = len("1-01234567-")
	if len(id) <= head || len(id) > head+24 || id[0] != '1' || id[1] != '-' || id[head-1] != '-' {
		return 0, false
	}
	for i, c := range id[2:] {
		d, ok := hexDigit(c)
		switch {
		case i == head-3: // the '-' checked above
		case !ok:
			return 0, false
		case i < head-3:
			secs = secs<<4 | d
		}
	}
	return secs, true
}

// hexDigit returns the value of the hexadecimal digit c.
func hexDigit(c byte) (int64, bool) {
	switch {
	case c >= '0' && c <= '9':
		return int64(c - '0'), true
	case c >= 'a' && c <= 'f':
		return int64(c-'a') + 10, true
	case c >= 'A' && c <= 'F':
		return int64(c-'A') + 10, true
	}
	return 0, false
}

// nearNow reports whether t is within maxQueueSkew of now, either way,
// without overflow.
func nearNow(t, now int64) bool {
	return uint64(max(t, now))-uint64(min(t, now)) <= uint64(maxQueueSkew)
}
