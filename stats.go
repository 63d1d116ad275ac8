package fasttimeout

import (
	"encoding/json"
	"math"
	"slices"
	"sync/atomic"
	"time"
)

// Stats collects the counters and histograms of one or more middlewares
// (see [Config.Stats]). The zero value is ready to use; all methods are safe
// for concurrent use. *Stats satisfies expvar.Var, so it can be published
// with expvar.Publish("fasttimeout", stats).
type Stats struct {
	// Counted for every request (see stripedCounter); the rest on slow paths.
	requests stripedCounter
	inFlight stripedCounter
	admitted stripedCounter

	timeouts           atomic.Int64
	lateRunning        atomic.Int64
	lateFinished       atomic.Int64
	panics             atomic.Int64
	shed               atomic.Int64
	badDeadlineHeaders atomic.Int64
	spentBudgets       atomic.Int64
	clientGone         atomic.Int64
	leftWaiting        atomic.Int64
	unwatchedClients   atomic.Int64

	queued          atomic.Int64
	rejectedFull    atomic.Int64
	rejectedTimeout atomic.Int64
	badQueueHeaders atomic.Int64
	limit           atomic.Int64 // the sum of the limits of the middlewares sharing it
	waiting         atomic.Int64

	answerLateness histogram // deadline to timeout response
	lateRun        histogram // deadline to a late handler's return
	queueWait      histogram // time waited for a concurrency slot
}

// Counters is a snapshot of the counters of [Stats].
type Counters struct {
	// Requests is the number of requests that entered the middleware, those
	// exempted by Config.Skip included; counted only with Config.Stats set.
	Requests int64 `json:"requests"`
	// InFlight is the number of handlers running now, late ones included,
	// not those exempted by Config.Skip; counted only with Config.Stats set.
	InFlight int64 `json:"in_flight"`
	// Timeouts is the number of requests answered with the timeout response
	// because their deadline passed, spent budgets included. A cooperative
	// handler that asked for its context (Context, Do) counts from its
	// deadline, though the response goes out when it returns.
	Timeouts int64 `json:"timeouts"`
	// LateRunning is the number of handlers still running after their
	// deadline, or after their client hung up. In cooperative mode a handler
	// that never asked for its context (Context, Do) is found late only when
	// it returns; one that did, from the deadline.
	LateRunning int64 `json:"late_running"`
	// LateFinished is the number of handlers that returned after their
	// deadline, or after their client hung up.
	LateFinished int64 `json:"late_finished"`
	// Panics is the number of panics, runtime.Goexit included, of handlers
	// (before or after the deadline) and of Config.Skip and
	// Config.TimeoutFunc, which leave their request no other outcome.
	Panics int64 `json:"panics"`
	// Shed is the number of requests refused with 503 because
	// Config.MaxLateHandlers handlers were running late.
	Shed int64 `json:"shed"`
	// BadDeadlineHeaders is the number of requests whose deadline header
	// was malformed, and ignored.
	BadDeadlineHeaders int64 `json:"bad_deadline_headers"`
	// SpentBudgets is the number of requests answered with the timeout
	// response without running the handler, their budget spent before it
	// could start (see SpentBudget); counted in Timeouts too.
	SpentBudgets int64 `json:"spent_budgets"`
	// ClientGone is the number of requests whose client hung up while their
	// handler ran, or while they waited for a slot (then it never ran: see
	// LeftWaiting). They are not timeouts.
	ClientGone int64 `json:"client_gone"`
	// UnwatchedClients is the number of requests whose connection was to be
	// watched for a hang-up (their handler ran past HangupDelay) but could
	// not be, their client's hang-up unnoticed: no socket (an in-memory
	// connection, or a wrapper hiding it), or the kernel refused. Elsewhere
	// than on Linux nothing is watched and this stays zero.
	UnwatchedClients int64 `json:"unwatched_clients,omitempty"`

	// Admitted is the number of requests whose handler ran under the
	// concurrency limit (see Config.AdaptiveConcurrency and
	// Config.MaxConcurrency), having got a slot at once or after waiting;
	// not those answered without running once they got it (SpentBudgets,
	// LeftWaiting).
	Admitted int64 `json:"admitted,omitempty"`
	// Queued is the number of requests that waited for a slot, whether they
	// got one or not. One whose budget, or MaxQueueAge, left it no time to
	// wait (under 100 µs) is not queued: it is refused, or answered with the
	// timeout response, at once.
	Queued int64 `json:"queued,omitempty"`
	// Rejected is the number of requests refused with 503 by the concurrency
	// limit, without running: RejectedFull plus RejectedQueueTimeout.
	Rejected int64 `json:"rejected,omitempty"`
	// RejectedFull counts the requests refused with reason
	// RejectedQueueFull: a full queue, a budget that left no time to wait,
	// the server's shutdown while they waited, or a saturated CPU (see
	// RejectedQueueFull for each).
	RejectedFull int64 `json:"rejected_full,omitempty"`
	// RejectedQueueTimeout counts the requests refused with reason
	// RejectedQueueTimeout: they waited their share of their budget in vain.
	RejectedQueueTimeout int64 `json:"rejected_queue_timeout,omitempty"`
	// LeftWaiting is the number of requests whose client hung up while
	// they waited for a slot, answered 499 without running; counted in
	// ClientGone too.
	LeftWaiting int64 `json:"left_waiting,omitempty"`
	// ConcurrencyLimit is the current concurrency limit, summed over the
	// middlewares sharing this Stats (nested ones too: each has its own
	// limit); zero without a limit. A middleware counts from New for as long
	// as anything can reach it: a handler built again on the same Stats (on
	// a configuration reload, say) adds its limit to the old one's until the
	// old one is garbage collected, once whatever held its handler drops it
	// (a stopped fasthttp.Server, when its worker pool next looks,
	// MaxIdleWorkerDuration later), its requests, late handlers included,
	// are over and its idle workers have retired (about a second after their
	// last request): the next few collections, forced every two minutes on an
	// idle process, find it.
	ConcurrencyLimit int64 `json:"concurrency_limit,omitempty"`
	// Waiting is the number of requests waiting for a slot now.
	Waiting int64 `json:"waiting,omitempty"`
	// BadQueueHeaders is the number of requests read with
	// Config.HonorQueueHeaders with a value (any line) of X-Request-Start,
	// X-Queue-Start or X-Amzn-Trace-Id malformed or more than an hour from
	// now, and ignored; once per request, however many. A bad value counts
	// even beside a valid one that gave the request's start (a bad, unused
	// trace id beside a valid time stamp too): it tells that something sends
	// such values, not that an age went unread. Requests skipped (Skip) or
	// shed (MaxLateHandlers) are not read, so never counted.
	BadQueueHeaders int64 `json:"bad_queue_headers,omitempty"`
}

