package fasttimeout

import (
	"encoding/json"
	"sync/atomic"
)

// Stats collects the counters of one or more middlewares (see
// [Config.Stats]). The zero value is ready to use; all methods are safe for
// concurrent use. *Stats satisfies expvar.Var, so it can be published with
// expvar.Publish("fasttimeout", stats).
type Stats struct {
	requests     atomic.Int64
	timeouts     atomic.Int64
	lateRunning  atomic.Int64
	lateFinished atomic.Int64
	panics       atomic.Int64
	shed         atomic.Int64
	badHeaders   atomic.Int64
}

// Counters is a snapshot of [Stats].
type Counters struct {
	// Requests is the number of requests that entered the middleware.
	Requests int64 `json:"requests"`
	// Timeouts is the number of requests answered with the timeout response.
	Timeouts int64 `json:"timeouts"`
	// LateRunning is the number of handlers still running after their
	// deadline (racing mode).
	LateRunning int64 `json:"late_running"`
	// LateFinished is the number of handlers that returned after their
	// deadline.
	LateFinished int64 `json:"late_finished"`
	// Panics is the number of handler panics seen, before or after the
	// deadline.
	Panics int64 `json:"panics"`
	// Shed is the number of requests refused with 503 because
	// Config.MaxLateHandlers handlers were running late.
	Shed int64 `json:"shed"`
	// BadDeadlineHeaders is the number of requests whose deadline header
	// was malformed or absurd, and ignored.
	BadDeadlineHeaders int64 `json:"bad_deadline_headers"`
}

// Snapshot returns the current counters. Each counter is read atomically,
// but not all of them at the same instant.
func (s *Stats) Snapshot() Counters {
	return Counters{
		Requests:     s.requests.Load(),
		Timeouts:     s.timeouts.Load(),
		LateRunning:  s.lateRunning.Load(),
		LateFinished: s.lateFinished.Load(),
		Panics:       s.panics.Load(),
		Shed:         s.shed.Load(),

		BadDeadlineHeaders: s.badHeaders.Load(),
	}
}

// String returns the counters as a JSON object, as expvar expects.
func (s *Stats) String() string {
	b, err := json.Marshal(s.Snapshot())
	if err != nil { // cannot happen: Counters holds only integers
		return "{}"
	}
	return string(b)
}
