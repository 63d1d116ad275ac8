package fasttimeout

import (
	"fmt"
	"math"
	"os"
	"strconv"
	"strings"
	"time"
)

// maxEnvTimeout bounds what TimeoutFromEnv accepts: beyond a day a request
// timeout is a typo, and beyond ~292 years it overflows time.Duration.
const maxEnvTimeout = 24 * time.Hour

// TimeoutFromEnv reads a timeout from the environment variable name, such as
// REQUEST_TIMEOUT. It accepts a number of seconds ("5", "2.5") or a Go
// duration ("500ms", "1m30s"). An unset or empty (blank) variable gives def.
// Anything else (text that is neither, a zero, negative or non-finite value,
// or more than 24 hours) is an error naming the variable and its value.
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

// ParseTimeout parses a timeout as TimeoutFromEnv does: a number of seconds
// ("5", "2.5") or a Go duration ("500ms"), surrounded by spaces or not,
// positive and at most 24 hours.
func ParseTimeout(s string) (time.Duration, error) {
	s = strings.TrimSpace(s)
	var d time.Duration
	if secs, err := strconv.ParseFloat(s, 64); err == nil {
		switch {
		case math.IsNaN(secs) || math.IsInf(secs, 0):
			return 0, fmt.Errorf("not a finite number of seconds")
		case secs > maxEnvTimeout.Seconds():
			return 0, fmt.Errorf("more than %v", maxEnvTimeout)
		}
		d = time.Duration(secs * float64(time.Second))
	} else if d, err = time.ParseDuration(s); err != nil {
		return 0, fmt.Errorf("want seconds (5, 2.5) or a Go duration (500ms, 1m)")
	}
	switch {
	case d <= 0:
		return 0, fmt.Errorf("must be positive")
	case d > maxEnvTimeout:
		return 0, fmt.Errorf("more than %v", maxEnvTimeout)
	}
	return d, nil
}
