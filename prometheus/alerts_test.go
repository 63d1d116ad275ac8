package fasttimeoutprom_test

import (
	"os/exec"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestAlertRules checks alerts.yml and runs its unit tests, alerts_test.yml,
// with promtool (from Debian's prometheus package); without promtool it is
// skipped.
func TestAlertRules(t *testing.T) {
	t.Parallel()
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Skip("promtool not found (apt-get install prometheus)")
	}
	for _, args := range [][]string{
		{"check", "rules", "alerts.yml"},
		{"test", "rules", "alerts_test.yml"},
	} {
		out, err := exec.Command(promtool, args...).CombinedOutput()
		require.NoError(t, err, "promtool %v:\n%s", args, out)
	}
}
