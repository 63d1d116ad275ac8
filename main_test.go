package fasttimeout_test

import (
	"fmt"
	"os"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// TestMain fails the package's tests if any goroutine outlives them. Idle
// workers of a middleware retire about 1.1 s after their last request and its
// housekeeper goroutine stops after that; fasthttp's own cleaners (a stopped
// server's worker-pool cleaner, a client's connsCleaner) sleep 10 s before
// they notice they are done. So leaks are looked for again for up to 12 s
// before they are reported: goleak v1.3.0 has no option to retry that long
// (each Find gives up after about 0.4 s), hence the loop instead of
// goleak.VerifyTestMain. The library's own goroutines are never ignored; only
// fasthttp's date updater, which runs for the life of the process, is.
func TestMain(m *testing.M) {
	if mode := os.Getenv(stallServerEnv); mode != "" {
		runStallServer(mode) // the child of TestLate_process_stall
	}
	code := m.Run()
	if code == 0 {
		if err := findLeaks(12 * time.Second); err != nil {
			fmt.Fprintf(os.Stderr, "goleak: goroutines left after the tests: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}

func findLeaks(patience time.Duration) error {
	deadline := time.Now().Add(patience)
	for {
		err := goleak.Find(goleak.IgnoreAnyFunction("github.com/valyala/fasthttp.updateServerDate.func1"))
		if err == nil || time.Now().After(deadline) {
			return err
		}
	}
}
