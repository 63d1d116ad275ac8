package fasttimeout

import (
	"strings"
	"testing"
	"time"

	"github.com/valyala/fasthttp"
)

// FuzzRequestStart feeds arbitrary values to the three queue-time headers
// of a request read at an arbitrary time from 1970 to 2200: the parser
// never panics, a found start is never after now nor more than an hour
// before it, nothing is found without a value of the headers' grammar, and
// the start is the time stamps' if they give one, else the trace id's, with
// a malformed value of either counted.
// Run it with:
//
//	go test -run '^$' -fuzz '^FuzzRequestStart$' -fuzztime 20000x .
func FuzzRequestStart(f *testing.F) {
	for _, tc := range requestStartCases {
		var values [3]string
		for i := 0; i+1 < len(tc.headers); i += 2 {
			switch strings.ToLower(tc.headers[i]) {
			case "x-request-start":
				values[0] = tc.headers[i+1]
			case "x-queue-start":
				values[1] = tc.headers[i+1]
			case "x-amzn-trace-id":
				values[2] = tc.headers[i+1]
			}
		}
		f.Add(values[0], values[1], values[2], queueNow.UnixNano())
	}
	f.Add("t=1", "1", "Root=1-00000000-0", int64(0))
	f.Add("t=9223372036.854775807", "9223372036854775807", "Root=1-ffffffff-ffffffffffffffffffffffff", int64(1<<63-1))
	const latest = int64(230 * 365 * 24 * time.Hour) // about 2200, far from the end of UnixNano
	f.Fuzz(func(t *testing.T, reqStart, queueStart, trace string, nowNs int64) {
		if nowNs < 0 {
			nowNs = -(nowNs + 1)
		}
		now := time.Unix(0, nowNs%latest)
		header := func(reqStart, queueStart, trace string) *fasthttp.RequestHeader {
			h := new(fasthttp.RequestHeader)
			h.SetRequestURI("/")
			for _, kv := range [...][2]string{{"X-Request-Start", reqStart}, {"X-Queue-Start", queueStart}, {"X-Amzn-Trace-Id", trace}} {
				if kv[1] != "" {
					h.Set(kv[0], kv[1])
				}
			}
			return h
		}
		start, found, malformed := requestStart(header(reqStart, queueStart, trace), now)
		stampStart, stampFound, stampMalformed := requestStart(header(reqStart, queueStart, ""), now)
		traceStart, traceFound, traceMalformed := requestStart(header("", "", trace), now)
		if malformed != (stampMalformed || traceMalformed) {
			t.Fatalf("malformed %v, %v for the time stamps and %v for the trace id: %q, %q, %q", malformed, stampMalformed, traceMalformed, reqStart, queueStart, trace)
		}
		switch {
		case stampFound && (!found || !start.Equal(stampStart)):
			t.Fatalf("start %v (found %v), not the time stamps' %v: %q, %q, %q", start, found, stampStart, reqStart, queueStart, trace)
		case !stampFound && (found != traceFound || !start.Equal(traceStart)):
			t.Fatalf("start %v (found %v), not the trace id's %v (found %v): %q, %q, %q", start, found, traceStart, traceFound, reqStart, queueStart, trace)
		}
		if !found {
			if !start.IsZero() {
				t.Fatalf("start %v without a header found", start)
			}
			return
		}
		if age := now.Sub(start); age < 0 || age > maxQueueSkew {
			t.Fatalf("start %v is %v before now %v, out of [0, 1h]: %q, %q, %q", start, age, now, reqStart, queueStart, trace)
		}
		if !isTimeStamp(reqStart) && !isTimeStamp(queueStart) && !strings.Contains(trace, "=1-") {
			t.Fatalf("found %v in no valid value: %q, %q, %q", start, reqStart, queueStart, trace)
		}
	})
}

// isTimeStamp reports whether v is of the grammar of an X-Request-Start
// value: an optional "t=", digits and at most one point, at least one digit.
func isTimeStamp(v string) bool {
	v = strings.TrimPrefix(v, "t=")
	return strings.Count(v, ".") <= 1 && strings.Trim(v, "0123456789.") == "" && strings.Trim(v, ".") != ""
}
