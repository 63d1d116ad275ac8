package main

import (
	"fmt"
	"os"
	"testing"
)

// TestMain makes the test binary a server child when the parent's tests
// start one (startChildFiles runs this executable), as main does.
func TestMain(m *testing.M) {
	if spec := os.Getenv(serveEnv); spec != "" {
		if err := serveChild(spec, os.Stdin, os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, "loadtest server:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}
