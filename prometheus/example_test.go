package fasttimeoutprom_test

import (
	"fmt"
	"log"
	"net"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/common/expfmt"
	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/fasthttputil"

	"github.com/fasttimeout/fasttimeout"
	fasttimeoutprom "github.com/fasttimeout/fasttimeout/prometheus"
)

// A Stats counted by the middleware and read by Prometheus at scrape time.
// A real server registers the collector with prometheus.MustRegister and
// serves promhttp.Handler() at /metrics (through fasthttpadaptor).
func ExampleNewCollector() {
	stats := new(fasttimeout.Stats)
	collector := fasttimeoutprom.NewCollector(stats, prometheus.Labels{"handler": "api"})
	registry := prometheus.NewRegistry()
	registry.MustRegister(collector)

	slow := func(ctx *fasthttp.RequestCtx) { <-fasttimeout.Context(ctx).Done() }
	handler := fasttimeout.New(slow, fasttimeout.Config{Timeout: 10 * time.Millisecond, Stats: stats})

	ln := fasthttputil.NewInmemoryListener()
	server := &fasthttp.Server{Handler: handler}
	go func() { _ = server.Serve(ln) }()
	defer func() { _ = server.Shutdown() }()
	client := &fasthttp.Client{Dial: func(string) (net.Conn, error) { return ln.Dial() }}
	defer client.CloseIdleConnections()
	status, _, err := client.Get(nil, "http://api/slow")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("status", status)

	text, err := testutil.CollectAndFormat(collector, expfmt.TypeTextPlain,
		"fasttimeout_requests_total", "fasttimeout_timeouts_total")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Print(strings.ReplaceAll(string(text), "\n\n", "\n"))
	// Output:
	// status 504
	// # HELP fasttimeout_requests_total Requests that entered the fasttimeout middleware, those skipped (Skip) included.
	// # TYPE fasttimeout_requests_total counter
	// fasttimeout_requests_total{handler="api"} 1
	// # HELP fasttimeout_timeouts_total Requests answered with the timeout response because their deadline passed, spent budgets included.
	// # TYPE fasttimeout_timeouts_total counter
	// fasttimeout_timeouts_total{handler="api"} 1
}
