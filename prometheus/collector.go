// Package fasttimeoutprom exposes the counters and histograms of a
// [fasttimeout.Stats] to Prometheus.
//
// The [Collector] reads the Stats when Prometheus scrapes: requests pay
// nothing for it, not even the ones that time out, since the middleware
// counts into Stats with atomic adds whether or not anything reads them.
//
//	stats := new(fasttimeout.Stats)
//	prometheus.MustRegister(fasttimeoutprom.NewCollector(stats, nil))
//	handler := fasttimeout.New(app, fasttimeout.Config{Stats: stats})
//
// Requests refused with 503 without running are counted in
// fasttimeout_rejected_total, whose reason label takes the values of
// [fasttimeout.RejectReason]: queue_full and queue_timeout for the
// concurrency limit, late_handlers for MaxLateHandlers, which
// fasttimeout_shed_requests_total counts as well.
//
// It lives in its own module so that the library keeps fasthttp as its only
// dependency.
package fasttimeoutprom

import (
	"fmt"

	"github.com/fasttimeout/fasttimeout"
	"github.com/prometheus/client_golang/prometheus"
)

// Collector is a prometheus.Collector for one [fasttimeout.Stats]. Create it
// with [NewCollector]; it is safe for concurrent scrapes.
type Collector struct {
	stats     *fasttimeout.Stats
	counters  []counterMetric
	rejected  *prometheus.Desc
	lateness  *prometheus.Desc
	lateRun   *prometheus.Desc
	queueWait *prometheus.Desc
}

// counterMetric is one value of fasttimeout.Counters.
type counterMetric struct {
	desc      *prometheus.Desc
	valueType prometheus.ValueType
	value     func(fasttimeout.Counters) int64
}

// rejectedBy maps each value of the reason label of metricRejectedTotal to
// its counter. Refusals because of late handlers are in metricShedTotal
// too, which dashboards already read.
var rejectedBy = [...]struct {
	reason string
	value  func(fasttimeout.Counters) int64
}{
	{fasttimeout.RejectedQueueFull, func(c fasttimeout.Counters) int64 { return c.RejectedFull }},
	{fasttimeout.RejectedQueueTimeout, func(c fasttimeout.Counters) int64 { return c.RejectedQueueTimeout }},
	{fasttimeout.RejectedLateHandlers, func(c fasttimeout.Counters) int64 { return c.Shed }},
}

// The metrics' names.
const (
	metricRequestsTotal           = "fasttimeout_requests_total"
	metricInFlightHandlers        = "fasttimeout_in_flight_handlers"
	metricTimeoutsTotal           = "fasttimeout_timeouts_total"
	metricLateRunningHandlers     = "fasttimeout_late_running_handlers"
	metricLateFinishedTotal       = "fasttimeout_late_finished_handlers_total"
	metricPanicsTotal             = "fasttimeout_panics_total"
	metricShedTotal               = "fasttimeout_shed_requests_total"
	metricBadDeadlineHeadersTotal = "fasttimeout_bad_deadline_headers_total"
	metricSpentBudgetsTotal       = "fasttimeout_spent_budgets_total"
	metricClientGoneTotal         = "fasttimeout_client_gone_total"
	metricUnwatchedClientsTotal   = "fasttimeout_unwatched_clients_total"
	metricAnswerLatenessSeconds   = "fasttimeout_answer_lateness_seconds"
	metricLateRunSeconds          = "fasttimeout_late_run_seconds"

	metricAdmittedTotal        = "fasttimeout_admitted_total"
	metricQueuedTotal          = "fasttimeout_queued_total"
	metricLeftWaitingTotal     = "fasttimeout_left_waiting_total"
	metricRejectedTotal        = "fasttimeout_rejected_total"
	metricConcurrencyLimit     = "fasttimeout_concurrency_limit"
	metricWaiting              = "fasttimeout_waiting"
	metricBadQueueHeadersTotal = "fasttimeout_bad_queue_headers_total"
	metricQueueWaitSeconds     = "fasttimeout_queue_wait_seconds"
)

// bucketLabel is the label of a histogram's bucket bounds.
const bucketLabel = "le"

