package fasttimeout

import (
	"bufio"
	"strings"
	"testing"
	"time"

	"github.com/valyala/fasthttp"
)

func bufioReader(s string) *bufio.Reader { return bufio.NewReader(strings.NewReader(s)) }

// hostileValues seeds the fuzz targets with real and hostile header values.
var hostileValues = []string{
	"250m", "5S", "1H", "3M", "1500u", "99999999n", "0S", "0", "1500", "2.5", ".5", "5.",
	"", " ", "-1", "+1", "-5S", "1 0", "5 S", "1e3", "Inf", "NaN", "0x10", "١٢٣", "٣S", "5\u00a0S",
	"123456789S", "99999999H", "25H", "86400001", "86400.000000001", "9223372036854775807",
	"99999999999999999999999999", strings.Repeat("9", 300), "1.2.3", ".", "S", "m", "\x00", "\xff\xfe",
}

// FuzzIncomingBudget feeds arbitrary values to the three deadline headers of
// a parsed request: the parser never panics, and a found budget is within
// [0, 24h].
func FuzzIncomingBudget(f *testing.F) {
	for _, v := range hostileValues {
		f.Add(v, "", "")
		f.Add("", v, "")
		f.Add("", "", v)
		f.Add(v, v, v)
	}
	f.Fuzz(func(t *testing.T, grpc, envoy, seconds string) {
		var h fasthttp.RequestHeader
		h.SetRequestURI("/")
		h.Set(HeaderGRPCTimeout, grpc)
		h.Set(HeaderEnvoyExpectedTimeout, envoy)
		h.Set(HeaderRequestTimeout, seconds)
		budget, found, _ := incomingBudget(&h)
		if found && (budget < 0 || budget > maxBudget) {
			t.Fatalf("budget %v out of [0, 24h] for %q, %q, %q", budget, grpc, envoy, seconds)
		}
		if !found && budget != 0 {
			t.Fatalf("budget %v without a header found", budget)
		}
		// At least the smallest valid value, and less than a second above
		// it: only a whole-second Request-Timeout gives way, to a finer
		// header within its second.
		least, any := maxBudget, false
		for i := range 3 {
			dh := &deadlineHeaders[i]
			if d, ok := dh.parse(h.Peek(dh.name)); ok && !(d == 0 && dh.zeroIsNone) {
				least, any = min(least, d), true
			}
		}
		if any != found || found && (budget < least || budget >= least+time.Second) {
			t.Fatalf("budget %v (found %v) against the smallest value %v (found %v) for %q, %q, %q", budget, found, least, any, grpc, envoy, seconds)
		}
	})
}

// FuzzParseGRPCTimeout checks the grpc-timeout parser against its grammar:
// it accepts exactly 1 to 8 ASCII digits and a unit, with the value the
// digits and unit say, or 24h if they say more.
func FuzzParseGRPCTimeout(f *testing.F) {
	for _, v := range hostileValues {
		f.Add(v)
	}
	units := map[byte]time.Duration{'H': time.Hour, 'M': time.Minute, 'S': time.Second, 'm': time.Millisecond, 'u': time.Microsecond, 'n': time.Nanosecond}
	f.Fuzz(func(t *testing.T, v string) {
		d, ok := parseGRPCTimeout([]byte(v))
		if !ok {
			if d != 0 {
				t.Fatalf("rejected %q but returned %v", v, d)
			}
			return
		}
		if d < 0 || d > maxBudget {
			t.Fatalf("%q gave %v, out of [0, 24h]", v, d)
		}
		n := len(v) - 1
		unit, known := units[v[n]]
		if n < 1 || n > 8 || !known || strings.Trim(v[:n], "0123456789") != "" {
			t.Fatalf("accepted %q, which is not 1 to 8 digits and a unit", v)
		}
		var x int64
		for _, c := range v[:n] {
			x = x*10 + int64(c-'0')
		}
		want := maxBudget
		if x <= int64(maxBudget/unit) { // else x*unit may overflow
			want = time.Duration(x) * unit
		}
		if d != want {
			t.Fatalf("%q gave %v, want %v", v, d, want)
		}
	})
}

// FuzzParseEnvoyTimeout: never a panic, and only digits are accepted.
func FuzzParseEnvoyTimeout(f *testing.F) {
	for _, v := range hostileValues {
		f.Add(v)
	}
	f.Fuzz(func(t *testing.T, v string) {
		d, ok := parseEnvoyTimeout([]byte(v))
		if !ok {
			return
		}
		if d < 0 || d > maxBudget || d%time.Millisecond != 0 {
			t.Fatalf("%q gave %v", v, d)
		}
		if v == "" || strings.Trim(v, "0123456789") != "" {
			t.Fatalf("accepted %q, which is not a whole number", v)
		}
	})
}

// FuzzParseRequestTimeout: never a panic, and only digits with at most one
// point are accepted.
func FuzzParseRequestTimeout(f *testing.F) {
	for _, v := range hostileValues {
		f.Add(v)
	}
	f.Fuzz(func(t *testing.T, v string) {
		d, ok := parseRequestTimeout([]byte(v))
		if !ok {
			return
		}
		if d < 0 || d > maxBudget {
			t.Fatalf("%q gave %v, out of [0, 24h]", v, d)
		}
		if strings.Count(v, ".") > 1 || strings.Trim(v, "0123456789.") != "" || strings.Trim(v, ".") == "" {
			t.Fatalf("accepted %q, which is not a decimal number of seconds", v)
		}
	})
}

// FuzzSetBudgetHeaders rewrites arbitrary deadline headers of an outgoing
// request to a budget, as Do does: what the upstream can read back is never
// more than that budget, and Request-Timeout is whole seconds.
func FuzzSetBudgetHeaders(f *testing.F) {
	for _, v := range hostileValues {
		f.Add(v, v, int64(1500*time.Millisecond))
		f.Add(v, "", int64(694*time.Millisecond))
	}
	f.Fuzz(func(t *testing.T, grpc, seconds string, budget int64) {
		b := time.Duration(budget)
		if b < minUpstreamBudget || b > maxBudget {
			return
		}
		var h fasthttp.RequestHeader
		h.SetRequestURI("/")
		h.Set(HeaderGRPCTimeout, grpc)
		h.Set(HeaderRequestTimeout, seconds)
		setBudgetHeaders(&h, b)
		got, found, malformed := incomingBudget(&h)
		// Request-Timeout, rounded down to whole seconds, may read back up to
		// a second less; nothing reads back more.
		if !found || malformed || got > b || got <= b-time.Second {
			t.Fatalf("budget %v written, %v read back (found %v, malformed %v): %q", b, got, found, malformed, h.String())
		}
		if v := h.Peek(HeaderRequestTimeout); v != nil && strings.Trim(string(v), "0123456789") != "" {
			t.Fatalf("Request-Timeout %q is not whole seconds", v)
		}
	})
}
