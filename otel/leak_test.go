package fasttimeoutotel_test

import (
	"testing"

	"github.com/fasttimeout/fasttimeout/internal/leaktest"
)

// TestMain fails the tests if a goroutine outlives them, waiting for the
// middleware's workers and fasthttp's cleaners to retire first (see
// leaktest).
func TestMain(m *testing.M) { leaktest.Main(m) }
