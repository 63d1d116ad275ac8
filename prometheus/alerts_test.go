package fasttimeoutprom_test

import (
	"os"
	"os/exec"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestAlertRules checks alerts.yml and runs its unit tests, alerts_test.yml,
// with promtool (from Debian's prometheus package); without promtool it is
// skipped locally and fails under CI, which installs it (.ci/run).
func TestAlertRules(t *testing.T) {
	t.Parallel()
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		if ci := os.Getenv("CI"); ci != "" && ci != "false" {
			t.Fatal("promtool not found under CI: .ci/run installs Debian's prometheus package")
		}
		t.Skip("SKIPPED: promtool not found (apt-get install prometheus); alerts.yml was not checked")
	}
	for _, args := range [][]string{
		{"check", "rules", "alerts.yml"},
		{"test", "rules", "alerts_test.yml"},
	} {
		out, err := exec.Command(promtool, args...).CombinedOutput()
		require.NoError(t, err, "promtool %v:\n%s", args, out)
	}
}
