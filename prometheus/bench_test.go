package fasttimeoutprom_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/valyala/fasthttp"

	"github.com/fasttimeout/fasttimeout"
	fasttimeoutprom "github.com/fasttimeout/fasttimeout/prometheus"
)

// scrapeEvery is how many requests BenchmarkFastPath serves between two
// scrapes of the collector=scraped variant: far more often than in
// production, where a server at 100 000 requests/s scraped every 15 s serves
// 1.5 million requests between two scrapes.
const scrapeEvery = 10000

// BenchmarkFastPath measures what the collector adds to requests that
// finish in time: nothing, since it reads the Stats only when scraped. Both
// variants count into a Stats (Config.Stats set, one atomic add per
// request) and stop the timer every scrapeEvery requests; collector=scraped
// also registers a Collector for that Stats and gathers the registry while
// the timer is stopped, so that ns/op and allocs/op are the requests' own in
// both, and only the scrape differs. Compare the two variants of one run:
//
//	go test -run '^$' -bench FastPath -count 6 . > bench.txt
//	benchstat -col /collector bench.txt
//
// The wrapped handler is called directly on a RequestCtx, as the root
// module's BenchmarkHandler does.
func BenchmarkFastPath(b *testing.B) {
	for _, mode := range []fasttimeout.Mode{fasttimeout.Racing, fasttimeout.Cooperative} {
		for _, scraped := range []bool{false, true} {
			name := "none"
			if scraped {
				name = "scraped"
			}
			b.Run(fmt.Sprintf("mode=%v/collector=%s", mode, name), func(b *testing.B) {
				stats := new(fasttimeout.Stats)
				h := fasttimeout.New(func(ctx *fasthttp.RequestCtx) { ctx.SetBodyString("ok") },
					fasttimeout.Config{Timeout: 5 * time.Second, Mode: mode, Stats: stats})
				var registry *prometheus.Registry
				if scraped {
					registry = prometheus.NewRegistry()
					registry.MustRegister(fasttimeoutprom.NewCollector(stats, nil))
				}
				var req fasthttp.Request
				req.SetRequestURI("http://bench/")
				ctx := new(fasthttp.RequestCtx)
				ctx.Init(&req, nil, nil)
				h(ctx) // start the worker and the clock outside the timing
				b.ReportAllocs()
				b.ResetTimer()
				for i := range b.N {
					h(ctx)
					if i%scrapeEvery == 0 {
						b.StopTimer()
						if registry != nil {
							if _, err := registry.Gather(); err != nil {
								b.Fatal(err)
							}
						}
						b.StartTimer()
					}
				}
				b.StopTimer()
				if ctx.Response.StatusCode() != fasthttp.StatusOK {
					b.Fatalf("status %d, want 200", ctx.Response.StatusCode())
				}
				if got := stats.Snapshot().Requests; got != int64(b.N)+1 {
					b.Fatalf("Stats counted %d requests, want %d", got, b.N+1)
				}
			})
		}
	}
}
