package fasttimeout_test

import (
	"testing"
	"time"

	"github.com/fasttimeout/fasttimeout"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestTimeoutFromEnv(t *testing.T) {
	const def = 7 * time.Second
	tests := []struct {
		value   string
		unset   bool
		want    time.Duration
		wantErr string
	}{
		{unset: true, want: def},
		{value: "", want: def},
		{value: "   ", want: def},
		{value: "5", want: 5 * time.Second},
		{value: "2.5", want: 2500 * time.Millisecond},
		{value: " 3 ", want: 3 * time.Second},
		{value: "0.001", want: time.Millisecond},
		{value: "500ms", want: 500 * time.Millisecond},
		{value: "1m", want: time.Minute},
		{value: "1m30s", want: 90 * time.Second},
		{value: "86400", want: 24 * time.Hour},
		{value: "0", wantErr: "must be positive"},
		{value: "0s", wantErr: "must be positive"},
		{value: "-1", wantErr: "must be positive"},
		{value: "-500ms", wantErr: "must be positive"},
		{value: "-0", wantErr: "must be positive"},
		{value: "1e-12", wantErr: "less than the minimum of 1ms"},
		{value: "1ns", wantErr: "less than the minimum of 1ms"},
		{value: "999us", wantErr: "less than the minimum of 1ms"},
		{value: "999999ns", wantErr: "less than the minimum of 1ms"},
		{value: "0.0009", wantErr: "less than the minimum of 1ms"},
		{value: "0.000999999", wantErr: "less than the minimum of 1ms"},
		{value: "1ms", want: time.Millisecond},
		{value: "1000us", want: time.Millisecond},
		{value: "1e-3", want: time.Millisecond},
		{value: "86401", wantErr: "more than 24h"},
		{value: "25h", wantErr: "more than 24h"},
		{value: "1e300", wantErr: "more than 24h"},
		{value: "9999999999999999999h", wantErr: "more than 24h"},
		{value: "NaN", wantErr: "not a finite"},
		{value: "Inf", wantErr: "not a finite"},
		{value: "five", wantErr: "want seconds"},
		{value: "5 s", wantErr: "want seconds"},
		{value: "5sec", wantErr: "want seconds"},
	}
	for _, tt := range tests {
		name := tt.value
		if tt.unset {
			name = "unset"
		}
		t.Run(name, func(t *testing.T) {
			const key = "FASTTIMEOUT_TEST_TIMEOUT"
			t.Setenv(key, tt.value)
			if tt.unset {
				unsetenv(t, key)
			}
			got, err := fasttimeout.TimeoutFromEnv(key, def)
			if tt.wantErr != "" {
				require.Error(t, err)
				assert.Contains(t, err.Error(), tt.wantErr)
				assert.Contains(t, err.Error(), key, "the error names the variable")
				assert.Contains(t, err.Error(), `"`+tt.value+`"`, "the error quotes the value")
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.want, got)
		})
	}
}

func TestParseTimeout(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in      string
		want    time.Duration
		wantErr string
	}{
		{in: "5", want: 5 * time.Second},
		{in: " 250ms ", want: 250 * time.Millisecond},
		{in: "0.5", want: 500 * time.Millisecond},
		{in: "0.001", want: time.Millisecond},
		{in: "8.2", want: 8200 * time.Millisecond},   // 8.2 * 1e9 is just under 8.2e9 in floating point
		{in: "1.001", want: 1001 * time.Millisecond}, // and 1.001 * 1e9 just under 1.001e9
		{in: "1ms", want: time.Millisecond},
		{in: "1.5ms", want: 1500 * time.Microsecond},
		{in: "24h", want: 24 * time.Hour},
		{in: "", wantErr: "want seconds"},
		{in: "0", wantErr: "must be positive"},
		{in: "-5", wantErr: "must be positive"},
		{in: "x", wantErr: "want seconds"},
		{in: "25h", wantErr: "more than 24h"},
		{in: "1e400", wantErr: "more than 24h"}, // beyond float64
		{in: "-1e400", wantErr: "must be positive"},
		{in: "Inf", wantErr: "not a finite number"},
		{in: "1ns", wantErr: "less than the minimum of 1ms"},
		{in: "999µs", wantErr: "less than the minimum of 1ms"},
		{in: "0.0005", wantErr: "less than the minimum of 1ms"},
		{in: "1e-9", wantErr: "less than the minimum of 1ms"},
		// Below the minimum, though rounding to nanoseconds would give it.
		{in: "0.0009999995", wantErr: "less than the minimum of 1ms"},
		{in: "0.0009999999", wantErr: "less than the minimum of 1ms"},
		{in: "0.0009999999999999999", wantErr: "less than the minimum of 1ms"}, // float64's last below 0.001
		// Below float64's least positive value the number reads as 0: it is
		// still positive, and below the minimum.
		{in: "1e-400", wantErr: "less than the minimum of 1ms"},
		{in: "+1e-400", wantErr: "less than the minimum of 1ms"},
		{in: "-1e-400", wantErr: "must be positive"},
		{in: "0e-400", wantErr: "must be positive"},
		// A positive duration that rounds to 0 ns is below the minimum too.
		{in: "0.0000000001s", wantErr: "less than the minimum of 1ms"},
		{in: "0.1ns", wantErr: "less than the minimum of 1ms"},
		{in: "-0.1ns", wantErr: "must be positive"},
		{in: "0.0ns", wantErr: "must be positive"},
		// Beyond time.Duration (~292 years) a well-formed duration is out
		// of range, not malformed.
		{in: "2562048h", wantErr: "more than 24h"},
		{in: "+2562048h", wantErr: "more than 24h"},
		{in: "2562047h47m16.854775808s", wantErr: "more than 24h"},
		{in: "1h99999999999999999999ns", wantErr: "more than 24h"},
		{in: "-2562048h", wantErr: "must be positive"},
		{in: "2562048hours", wantErr: "want seconds"},
		{in: "99999999999999999999x", wantErr: "want seconds"},
		{in: "1.2.3s", wantErr: "want seconds"},
		{in: "-", wantErr: "want seconds"},
		// strconv.ParseFloat reads these Go literals; a timeout is plain.
		{in: "1_000", wantErr: "want seconds"},
		{in: "0x1p4", wantErr: "want seconds"},
		{in: "0X1P4", wantErr: "want seconds"},
		{in: "0x1p-2000", wantErr: "want seconds"},
		// Decimal only: a leading zero is no octal, and Go's prefixes are
		// not numbers here.
		{in: "010", want: 10 * time.Second},
		{in: "010ms", want: 10 * time.Millisecond},
		{in: "0x10", wantErr: "want seconds"},
		{in: "0o10", wantErr: "want seconds"},
		{in: "0b10", wantErr: "want seconds"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			t.Parallel()
			got, err := fasttimeout.ParseTimeout(tt.in)
			if tt.wantErr != "" {
				require.Error(t, err)
				assert.Contains(t, err.Error(), tt.wantErr)
				assert.Zero(t, got)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.want, got)
		})
	}
}