// NewCollector returns a collector reading stats at each scrape. constLabels
// are added to every metric (nil for none): give each Stats its own, say
// {"handler": "api"}, to register several collectors in one registry. A
// constant label the metrics use themselves ("reason", "le") makes
// Register fail, as an invalid label name does. It panics if stats is nil.
func NewCollector(stats *fasttimeout.Stats, constLabels prometheus.Labels) *Collector {
	if stats == nil {
		panic("fasttimeoutprom: NewCollector needs a *fasttimeout.Stats, got nil")
	}
	desc := func(name, help string) *prometheus.Desc {
		return prometheus.NewDesc(name, help, nil, constLabels)
	}
	counter := func(name, help string, value func(fasttimeout.Counters) int64) counterMetric {
		return counterMetric{desc(name, help), prometheus.CounterValue, value}
	}
	gauge := func(name, help string, value func(fasttimeout.Counters) int64) counterMetric {
		return counterMetric{desc(name, help), prometheus.GaugeValue, value}
	}
	histogram := func(name, help string) *prometheus.Desc {
		// client_golang refuses "le" on its own histograms but not on const
		// ones: each bucket line would carry it twice, which fails the
		// parse of the whole scrape. An invalid Desc makes Register say so.
		if _, ok := constLabels[bucketLabel]; ok {
			return prometheus.NewInvalidDesc(fmt.Errorf("fasttimeoutprom: %q is not allowed as a constant label: histogram %s uses it for its buckets", bucketLabel, name))
		}
		return desc(name, help)
	}
	return &Collector{
		stats: stats,
		counters: []counterMetric{
			counter(metricRequestsTotal, "Requests that entered the fasttimeout middleware, those skipped (Skip) included.",
				func(c fasttimeout.Counters) int64 { return c.Requests }),
			gauge(metricInFlightHandlers, "Handlers running now under fasttimeout, late ones included, those of skipped requests (Skip) not.",
				func(c fasttimeout.Counters) int64 { return c.InFlight }),
			counter(metricTimeoutsTotal, "Requests answered with the timeout response because their deadline passed, spent budgets included.",
				func(c fasttimeout.Counters) int64 { return c.Timeouts }),
			gauge(metricLateRunningHandlers, "Handlers still running after their deadline (a cooperative one that never asked for its context is found late when it returns) or after their client's hang-up.",
				func(c fasttimeout.Counters) int64 { return c.LateRunning }),
			counter(metricLateFinishedTotal, "Handlers that returned after their deadline or their client's hang-up.",
				func(c fasttimeout.Counters) int64 { return c.LateFinished }),
			counter(metricPanicsTotal, "Panics and runtime.Goexit calls of handlers, before or after the deadline, and of Skip and TimeoutFunc.",
				func(c fasttimeout.Counters) int64 { return c.Panics }),
			counter(metricShedTotal, "Requests refused with 503 because MaxLateHandlers handlers were running late.",
				func(c fasttimeout.Counters) int64 { return c.Shed }),
			counter(metricBadDeadlineHeadersTotal, "Requests whose deadline header was malformed, and ignored.",
				func(c fasttimeout.Counters) int64 { return c.BadDeadlineHeaders }),
			counter(metricSpentBudgetsTotal, "Requests answered with the timeout response without running: the caller's budget was spent, the request was (or grew, waiting for a slot) older than MaxQueueAge, or its deadline passed before it could start.",
				func(c fasttimeout.Counters) int64 { return c.SpentBudgets }),
			counter(metricClientGoneTotal, "Requests whose client hung up while their handler ran, or while they waited for a slot (then not run: "+metricLeftWaitingTotal+").",
				func(c fasttimeout.Counters) int64 { return c.ClientGone }),
			counter(metricUnwatchedClientsTotal, "Requests whose connection could not be watched for a hang-up (no socket, or refused by the kernel); always zero on systems other than Linux, which watch nothing.",
				func(c fasttimeout.Counters) int64 { return c.UnwatchedClients }),

			counter(metricAdmittedTotal, "Requests whose handler ran under the concurrency limit, having got a slot at once or after waiting; not those answered without running once they got it.",
				func(c fasttimeout.Counters) int64 { return c.Admitted }),
			counter(metricQueuedTotal, "Requests that waited for a slot under the concurrency limit, whether they got one or not; not those left no time to wait.",
				func(c fasttimeout.Counters) int64 { return c.Queued }),
			counter(metricLeftWaitingTotal, "Requests whose client hung up while they waited for a slot under the concurrency limit, answered 499 without running; also in "+metricClientGoneTotal+".",
				func(c fasttimeout.Counters) int64 { return c.LeftWaiting }),
			gauge(metricConcurrencyLimit, "The current concurrency limit, summed over the middlewares sharing the Stats (nested ones too, each counted from New on until it is garbage collected); 0 without a limit.",
				func(c fasttimeout.Counters) int64 { return c.ConcurrencyLimit }),
			gauge(metricWaiting, "Requests waiting for a slot under the concurrency limit now.",
				func(c fasttimeout.Counters) int64 { return c.Waiting }),
			counter(metricBadQueueHeadersTotal, "Requests read with HonorQueueHeaders with an X-Request-Start, X-Queue-Start or X-Amzn-Trace-Id value malformed or more than an hour away from now, and ignored; once per request.",
				func(c fasttimeout.Counters) int64 { return c.BadQueueHeaders }),
		},
		rejected: prometheus.NewDesc(metricRejectedTotal,
			"Requests refused with 503 without running their handler, by reason: "+
				fasttimeout.RejectedQueueFull+" (the concurrency limit was reached and the queue was full, on arrival or for a waiter giving way to a newer request, the budget left no time to wait, or the server shut down during the wait; or the CPU was saturated), "+
				fasttimeout.RejectedQueueTimeout+" (waited their share of their budget without a slot), "+
				fasttimeout.RejectedLateHandlers+" (MaxLateHandlers handlers were running late; also in "+metricShedTotal+").",
			[]string{"reason"}, constLabels),
		lateness:  histogram(metricAnswerLatenessSeconds, "How long after its deadline each timeout response was sent, spent budgets not included."),
		lateRun:   histogram(metricLateRunSeconds, "How long handlers ran past their deadline, or their client's hang-up, before they returned."),
		queueWait: histogram(metricQueueWaitSeconds, "How long requests waited for a slot under the concurrency limit, whether they got one or were refused."),
	}
}

