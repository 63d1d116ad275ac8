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
	})
}

// FuzzParseGRPCTimeout checks the grpc-timeout parser against its grammar:
// it accepts exactly 1 to 8 ASCII digits and a unit, within 24h, with the
// value the digits and unit say.
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
		if want := time.Duration(x) * unit; d != want {
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
