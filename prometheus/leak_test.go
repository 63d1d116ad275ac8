package fasttimeoutprom_test

import (
	"fmt"
	"os"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// TestMain fails the tests if a goroutine outlives them. The middleware's
// idle workers and clock retire about 1.1 s after their last request, and
// fasthttp's cleaners sleep 10 s, so leaks are looked for again for up to
// 12 s (as in the root module's leak_test.go).
func TestMain(m *testing.M) {
	code := m.Run()
	if code == 0 {
		deadline := time.Now().Add(12 * time.Second)
		for {
			err := goleak.Find(goleak.IgnoreAnyFunction("github.com/valyala/fasthttp.updateServerDate.func1"))
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				fmt.Fprintf(os.Stderr, "goleak: goroutines left after the tests: %v\n", err)
				code = 1
				break
			}
		}
	}
	os.Exit(code)
}
