package fasttimeout

import (
	"errors"
	"fmt"
	"math"
	"os"
	"strconv"
	"strings"
	"time"
)

// Bounds of a request timeout: below a millisecond it is a unit mistake
// (Config{Timeout: 5} is 5 ns), timing out even a trivial handler, which
// New refuses as TimeoutFromEnv does; beyond a day, for TimeoutFromEnv, a
// typo.
const (
	minTimeout    = time.Millisecond
	maxEnvTimeout = 24 * time.Hour
)

// TimeoutFromEnv reads a timeout from the environment variable name, such as
// REQUEST_TIMEOUT: a number of seconds ("5", "2.5") or a Go duration
// ("500ms", "1m30s"). An unset or blank variable gives def. Anything else
// (neither form, zero, negative, non-finite, under 1 ms or over 24 hours) is
// an error naming the variable, its value and any limit exceeded.
func TimeoutFromEnv(name string, def time.Duration) (time.Duration, error) {
	raw, ok := os.LookupEnv(name)
	if !ok || strings.TrimSpace(raw) == "" {
		return def, nil
	}
	d, err := ParseTimeout(raw)
	if err != nil {
		return 0, fmt.Errorf("fasttimeout: %s=%q: %w", name, raw, err)
	}
	return d, nil
}

// errNotATimeout is ParseTimeout's error for text of neither form.
var errNotATimeout = errors.New("want seconds (5, 2.5) or a Go duration (500ms, 1m)")

// ParseTimeout parses a timeout as TimeoutFromEnv does: a decimal number of
// seconds ("5", "2.5", "1e-3") or a Go duration ("500ms"), surrounded by
// spaces or not, from 1 ms to 24 hours.
func ParseTimeout(s string) (time.Duration, error) {
	s = strings.TrimSpace(s)
	// ParseFloat also reads "1_000" and hex ("0x1p4"): likely typos here.
	if strings.ContainsAny(s, "_xX") {
		return 0, errNotATimeout
	}
	var d time.Duration
	// Beyond float64 ("1e400") is ±Inf with ErrRange: out of range, not malformed.
	if secs, err := strconv.ParseFloat(s, 64); err == nil || errors.Is(err, strconv.ErrRange) {
		switch {
		case math.IsNaN(secs) || math.IsInf(secs, 0) && err == nil:
			return 0, fmt.Errorf("not a finite number of seconds")
		case secs == 0 && underflows(s), secs > 0 && secs < minTimeout.Seconds():
			// A positive number below float64's least ("1e-400") reads as
			// 0; checked before rounding to nanoseconds, which may give 0.
			return 0, fmt.Errorf("less than the minimum of %v", minTimeout)
		case secs <= 0:
			return 0, fmt.Errorf("must be positive")
		case secs > maxEnvTimeout.Seconds():
			return 0, fmt.Errorf("more than %v", maxEnvTimeout)
		}
		// Rounded: 8.2*1e9 falls just short of 8.2e9, and "8.2" must be 8.2s.
		d = time.Duration(math.Round(secs * float64(time.Second)))
	} else if d, err = time.ParseDuration(s); err != nil {
		if !isDuration(s) {
			return 0, errNotATimeout
		}
		// Well formed, so it overflows time.Duration ("2562048h").
		if s[0] == '-' {
			return 0, fmt.Errorf("must be positive")
		}
		return 0, fmt.Errorf("more than %v", maxEnvTimeout)
	}
	switch {
	case d < minTimeout && (d > 0 || underflows(s)):
		// Also a positive duration that rounds to 0 ns ("0.1ns").
		return 0, fmt.Errorf("less than the minimum of %v", minTimeout)
	case d <= 0:
		return 0, fmt.Errorf("must be positive")
	case d > maxEnvTimeout:
		return 0, fmt.Errorf("more than %v", maxEnvTimeout)
	}
	return d, nil
}

// underflows reports whether s, which ParseFloat or ParseDuration read as
// 0, has a nonzero mantissa digit and no minus sign: a positive value too
// small for a float64 or a time.Duration, not a zero.
func underflows(s string) bool {
	mantissa, _, _ := strings.Cut(strings.ToLower(s), "e")
	return !strings.HasPrefix(s, "-") && strings.ContainsAny(mantissa, "123456789")
}

// isDuration reports whether s has ParseDuration's syntax, checked with every
// digit turned to 0 so that no value can overflow.
func isDuration(s string) bool {
	_, err := time.ParseDuration(strings.Map(func(r rune) rune {
		if '0' <= r && r <= '9' {
			return '0'
		}
		return r
	}, s))
	return err == nil
}