// Describe sends the descriptions of every metric of c.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, m := range c.counters {
		ch <- m.desc
	}
	ch <- c.rejected
	ch <- c.lateness
	ch <- c.lateRun
	ch <- c.queueWait
}

// Collect reads the Stats and sends their current values.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	// The histograms before the counters, and all before the first send:
	// an event is counted (a timeout in Timeouts, a late return in
	// LateFinished, a wait in Queued) before it is observed, so a histogram
	// read first never holds an observation its counter misses.
	lateness, lateRun, queueWait := c.stats.AnswerLateness(), c.stats.LateRun(), c.stats.QueueWait()
	counters := c.stats.Snapshot()
	for _, m := range c.counters {
		ch <- prometheus.MustNewConstMetric(m.desc, m.valueType, float64(m.value(counters)))
	}
	for _, r := range rejectedBy {
		ch <- prometheus.MustNewConstMetric(c.rejected, prometheus.CounterValue, float64(r.value(counters)), r.reason)
	}
	ch <- constHistogram(c.lateness, lateness)
	ch <- constHistogram(c.lateRun, lateRun)
	ch <- constHistogram(c.queueWait, queueWait)
}

// constHistogram converts h, in seconds, with cumulative buckets as
// Prometheus wants them; observations above the last bound are in the +Inf
// bucket, which is the count.
func constHistogram(desc *prometheus.Desc, h fasttimeout.Histogram) prometheus.Metric {
	buckets := make(map[float64]uint64, len(h.Bounds))
	var cumulative int64
	for i, bound := range h.Bounds {
		cumulative += h.Counts[i]
		buckets[bound.Seconds()] = uint64(cumulative)
	}
	// The buckets are read one at a time, Count is their sum: the +Inf bucket
	// is never below the others.
	m, err := prometheus.NewConstHistogram(desc, uint64(h.Count), h.Sum.Seconds(), buckets)
	if err != nil {
		return prometheus.NewInvalidMetric(desc, fmt.Errorf("fasttimeoutprom: %w", err))
	}
	return m
}