// Snapshot returns the current counters, each read atomically, not all at
// the same instant. InFlight is read first, and a handler leaves it only
// once all about it is counted: in a snapshot whose InFlight is zero, every
// handler that ran before is counted in full (LateFinished, Panics,
// ClientGone and the rest). A count that is part of another (SpentBudgets
// of Timeouts, LeftWaiting of ClientGone) never exceeds it, and a late
// handler is never counted both running and finished.
func (s *Stats) Snapshot() Counters {
	inFlight := s.inFlight.load()
	full, timedOut := s.rejectedFull.Load(), s.rejectedTimeout.Load() // Rejected is their sum in every snapshot
	// Each part read before its whole, which is added to first: never above
	// it. And a late handler's return is counted out of LateRunning before
	// it is counted in LateFinished: read in the other order, it is never
	// in both.
	left, spent, lateFinished := s.leftWaiting.Load(), s.spentBudgets.Load(), s.lateFinished.Load()
	return Counters{
		Requests:           s.requests.load(),
		InFlight:           inFlight,
		Timeouts:           s.timeouts.Load(),
		LateRunning:        s.lateRunning.Load(),
		LateFinished:       lateFinished,
		Panics:             s.panics.Load(),
		Shed:               s.shed.Load(),
		BadDeadlineHeaders: s.badDeadlineHeaders.Load(),
		SpentBudgets:       spent,
		ClientGone:         s.clientGone.Load(),
		UnwatchedClients:   s.unwatchedClients.Load(),

		Admitted:             s.admitted.load(),
		Queued:               s.queued.Load(),
		Rejected:             full + timedOut,
		RejectedFull:         full,
		RejectedQueueTimeout: timedOut,
		LeftWaiting:          left,
		ConcurrencyLimit:     s.limit.Load(),
		Waiting:              s.waiting.Load(),
		BadQueueHeaders:      s.badQueueHeaders.Load(),
	}
}

// AnswerLateness returns the histogram of how long after its deadline each
// timeout response was sent: the middleware's own lateness, which grows
// when the machine is overloaded. Spent budgets are not in it.
func (s *Stats) AnswerLateness() Histogram { return s.answerLateness.snapshot() }

