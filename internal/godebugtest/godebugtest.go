// Package godebugtest runs a test again in a child process of its test
// binary with a GODEBUG setting, for behaviour that only a setting of the
// whole process brings out.
package godebugtest

import (
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// Child reports whether this process runs with setting in GODEBUG: then the
// caller is the child and goes on with its test. Otherwise Child runs the
// calling top-level test again in a child process with GODEBUG=setting,
// fails t unless it passed there, and reports false: the caller returns.
func Child(t *testing.T, setting string) bool {
	t.Helper()
	if strings.Contains(os.Getenv("GODEBUG"), setting) {
		return true
	}
	cmd := exec.Command(os.Args[0], "-test.run=^"+regexp.QuoteMeta(t.Name())+"$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), "GODEBUG="+setting)
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "the child:\n%s", out)
	require.Contains(t, string(out), "--- PASS: "+t.Name())
	return false
}
