package fasttimeout

import (
	"bytes"
	"math"
	"time"

	"github.com/valyala/fasthttp"
)

// maxQueueSkew bounds how far a proxy's start time may be from now: a value
// further away, in the past or the future, is not a queue time but a wrong
// unit, a broken clock or a forged header, and is ignored.
const maxQueueSkew = time.Hour

// queueHeader is one spelling of a header that carries a request's start
// time, as fasthttp stores it (see deadlineHeader).
type queueHeader struct {
	name  string
	key   []byte // name, for the cheap look-up of a first line
	lower bool   // looked up only in headers that keep names as received
	trace bool   // an AWS trace id, not a time stamp
}

var queueHeaders = [...]queueHeader{
	{name: "X-Request-Start", key: []byte("X-Request-Start")},
	{name: "X-Queue-Start", key: []byte("X-Queue-Start")},
	{name: "X-Amzn-Trace-Id", key: []byte("X-Amzn-Trace-Id"), trace: true},
	{name: "x-request-start", key: []byte("x-request-start"), lower: true},
	{name: "x-queue-start", key: []byte("x-queue-start"), lower: true},
	{name: "x-amzn-trace-id", key: []byte("x-amzn-trace-id"), lower: true, trace: true},
}

// requestStart returns when the proxy in front first saw the request, read from
// all lines of X-Request-Start, X-Queue-Start and X-Amzn-Trace-Id. The
// earliest valid time stamp (X-Request-Start or X-Queue-Start) wins; the
// earliest valid trace id counts only when there is none. A time stamp is
// set by a proxy the operator runs, to the millisecond; a trace id may be
// the caller's, passed on through such a proxy, and its Root the start of
// a whole trace that would make the request look up to an hour old. found
// reports that a valid start was present; malformed that some value, of
// either kind and even beside a valid one, was not valid, or more than an
// hour away from now, and was ignored.
//
// X-Request-Start and X-Queue-Start hold a time stamp, optionally after
// "t=", of digits with an optional fraction after a point: nginx's
// "t=1700000000.123" (seconds), Heroku's "1700000000123" (milliseconds),
// Apache's "t=1700000000123456" (microseconds), or nanoseconds. The unit is
// the one that puts the value within an hour of now. Whole seconds
// ("t=1700000000") count from the end of their second, as a trace id's do.
//
// X-Amzn-Trace-Id holds the epoch seconds at which an AWS load balancer saw
// the request: in its Self field, which the load balancer adds or updates
// when the header came with a Root, or else in Root, which it made itself
// ("Root=1-<8 hex digits>-<24 hex digits>"). A Root that came with the
// request can be the start of a whole trace, older than this request, so it
// is not used when Self is there. Whole seconds are rounded up to the end
// of their second, so the age is never overestimated.
//
// A start after now (clock skew) counts as now. start is now minus the
// request's age, so it keeps now's monotonic clock reading. It does not
// allocate.
func requestStart(h *fasthttp.RequestHeader, now time.Time) (start time.Time, found, malformed bool) {
	nowNs := now.UnixNano()
	// The earliest valid start of the time stamps, and of the trace ids:
	// every value is read, so that a malformed one is counted either way.
	var stamp, trace int64
	var stampFound, traceFound bool
	raw := keepsNames(h)
	for i := range queueHeaders {
		qh := &queueHeaders[i]
		// As in incomingBudget: most requests have none of these headers.
		if qh.lower && !raw || h.PeekCanonical(qh.key) == nil {
			continue
		}
		for _, v := range h.PeekAll(qh.name) {
			var t int64
			var ok bool
			if qh.trace {
				t, ok = parseTraceStart(v, nowNs)
			} else {
				t, ok = parseRequestStart(v, nowNs)
			}
			switch {
			case !ok:
				malformed = true
			case qh.trace:
				if !traceFound || t < trace {
					trace, traceFound = t, true
				}
			case !stampFound || t < stamp:
				stamp, stampFound = t, true
			}
		}
	}
	switch {
	case stampFound:
		return now.Add(-time.Duration(nowNs - stamp)), true, malformed
	case traceFound:
		return now.Add(-time.Duration(nowNs - trace)), true, malformed
	}
	return time.Time{}, false, malformed
}

// requestStartUnits are the units a request start may be written in, tried
// in this order: the first that puts the value within an hour of now wins.
// They are a thousand times apart, so at most one does for any now later
// than an hour after 1970.
var requestStartUnits = [...]int64{
	int64(time.Second), int64(time.Millisecond), int64(time.Microsecond), int64(time.Nanosecond),
}

// parseRequestStart parses an X-Request-Start or X-Queue-Start value into
// Unix nanoseconds, no later than now; ok is false if it is not valid or is
// more than an hour away from now in every unit. Digits beyond the ninth
// after the point are below a nanosecond of a second and ignored. A whole
// number of seconds, with no digit after the point, is taken at the end of
// its second, as a trace id's seconds are (see requestStart): the proxy saw
// the request somewhere in that second, and taking its beginning would age
// the request by up to a second more than it waited. A finer unit's whole
// number is off by less than a millisecond, and taken as it is.
func parseRequestStart(v []byte, now int64) (t int64, ok bool) {
	if len(v) >= 2 && v[0] == 't' && v[1] == '=' {
		v = v[2:]
	}
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

// The separators of trace id fields, for bytes.Cut.
var (
	semicolon = []byte{';'}
	equals    = []byte{'='}
)

// parseTraceStart parses an X-Amzn-Trace-Id value into Unix nanoseconds at
// the end of the second of its Self field, or of its Root field if it has
// no Self, no later than now; ok is false if that field is missing, not
// valid (an empty or bare one, "Self=" or "Self", included), or more than
// an hour away from now. Of repeated fields, the first counts. Fields are
// separated by ';'; spaces around them are ignored, but not around a
// field's '=', which AWS never writes ("Root = 1-…" is no Root).
func parseTraceStart(v []byte, now int64) (t int64, ok bool) {
	var self, root []byte
	for len(v) > 0 {
		var field []byte
		field, v, _ = bytes.Cut(v, semicolon)
		name, value, _ := bytes.Cut(bytes.TrimSpace(field), equals)
		if value == nil {
			// A bare "Self" or "Root" is that field, and not a valid one:
			// left nil, it would let the older Root, or a later Root, count.
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
	if !ok {
		return 0, false
	}
	t = (secs + 1) * int64(time.Second) // the end of that second
	if !nearNow(t, now) {
		return 0, false
	}
	return min(t, now), true
}

// traceSeconds returns the epoch seconds of a trace id "1-<8 hex digits of
// seconds>-<hex id>". The id has 24 hex digits, but the AWS documentation's
// own example of a Self field has 23, so 1 to 24 are accepted: only the
// seconds are used.
func traceSeconds(id []byte) (secs int64, ok bool) {
	const head = len("1-01234567-")
	if len(id) <= head || len(id) > head+24 || id[0] != '1' || id[1] != '-' || id[head-1] != '-' {
		return 0, false
	}
	for i, c := range id[2:] {
		if i == head-3 {
			continue // the '-' checked above
		}
		d, ok := hexDigit(c)
		if !ok {
			return 0, false
		}
		if i < head-3 {
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

// nearNow reports whether t is within maxQueueSkew of now, in either
// direction, without overflowing for any two values.
func nearNow(t, now int64) bool {
	if t >= now {
		return uint64(t)-uint64(now) <= uint64(maxQueueSkew)
	}
	return uint64(now)-uint64(t) <= uint64(maxQueueSkew)
}