// LateRun returns the histogram of how long handlers ran past their
// deadline (or their client's hang-up): the work done for nobody. A handler
// that honours its context shows up in the first buckets.
func (s *Stats) LateRun() Histogram { return s.lateRun.snapshot() }

// QueueWait returns the histogram of how long requests waited for a slot
// under the concurrency limit, whether they got one or were refused.
func (s *Stats) QueueWait() Histogram { return s.queueWait.snapshot() }

// counterStripes is the number of cache lines a stripedCounter spans.
const counterStripes = 16

// stripedCounter is a counter every request updates, spread over cache
// lines by connection: one line shared by every core costs each request
// more the more cores there are (BenchmarkStats). A request adds to and
// takes from one stripe, so none counts below zero, and a read finding all
// at zero saw each request started by then also end.
type stripedCounter struct {
	stripes [counterStripes]struct {
		n atomic.Int64
		_ [56]byte // one cache line each
	}
}

// add adds d to the stripe of connection connID.
func (c *stripedCounter) add(connID uint64, d int64) {
	c.stripes[connID%counterStripes].n.Add(d)
}

// load returns the sum of the stripes.
func (c *stripedCounter) load() (n int64) {
	for i := range c.stripes {
		n += c.stripes[i].n.Load()
	}
	return n
}

// String returns the counters as a JSON object, as expvar expects, leaving
// out UnwatchedClients and the admission counters (Admitted to
// BadQueueHeaders) while zero, as they stay on Linux over TCP and without a
// concurrency limit or queue headers.
func (s *Stats) String() string {
	b, err := json.Marshal(s.Snapshot())
	if err != nil { // cannot happen: Counters holds only integers
		return "{}"
	}
	return string(b)
}

// histogramBounds are the buckets' upper bounds of Stats' histograms: a
// timeout answer a tick late and a handler ignoring its context for minutes
// both land in a bucket of their own.
var histogramBounds = [...]time.Duration{
	100 * time.Microsecond, 250 * time.Microsecond, 500 * time.Microsecond,
	time.Millisecond, 2500 * time.Microsecond, 5 * time.Millisecond,
	10 * time.Millisecond, 25 * time.Millisecond, 50 * time.Millisecond,
	100 * time.Millisecond, 250 * time.Millisecond, 500 * time.Millisecond,
	time.Second, 2500 * time.Millisecond, 5 * time.Second,
	10 * time.Second, 30 * time.Second, time.Minute,
	2 * time.Minute, 5 * time.Minute, 10 * time.Minute,
}

// Histogram is a snapshot of a histogram of durations.
type Histogram struct {
	// Bounds are the buckets' upper bounds, from 100 µs to 10 minutes, the
	// same for every histogram of Stats.
	Bounds []time.Duration
	// Counts holds the number of observations in each bucket, not
	// cumulative: Counts[i] counts those above Bounds[i-1] and at most
	// Bounds[i]; the last one, Counts[len(Bounds)], those above every bound.
	Counts []int64
	// Count is the number of observations, the sum of Counts.
	Count int64
	// Sum is the sum of the observations; it stays at the largest
	// Duration (about 292 years) rather than wrap past it.
	Sum time.Duration
}

// histogram records durations with one atomic add for the bucket and one
// for the sum, on slow paths only (timeouts, late returns).
type histogram struct {
	counts [len(histogramBounds) + 1]atomic.Int64
	sum    atomic.Int64
}

// observe records d, a negative one as zero.
func (h *histogram) observe(d time.Duration) {
	d = max(d, 0)
	i, _ := slices.BinarySearch(histogramBounds[:], d) // the first bound not below d
	h.counts[i].Add(1)
	// Past the ~292 years a Duration holds (a year of thirty late handlers a
	// second, each 10 s late), the sum stays at its most, not wrapping, so a
	// Prometheus _sum never falls (snapshot sees to an add in between).
	if h.sum.Add(int64(d)) < 0 {
		h.sum.Store(math.MaxInt64)
	}
}

// snapshot returns a copy of the histogram's counts and sum.
func (h *histogram) snapshot() Histogram {
	s := Histogram{
		Bounds: append([]time.Duration(nil), histogramBounds[:]...),
		Counts: make([]int64, len(h.counts)),
		Sum:    time.Duration(h.sum.Load()),
	}
	if s.Sum < 0 { // wrapped, not yet stored back (see observe)
		s.Sum = math.MaxInt64
	}
	for i := range h.counts {
		s.Counts[i] = h.counts[i].Load()
		s.Count += s.Counts[i]
	}
	return s
}
