package fasttimeout

import (
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// queueNow is the time the tests of requestStart read their headers at:
// 1700000000.25 s after 1970, 0x6553f100 whole seconds.
var queueNow = time.Unix(1_700_000_000, 250_000_000)

// requestStartCases are the cases of TestRequestStart, and the seeds of
// FuzzRequestStart. age is queueNow minus the start found.
var requestStartCases = []struct {
	name      string
	headers   []string
	age       time.Duration
	found     bool
	malformed bool
}{
	{name: "no header: nothing found"},
	{name: "unrelated headers: nothing found", headers: []string{"X-Request-Id", "1700000000", "X-Trace-Id", "Root=1-6553f0ff-abcdef012345678912345678"}},

	// The formats and their units.
	{name: "nginx seconds with milliseconds", headers: []string{"X-Request-Start", "t=1700000000.123"}, age: 127 * time.Millisecond, found: true},
	{name: "nginx seconds without t=", headers: []string{"X-Request-Start", "1700000000.123"}, age: 127 * time.Millisecond, found: true},
	// Whole seconds, with no finer digit, count from the end of their
	// second, as an ALB's trace id does: the start is somewhere in it, and
	// its beginning would make the request up to a second older.
	{name: "whole seconds: the end of the second", headers: []string{"X-Request-Start", "t=1699999990"}, age: 9250 * time.Millisecond, found: true},
	{name: "whole seconds, 10 digits without t=", headers: []string{"X-Request-Start", "1699999990"}, age: 9250 * time.Millisecond, found: true},
	{name: "whole seconds of the last second", headers: []string{"X-Request-Start", "t=1699999999"}, age: 250 * time.Millisecond, found: true},
	{name: "whole seconds of this second are now", headers: []string{"X-Request-Start", "t=1700000000"}, age: 0, found: true},
	{name: "X-Queue-Start whole seconds", headers: []string{"X-Queue-Start", "1699999990"}, age: 9250 * time.Millisecond, found: true},
	{name: "seconds with a zero fraction are as written", headers: []string{"X-Request-Start", "t=1699999990.0"}, age: 10250 * time.Millisecond, found: true},
	{name: "whole milliseconds are as written", headers: []string{"X-Request-Start", "1699999990000"}, age: 10250 * time.Millisecond, found: true},
	{name: "Heroku milliseconds", headers: []string{"X-Request-Start", "1700000000123"}, age: 127 * time.Millisecond, found: true},
	{name: "milliseconds with t=", headers: []string{"X-Request-Start", "t=1700000000123"}, age: 127 * time.Millisecond, found: true},
	{name: "Apache microseconds", headers: []string{"X-Request-Start", "t=1700000000123456"}, age: 126544 * time.Microsecond, found: true},
	{name: "nanoseconds", headers: []string{"X-Request-Start", "1700000000123456789"}, age: 126543211, found: true},
	{name: "X-Queue-Start seconds", headers: []string{"X-Queue-Start", "t=1700000000.123"}, age: 127 * time.Millisecond, found: true},
	{name: "X-Queue-Start milliseconds", headers: []string{"X-Queue-Start", "1700000000123"}, age: 127 * time.Millisecond, found: true},
	{name: "X-Queue-Start microseconds", headers: []string{"X-Queue-Start", "t=1700000000123456"}, age: 126544 * time.Microsecond, found: true},
	{name: "lower-case name", headers: []string{"x-request-start", "t=1700000000.123"}, age: 127 * time.Millisecond, found: true},
	{name: "upper-case name", headers: []string{"X-REQUEST-START", "t=1700000000.123"}, age: 127 * time.Millisecond, found: true},

	// Fractions.
	{name: "one fractional digit", headers: []string{"X-Request-Start", "1699999999.1"}, age: 1150 * time.Millisecond, found: true},
	{name: "nine fractional digits", headers: []string{"X-Request-Start", "1700000000.123456789"}, age: 126543211, found: true},
	{name: "digits below a nanosecond are ignored", headers: []string{"X-Request-Start", "1700000000.1234567891"}, age: 126543211, found: true},
	{name: "trailing point: whole seconds", headers: []string{"X-Request-Start", "t=1699999990."}, age: 9250 * time.Millisecond, found: true},
	{name: "milliseconds with a fraction", headers: []string{"X-Request-Start", "1700000000123.5"}, age: 126500 * time.Microsecond, found: true},
	{name: "microseconds with a fraction", headers: []string{"X-Request-Start", "t=1700000000123456.5"}, age: 126543500, found: true},
	{name: "nanoseconds with a fraction below a nanosecond", headers: []string{"X-Request-Start", "1700000000123456789.9"}, age: 126543211, found: true},
	{name: "leading zeros", headers: []string{"X-Request-Start", "0001699999990"}, age: 9250 * time.Millisecond, found: true},

	// Skew and absurd values.
	{name: "future by 5 s is now", headers: []string{"X-Request-Start", "t=1700000005"}, age: 0, found: true},
	{name: "future milliseconds are now", headers: []string{"X-Request-Start", "1700000000500"}, age: 0, found: true},
	{name: "exactly an hour ago", headers: []string{"X-Request-Start", "t=1699996400.25"}, age: time.Hour, found: true},
	{name: "an hour and a millisecond ago", headers: []string{"X-Request-Start", "t=1699996400.249"}, malformed: true},
	{name: "an hour and a nanosecond ago", headers: []string{"X-Request-Start", "t=1699996400.249999999"}, malformed: true},
	{name: "exactly an hour ahead is now", headers: []string{"X-Request-Start", "t=1700003600.25"}, age: 0, found: true},
	{name: "an hour and a millisecond ahead", headers: []string{"X-Request-Start", "t=1700003600.251"}, malformed: true},
	{name: "a day ago", headers: []string{"X-Request-Start", "1699913600"}, malformed: true},
	{name: "whole seconds ending an hour ago", headers: []string{"X-Request-Start", "t=1699996400"}, age: time.Hour - 750*time.Millisecond, found: true},
	{name: "whole seconds ending more than an hour ago", headers: []string{"X-Request-Start", "t=1699996399"}, malformed: true},
	{name: "whole seconds ending more than an hour ahead", headers: []string{"X-Request-Start", "t=1700003600"}, malformed: true},
	{name: "zero", headers: []string{"X-Request-Start", "0"}, malformed: true},
	{name: "12 digits: no unit is near now", headers: []string{"X-Request-Start", "170000000000"}, malformed: true},
	{name: "milliseconds a day ago", headers: []string{"X-Request-Start", "1699913600000"}, malformed: true},
	{name: "nanoseconds of 2262", headers: []string{"X-Request-Start", "9223372036854775807"}, malformed: true},

	// Bad values.
	{name: "empty", headers: []string{"X-Request-Start", ""}, malformed: true},
	{name: "t= alone", headers: []string{"X-Request-Start", "t="}, malformed: true},
	{name: "point alone", headers: []string{"X-Request-Start", "t=."}, malformed: true},
	{name: "upper-case T=", headers: []string{"X-Request-Start", "T=1700000000.123"}, malformed: true},
	{name: "letters", headers: []string{"X-Request-Start", "t=soon"}, malformed: true},
	{name: "trailing letters", headers: []string{"X-Request-Start", "1700000000123ms"}, malformed: true},
	{name: "negative", headers: []string{"X-Request-Start", "-1700000000"}, malformed: true},
	{name: "plus sign", headers: []string{"X-Request-Start", "+1700000000"}, malformed: true},
	{name: "space inside", headers: []string{"X-Request-Start", "t= 1700000000"}, malformed: true},
	{name: "space between digits", headers: []string{"X-Request-Start", "1700000000 123"}, malformed: true},
	{name: "Apache's t and D", headers: []string{"X-Request-Start", "t=1700000000123456 D=42"}, malformed: true},
	{name: "two points", headers: []string{"X-Request-Start", "1700000000.1.2"}, malformed: true},
	{name: "exponent", headers: []string{"X-Request-Start", "1.7e9"}, malformed: true},
	{name: "hex", headers: []string{"X-Request-Start", "0x6553f100"}, malformed: true},
	{name: "non-ASCII digits", headers: []string{"X-Request-Start", "١٧٠٠٠٠٠٠٠٠"}, malformed: true},
	{name: "20 digits overflow", headers: []string{"X-Request-Start", "17000000001234567890"}, malformed: true},
	{name: "too many digits", headers: []string{"X-Request-Start", strings.Repeat("9", 4000)}, malformed: true},
	{name: "overflow with a fraction", headers: []string{"X-Request-Start", "99999999999999999999.5"}, malformed: true},

	// AWS ALB trace ids.
	{name: "ALB Root: the end of its second", headers: []string{"X-Amzn-Trace-Id", "Root=1-6553f0fb-abcdef012345678912345678"}, age: 4250 * time.Millisecond, found: true},
	{name: "ALB Root of the last second", headers: []string{"X-Amzn-Trace-Id", "Root=1-6553f0ff-abcdef012345678912345678"}, age: 250 * time.Millisecond, found: true},
	{name: "ALB Root of this second is now", headers: []string{"X-Amzn-Trace-Id", "Root=1-6553f100-abcdef012345678912345678"}, age: 0, found: true},
	{name: "ALB Root in upper-case hex", headers: []string{"X-Amzn-Trace-Id", "Root=1-6553F0FB-ABCDEF012345678912345678"}, age: 4250 * time.Millisecond, found: true},
	{name: "ALB Root with other fields", headers: []string{"X-Amzn-Trace-Id", "Root=1-6553f0fb-abcdef012345678912345678;Parent=53995c3f42cd8ad8;Sampled=1"}, age: 4250 * time.Millisecond, found: true},
	{name: "ALB Root after other fields", headers: []string{"X-Amzn-Trace-Id", "Sampled=1;Root=1-6553f0fb-abcdef012345678912345678;CalledFrom=app"}, age: 4250 * time.Millisecond, found: true},
	{name: "ALB fields with spaces", headers: []string{"X-Amzn-Trace-Id", "Sampled=1; Root=1-6553f0fb-abcdef012345678912345678 ;Parent=53995c3f42cd8ad8"}, age: 4250 * time.Millisecond, found: true},
	{name: "ALB Self wins over an older Root", headers: []string{"X-Amzn-Trace-Id", "Self=1-6553f0ff-12456789abcdef0123456789;Root=1-6553f000-abcdef012345678912345678"}, age: 250 * time.Millisecond, found: true},
	{name: "ALB Self after Root", headers: []string{"X-Amzn-Trace-Id", "Root=1-6553f000-abcdef012345678912345678;Self=1-6553f0ff-12456789abcdef0123456789;CalledFrom=app"}, age: 250 * time.Millisecond, found: true},
	{name: "ALB Self of the AWS documentation (23 hex digits)", headers: []string{"X-Amzn-Trace-Id", "Self=1-6553f0ff-12456789abcdef012345678;Root=1-6553f0ff-abcdef012345678912345678"}, age: 250 * time.Millisecond, found: true},
	{name: "ALB Self with a Root older than an hour", headers: []string{"X-Amzn-Trace-Id", "Self=1-6553f0ff-12456789abcdef0123456789;Root=1-00000001-abcdef012345678912345678"}, age: 250 * time.Millisecond, found: true},
	{name: "ALB Root within the hour", headers: []string{"X-Amzn-Trace-Id", "Root=1-6553e2f0-abcdef012345678912345678"}, age: 3599250 * time.Millisecond, found: true},
	{name: "ALB Root an hour ahead is now", headers: []string{"X-Amzn-Trace-Id", "Root=1-6553ff0f-abcdef012345678912345678"}, age: 0, found: true},
	{name: "ALB lower-case name", headers: []string{"x-amzn-trace-id", "Root=1-6553f0fb-abcdef012345678912345678"}, age: 4250 * time.Millisecond, found: true},
	{name: "ALB Root more than an hour ago", headers: []string{"X-Amzn-Trace-Id", "Root=1-6553e2ef-abcdef012345678912345678"}, malformed: true},
	{name: "ALB Root more than an hour ahead", headers: []string{"X-Amzn-Trace-Id", "Root=1-6553ff10-abcdef012345678912345678"}, malformed: true},
	{name: "ALB Root of 1970", headers: []string{"X-Amzn-Trace-Id", "Root=1-00000000-abcdef012345678912345678"}, malformed: true},
	{name: "ALB bad hex in the time", headers: []string{"X-Amzn-Trace-Id", "Root=1-6553f0fg-abcdef012345678912345678"}, malformed: true},
	{name: "ALB bad hex in the id", headers: []string{"X-Amzn-Trace-Id", "Root=1-6553f0fb-abcdef01234567891234567z"}, malformed: true},
	{name: "ALB wrong version", headers: []string{"X-Amzn-Trace-Id", "Root=2-6553f0fb-abcdef012345678912345678"}, malformed: true},
	{name: "ALB no version", headers: []string{"X-Amzn-Trace-Id", "Root=6553f0fb-abcdef012345678912345678"}, malformed: true},
	{name: "ALB 7 hex digits of time", headers: []string{"X-Amzn-Trace-Id", "Root=1-553f0fb-abcdef012345678912345678"}, malformed: true},
	{name: "ALB 9 hex digits of time", headers: []string{"X-Amzn-Trace-Id", "Root=1-06553f0fb-abcdef012345678912345678"}, malformed: true},
	{name: "ALB no id", headers: []string{"X-Amzn-Trace-Id", "Root=1-6553f0fb"}, malformed: true},
	{name: "ALB empty id", headers: []string{"X-Amzn-Trace-Id", "Root=1-6553f0fb-"}, malformed: true},
	{name: "ALB 25 hex digits of id", headers: []string{"X-Amzn-Trace-Id", "Root=1-6553f0fb-abcdef0123456789123456789"}, malformed: true},
	{name: "ALB missing Root", headers: []string{"X-Amzn-Trace-Id", "Parent=53995c3f42cd8ad8;Sampled=1"}, malformed: true},
	{name: "ALB lower-case root", headers: []string{"X-Amzn-Trace-Id", "root=1-6553f0fb-abcdef012345678912345678"}, malformed: true},
	{name: "ALB empty", headers: []string{"X-Amzn-Trace-Id", ""}, malformed: true},
	{name: "ALB empty Root", headers: []string{"X-Amzn-Trace-Id", "Root="}, malformed: true},
	{name: "ALB spaces around =", headers: []string{"X-Amzn-Trace-Id", "Root = 1-6553f0fb-abcdef012345678912345678"}, malformed: true},
	{name: "ALB bad Self, no fallback to an older Root", headers: []string{"X-Amzn-Trace-Id", "Self=1-zzzzzzzz-12456789abcdef0123456789;Root=1-6553f0fb-abcdef012345678912345678"}, malformed: true},
	{name: "ALB empty Self, no fallback to an older Root", headers: []string{"X-Amzn-Trace-Id", "Self=;Root=1-6553f0fb-abcdef012345678912345678"}, malformed: true},
	{name: "ALB Self without a value, no fallback to an older Root", headers: []string{"X-Amzn-Trace-Id", "Root=1-6553f0fb-abcdef012345678912345678;Self"}, malformed: true},
	{name: "ALB Root without a value, no later Root", headers: []string{"X-Amzn-Trace-Id", "Root;Root=1-6553f0fb-abcdef012345678912345678"}, malformed: true},
	{name: "ALB empty Root, no later Root", headers: []string{"X-Amzn-Trace-Id", "Root=;Root=1-6553f0fb-abcdef012345678912345678"}, malformed: true},
	{name: "ALB several Roots: the first", headers: []string{"X-Amzn-Trace-Id", "Root=1-6553f0ff-abcdef012345678912345678;Root=1-6553f0fb-abcdef012345678912345678"}, age: 250 * time.Millisecond, found: true},
	{name: "ALB several Selfs: the first", headers: []string{"X-Amzn-Trace-Id", "Self=1-6553f0ff-12456789abcdef0123456789;Root=1-6553f000-abcdef012345678912345678;Self=1-6553f0fb-12456789abcdef0123456789"}, age: 250 * time.Millisecond, found: true},

	// Several time stamps: the earliest valid one wins.
	{name: "the earliest of X-Request-Start and X-Queue-Start", headers: []string{"X-Request-Start", "t=1699999995", "X-Queue-Start", "t=1699999990"}, age: 9250 * time.Millisecond, found: true},
	{name: "the earliest of X-Queue-Start and X-Request-Start", headers: []string{"X-Request-Start", "t=1699999990", "X-Queue-Start", "1699999995000"}, age: 9250 * time.Millisecond, found: true},
	{name: "the earliest of repeated lines", headers: []string{"X-Request-Start", "t=1699999999", "X-Request-Start", "t=1699999990", "X-Request-Start", "t=1699999995"}, age: 9250 * time.Millisecond, found: true},
	{name: "whole seconds against milliseconds within their second", headers: []string{"X-Request-Start", "t=1699999990", "X-Queue-Start", "1699999990500"}, age: 9750 * time.Millisecond, found: true},
	{name: "a past start wins over a future one", headers: []string{"X-Request-Start", "t=1700000009", "X-Queue-Start", "t=1699999999.5"}, age: 750 * time.Millisecond, found: true},
	{name: "a malformed header gives way to a valid one", headers: []string{"X-Request-Start", "soon", "X-Queue-Start", "t=1699999990"}, age: 9250 * time.Millisecond, found: true, malformed: true},
	{name: "a malformed line among valid ones", headers: []string{"X-Queue-Start", "t=1699999990", "X-Queue-Start", "t=", "X-Queue-Start", "t=1699999995"}, age: 9250 * time.Millisecond, found: true, malformed: true},
	{name: "the earliest of several trace ids", headers: []string{"X-Amzn-Trace-Id", "Root=1-6553f0ff-abcdef012345678912345678", "X-Amzn-Trace-Id", "Root=1-6553f0fb-abcdef012345678912345678"}, age: 4250 * time.Millisecond, found: true},

	// A valid time stamp wins over any trace id, which may be the caller's
	// (a Root begun half an hour ago); a trace id counts only without one.
	{name: "a time stamp wins over a trace Root half an hour older", headers: []string{"X-Request-Start", "t=1700000000.050", "X-Amzn-Trace-Id", "Root=1-6553e9f7-abcdef012345678912345678"}, age: 200 * time.Millisecond, found: true},
	{name: "a time stamp wins over a trace Self half an hour older", headers: []string{"X-Queue-Start", "1700000000050", "X-Amzn-Trace-Id", "Self=1-6553e9f7-12456789abcdef0123456789;Root=1-6553e2f0-abcdef012345678912345678"}, age: 200 * time.Millisecond, found: true},
	{name: "a trace id before the time stamp", headers: []string{"X-Amzn-Trace-Id", "Root=1-6553f0fb-abcdef012345678912345678", "X-Request-Start", "t=1699999999.5"}, age: 750 * time.Millisecond, found: true},
	{name: "a time stamp wins over a later trace id", headers: []string{"X-Request-Start", "t=1699999990", "X-Amzn-Trace-Id", "Root=1-6553f0ff-abcdef012345678912345678"}, age: 9250 * time.Millisecond, found: true},
	{name: "a future time stamp wins over a trace id: now", headers: []string{"X-Request-Start", "t=1700000005", "X-Amzn-Trace-Id", "Root=1-6553f0fb-abcdef012345678912345678"}, age: 0, found: true},
	{name: "the earliest time stamp wins over trace ids", headers: []string{"X-Request-Start", "t=1699999999.5", "X-Amzn-Trace-Id", "Root=1-6553f0fb-abcdef012345678912345678", "X-Queue-Start", "t=1699999998.5", "X-Amzn-Trace-Id", "Root=1-6553e9f7-abcdef012345678912345678"}, age: 1750 * time.Millisecond, found: true},
	{name: "a lower-case time stamp wins over a trace id", headers: []string{"x-request-start", "t=1700000000.050", "X-Amzn-Trace-Id", "Root=1-6553e9f7-abcdef012345678912345678"}, age: 200 * time.Millisecond, found: true},
	{name: "a time stamp wins over a lower-case trace id", headers: []string{"X-Request-Start", "t=1700000000.050", "x-amzn-trace-id", "Root=1-6553e9f7-abcdef012345678912345678"}, age: 200 * time.Millisecond, found: true},
	{name: "a malformed time stamp gives way to a trace id", headers: []string{"X-Request-Start", "t=soon", "X-Amzn-Trace-Id", "Root=1-6553f0fb-abcdef012345678912345678"}, age: 4250 * time.Millisecond, found: true, malformed: true},
	{name: "an absurd time stamp gives way to a trace id", headers: []string{"X-Request-Start", "t=1600000000", "X-Amzn-Trace-Id", "Root=1-6553f0fb-abcdef012345678912345678"}, age: 4250 * time.Millisecond, found: true, malformed: true},
	{name: "a malformed trace id beside a time stamp is counted", headers: []string{"X-Request-Start", "t=1700000000.050", "X-Amzn-Trace-Id", "Sampled=1"}, age: 200 * time.Millisecond, found: true, malformed: true},
	{name: "an absurd trace id beside a time stamp is counted", headers: []string{"X-Request-Start", "t=1700000000.050", "X-Amzn-Trace-Id", "Root=1-00000000-abcdef012345678912345678"}, age: 200 * time.Millisecond, found: true, malformed: true},
	{name: "all malformed", headers: []string{"X-Request-Start", "t=", "X-Queue-Start", "-1", "X-Amzn-Trace-Id", "Sampled=1"}, malformed: true},
}

func TestRequestStart(t *testing.T) {
	t.Parallel()
	for _, tc := range requestStartCases {
		for _, disableNormalizing := range []bool{false, true} {
			name := tc.name
			if disableNormalizing {
				name += " (names not normalized)"
			}
			t.Run(name, func(t *testing.T) {
				if disableNormalizing && hasUnusualQueueName(tc.headers) {
					t.Skip("a server that keeps names as received finds canonical and lower-case names only")
				}
				h := requestHeader(t, disableNormalizing, tc.headers...)
				start, found, malformed := requestStart(h, queueNow)
				assert.Equal(t, tc.found, found, "found")
				assert.Equal(t, tc.malformed, malformed, "malformed")
				if tc.found {
					assert.Equal(t, tc.age, queueNow.Sub(start), "age")
				} else {
					assert.True(t, start.IsZero(), "start %v without a header found", start)
				}
			})
		}
	}
}

// hasUnusualQueueName reports whether a header name is neither canonical
// nor lower case.
func hasUnusualQueueName(kv []string) bool {
	for i := 0; i < len(kv); i += 2 {
		name := kv[i]
		if name != strings.ToLower(name) && name != "X-Request-Start" && name != "X-Queue-Start" &&
			name != "X-Amzn-Trace-Id" && name != "X-Request-Id" && name != "X-Trace-Id" {
			return true
		}
	}
	return false
}

func TestRequestStart_keeps_the_monotonic_clock_reading_of_now(t *testing.T) {
	t.Parallel()
	now := time.Now()
	stamp := now.Add(-2 * time.Second).UnixMilli()
	h := requestHeader(t, false, "X-Request-Start", "t="+strconv.FormatInt(stamp, 10))
	start, found, malformed := requestStart(h, now)
	require.True(t, found)
	require.False(t, malformed)
	// A wall-clock time has no "m=" part in its String.
	assert.Contains(t, start.String(), "m=", "start has a monotonic clock reading")
	assert.Equal(t, now.Add(-time.Duration(now.UnixNano()-stamp*int64(time.Millisecond))), start)
}

func TestRequestStart_without_headers_is_zero(t *testing.T) {
	t.Parallel()
	h := requestHeader(t, false)
	start, found, malformed := requestStart(h, queueNow)
	assert.True(t, start.IsZero())
	assert.False(t, found)
	assert.False(t, malformed)
}

func TestRequestStartDoesNotAllocate(t *testing.T) {
	for _, headers := range [][]string{
		nil,
		{"X-Request-Start", "t=1700000000.123"},
		{"X-Request-Start", "bad", "X-Queue-Start", "1700000000123", "X-Amzn-Trace-Id", "Self=1-6553f0ff-12456789abcdef0123456789;Root=1-6553f000-abcdef012345678912345678;Sampled=1"},
	} {
		for _, disableNormalizing := range []bool{false, true} {
			h := requestHeader(t, disableNormalizing, headers...)
			allocs := testing.AllocsPerRun(100, func() { _, _, _ = requestStart(h, queueNow) })
			assert.Zero(t, allocs, "%q (names not normalized: %v)", headers, disableNormalizing)
		}
	}
}

func BenchmarkRequestStart(b *testing.B) {
	for _, bc := range []struct {
		name    string
		headers []string
	}{
		{name: "no-header", headers: []string{"Accept", "application/json", "X-Request-Id", "0af7651916cd43dd8448eb211c80319c"}},
		{name: "nginx", headers: []string{"X-Request-Start", "t=1700000000.123"}},
		{name: "heroku", headers: []string{"X-Request-Start", "1700000000123"}},
		{name: "alb", headers: []string{"X-Amzn-Trace-Id", "Self=1-6553f0ff-12456789abcdef0123456789;Root=1-6553f000-abcdef012345678912345678;Sampled=1"}},
		{name: "all-malformed", headers: []string{"X-Request-Start", "t=", "X-Queue-Start", "-1", "X-Amzn-Trace-Id", "Sampled=1"}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			h := requestHeader(b, false, bc.headers...)
			b.ReportAllocs()
			for b.Loop() {
				_, _, _ = requestStart(h, queueNow)
			}
		})
	}
}
