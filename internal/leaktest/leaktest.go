// Package leaktest fails a test binary whose goroutines outlive its tests,
// for the test packages of this module and of the nested ones (prometheus,
// otel), which reach it through their replace directive.
//
// goleak.VerifyTestMain does not fit: a middleware's idle workers retire
// about 1.1 s after their last request and its clock goroutine stops after
// that, and fasthttp's own cleaners (a stopped server's worker-pool cleaner,
// a client's connsCleaner) sleep 10 s before they notice they are done,
// while goleak v1.3.0 gives up after about 0.4 s and has no option to wait
// longer. So leaks are looked for again, for up to [Patience], before they
// are reported. The library's own goroutines are never ignored; only
// fasthttp's date updater, which runs for the life of the process, is.
package leaktest

import (
	"fmt"
	"os"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// Patience is how long Main looks for leaks again before it reports them:
// longer than fasthttp's 10 s cleaners.
const Patience = 12 * time.Second

// Main runs m's tests and exits with their code; if they passed but
// goroutines are still running Patience later, it lists them on standard
// error and exits with 1. Call it from TestMain.
func Main(m *testing.M) {
	code := m.Run()
	if code == 0 {
		if err := Find(Patience); err != nil {
			fmt.Fprintf(os.Stderr, "goleak: goroutines left after the tests: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}

// Find looks for leaked goroutines until none is left, and returns nil, or
// until patience has passed, and returns goleak's report of them.
func Find(patience time.Duration) error {
	deadline := time.Now().Add(patience)
	for {
		err := goleak.Find(goleak.IgnoreAnyFunction("github.com/valyala/fasthttp.updateServerDate.func1"))
		if err == nil || time.Now().After(deadline) {
			return err
		}
	}
}
