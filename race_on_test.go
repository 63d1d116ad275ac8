//go:build race

package fasttimeout_test

// raceEnabled reports whether the tests run under the race detector, which
// allocates on its own and slows everything down.
const raceEnabled = true
