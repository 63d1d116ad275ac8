package main

import (
	"context"
	"os"
	"testing"
)

// TestMeasureBurst runs a tiny burst against each variant's server in this
// process. It asserts only what holds whatever the machine's speed: every
// request is answered, and the handlers that run past the deadline by
// construction (ignoring, honouring and panicking: 80 ms and 70 ms against
// 40 ms) never get their own 200.
func TestMeasureBurst(t *testing.T) {
	const conns, perConn = 4, 5
	for _, v := range burstVariants(allVariants) {
		t.Run(v, func(t *testing.T) {
			row, err := measureBurst(context.Background(), v, conns, perConn, true, os.Stderr)
			if err != nil {
				t.Fatal(err)
			}
			if row.Responses != conns*perConn || row.Errors != 0 || row.Crashed {
				t.Errorf("responses %d of %d, errors %d, crashed %v", row.Responses, conns*perConn, row.Errors, row.Crashed)
			}
			slow := int64(conns * perConn * 3 / len(burstKinds))
			if row.Timeouts+row.EscapedPanics < slow {
				t.Errorf("%d timeout answers and %d re-raised panics; want at least %d together", row.Timeouts, row.EscapedPanics, slow)
			}
			if row.Other != 0 {
				t.Errorf("%d unexpected responses", row.Other)
			}
		})
	}
}
