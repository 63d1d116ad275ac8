package fasttimeoutotel_test

import (
	"net"
	"testing"

	"github.com/valyala/fasthttp"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	fasttimeoutotel "github.com/fasttimeout/fasttimeout/otel"
)

// BenchmarkMiddleware measures what Middleware costs a request whose span is
// sampled, around a handler that does nothing: the span's attributes are
// most of its allocations.
func BenchmarkMiddleware(b *testing.B) {
	provider := sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.AlwaysSample()))
	h := fasttimeoutotel.Middleware(func(*fasthttp.RequestCtx) {}, provider.Tracer("bench"))
	var req fasthttp.Request
	req.SetRequestURI("http://app:8080/report?week=12")
	req.Header.SetUserAgent("bench/1.0")
	var ctx fasthttp.RequestCtx
	ctx.Init(&req, &net.TCPAddr{IP: net.IPv4(192, 0, 2, 4), Port: 54321}, nil)
	b.ReportAllocs()
	for b.Loop() {
		h(&ctx)
	}
}
