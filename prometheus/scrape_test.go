package fasttimeoutprom_test

import (
	"regexp"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/stretchr/testify/require"
	"github.com/valyala/fasthttp"

	"github.com/fasttimeout/fasttimeout"
	fasttimeoutprom "github.com/fasttimeout/fasttimeout/prometheus"
)

// fqName is the name of a metric in its Desc's String.
var fqName = regexp.MustCompile(`fqName: "([^"]+)"`)

// A scrape reads the Stats while the server counts into them. Each event
// is counted before it is observed in its histogram (a timeout in Timeouts,
// a late return in LateFinished), so a scrape must never show an
// observation whose counter misses it: an answer lateness without its
// timeout, a late run without its late finish. The collector is driven
// through an unbuffered channel, and the event happens once it has sent
// its first metric, as a scrape racing with the event sees it.
func TestCollectorNeverShowsAnObservationItsCounterMisses(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		// before runs before the scrape; during, once the collector has
		// sent its first metric.
		before, during func(t *testing.T, b *bench)
	}{{
		name:   "a_timeout",
		before: func(*testing.T, *bench) {},
		during: func(t *testing.T, b *bench) {
			require.Equal(t, fasthttp.StatusGatewayTimeout, waitFor(t, b.getAsync("/block")))
		},
	}, {
		name: "a_late_return",
		before: func(t *testing.T, b *bench) {
			require.Equal(t, fasthttp.StatusGatewayTimeout, b.get(t, "/block"))
		},
		during: func(t *testing.T, b *bench) { b.lateReturns(t, 1) },
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			// /block must run, its budget not spent on arrival.
			b := start(t, fasttimeout.Config{Timeout: time.Second})
			tc.before(t, b)
			collector := fasttimeoutprom.NewCollector(b.stats, nil)
			ch := make(chan prometheus.Metric)
			go func() {
				collector.Collect(ch)
				close(ch)
			}()
			values := map[string]float64{}
			for m := range ch {
				if len(values) == 0 {
					tc.during(t, b)
				}
				var pb dto.Metric
				require.NoError(t, m.Write(&pb))
				name := fqName.FindStringSubmatch(m.Desc().String())[1]
				switch {
				case pb.Counter != nil:
					values[name] += pb.Counter.GetValue()
				case pb.Gauge != nil:
					values[name] = pb.Gauge.GetValue()
				case pb.Histogram != nil:
					values[name] = float64(pb.Histogram.GetSampleCount())
				}
			}
			require.LessOrEqual(t, values["fasttimeout_answer_lateness_seconds"],
				values["fasttimeout_timeouts_total"]-values["fasttimeout_spent_budgets_total"],
				"timeout answers observed beyond the timeouts counted: %v", values)
			require.LessOrEqual(t, values["fasttimeout_late_run_seconds"], values["fasttimeout_late_finished_handlers_total"],
				"late runs observed beyond the late returns counted: %v", values)
		})
	}
}
