package fasttimeout_test

import (
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/fasttimeout/fasttimeout"
)

// FuzzTimeoutFromEnv checks that any value of the variable either parses to
// a timeout from 1 ms to 24 hours, or is an error that names the variable
// and quotes the value (and names the minimum for a positive value below
// it); never a panic, an overflow or a silent fallback. Run it with:
//
//	go test -run '^$' -fuzz '^FuzzTimeoutFromEnv$' -fuzztime 20000x .
func FuzzTimeoutFromEnv(f *testing.F) {
	for _, seed := range []string{
		// real values
		"5", "2.5", "0.25", "500ms", "1m", "1m30s", "1h", "24h", "86400", "1e3", "0x10",
		// out of range and degenerate
		"-1", "0", "-0", "0s", "-5ms", "24h0m0.000000001s", "86400.000001", "25h", "1ns", "1e-9", "1e-10",
		"NaN", "nan", "Inf", "+Inf", "-Inf", "infinity", "1e309", "-1e309", "1e308",
		"9223372036854775807", "9223372036854775808", "99999999999999999999999999", "9223372036854775807ns",
		"2562047h", "2562048h", "-2562048h", "2562047h47m16.854775808s", "0.000000000000000000000000001",
		"1e-400", "-1e-400", "0x1p-2000",
		// around the minimum of 1 ms
		"1ms", "0.001", "1e-3", "1000us", "999us", "999999ns", "0.000999", "0.0009999999999999999", "1.0000001ms",
		// garbage, unicode and whitespace
		"", " ", "\t\n", " 5 ", "5 s", "5s ", "five", "5x", "1µs", "1μs", "٥", "５", "5\u00a0", "\u200b5",
		"1_000", "1,5", "--5", "+5", ".5", "5.", "e5", "1e", "ms", "\xff\xfe", strings.Repeat("9", 400),
	} {
		f.Add(seed)
	}
	const name = "FASTTIMEOUT_FUZZ_TIMEOUT"
	const def = 7 * time.Second
	f.Fuzz(func(t *testing.T, value string) {
		if err := os.Setenv(name, value); err != nil {
			t.Skip("not a value an environment can hold:", err) // a NUL byte
		}
		defer os.Unsetenv(name)

		d, err := fasttimeout.TimeoutFromEnv(name, def)
		if strings.TrimSpace(value) == "" {
			require.NoError(t, err)
			require.Equal(t, def, d, "a blank variable gives the default")
			return
		}
		if err != nil {
			require.Zero(t, d)
			require.Contains(t, err.Error(), name, "the error names the variable")
			require.Contains(t, err.Error(), strconv.Quote(value), "the error quotes the value")
			if dur, perr := time.ParseDuration(strings.TrimSpace(value)); perr == nil && dur > 0 && dur < time.Millisecond {
				require.Contains(t, err.Error(), "minimum of 1ms", "a duration below the minimum names it")
			}
			return
		}
		require.False(t, strings.ContainsAny(value, "_xX"), "Go's literal forms (1_000, 0x1p4) are refused")
		require.GreaterOrEqual(t, d, time.Millisecond, "at least the minimum")
		require.LessOrEqual(t, d, 24*time.Hour)
		if secs, perr := strconv.ParseFloat(strings.TrimSpace(value), 64); perr == nil {
			// A number of seconds: the duration is that number, to within
			// rounding to nanoseconds.
			require.InDelta(t, secs, d.Seconds(), 1e-6, "seconds %q", value)
			require.GreaterOrEqual(t, secs, time.Millisecond.Seconds(), "no number below the minimum, though it rounds to it")
		}
	})
}

// TestTimeoutFromEnv_unset_variable_gives_the_default pins what the fuzz
// target cannot reach: a variable that is not set at all.
func TestTimeoutFromEnv_unset_variable_gives_the_default(t *testing.T) {
	d, err := fasttimeout.TimeoutFromEnv("FASTTIMEOUT_FUZZ_SURELY_UNSET", 3*time.Second)
	require.NoError(t, err)
	require.Equal(t, 3*time.Second, d)
}
