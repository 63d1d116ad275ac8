package fasttimeout_test

import (
	"os"
	"testing"

	"github.com/fasttimeout/fasttimeout/internal/leaktest"
)

// TestMain fails the package's tests if any goroutine outlives them (see
// internal/leaktest for why it waits), after dispatching to the child
// process of TestLate_process_stall when it is one.
func TestMain(m *testing.M) {
	if mode := os.Getenv(stallServerEnv); mode != "" {
		runStallServer(mode) // the child of TestLate_process_stall
	}
	leaktest.Main(m)
}
