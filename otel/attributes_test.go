package fasttimeoutotel_test

import (
	"bufio"
	"context"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/fasthttputil"
	"go.opentelemetry.io/otel/attribute"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/fasttimeout/fasttimeout"
	fasttimeoutotel "github.com/fasttimeout/fasttimeout/otel"
)

// Middleware's span has the request's attributes that the HTTP conventions
// recommend for a server span: url.query if the request has one,
// server.address and server.port from the request target's host (the Host
// header, or an absolute-form target's) or else the local address,
// client.address the connection's peer, whatever X-Forwarded-For says
// (anyone can send it), and user_agent.original.
func TestMiddlewareRecordsTheRequestsAttributes(t *testing.T) {
	t.Parallel()
	const (
		client = "192.0.2.4" // the connection's peer
		local  = "192.0.2.80"
	)
	keys := []attribute.Key{"url.query", "server.address", "server.port", "client.address", "user_agent.original"}
	tests := []struct {
		name    string
		request string                // sent as is
		want    map[attribute.Key]any // by key of keys, absent if not here
	}{{
		name: "all_of_them",
		request: "GET /report?week=12&team=a HTTP/1.1\r\nHost: app:8080\r\nUser-Agent: probe/1.0\r\n" +
			"X-Forwarded-For: 203.0.113.9\r\n\r\n",
		want: map[attribute.Key]any{"url.query": "week=12&team=a", "server.address": "app", "server.port": int64(8080),
			"client.address": client, "user_agent.original": "probe/1.0"},
	}, {
		name:    "no_query_no_port_no_user_agent",
		request: "GET /report HTTP/1.1\r\nHost: app\r\n\r\n",
		want:    map[attribute.Key]any{"server.address": "app", "client.address": client},
	}, {
		name:    "an_IPv6_host",
		request: "GET /report HTTP/1.1\r\nHost: [2001:db8::1]:8443\r\n\r\n",
		want:    map[attribute.Key]any{"server.address": "2001:db8::1", "server.port": int64(8443), "client.address": client},
	}, {
		name:    "an_absolute_form_target",
		request: "GET http://example.com:9090/report?x=1 HTTP/1.1\r\nHost: app\r\n\r\n",
		want: map[attribute.Key]any{"url.query": "x=1", "server.address": "example.com", "server.port": int64(9090),
			"client.address": client},
	}, {
		name:    "no_host",
		request: "GET /report HTTP/1.0\r\n\r\n",
		want:    map[attribute.Key]any{"server.address": local, "server.port": int64(8080), "client.address": client},
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ended := make(chan sdktrace.ReadOnlySpan, 1)
			provider := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(endSignal{ended}))
			ln := fasthttputil.NewInmemoryListener()
			ln.SetLocalAddr(&net.TCPAddr{IP: net.ParseIP(local), Port: 8080})
			server := &fasthttp.Server{Handler: fasttimeoutotel.Middleware(fasttimeout.New(
				fasttimeoutotel.Handler(func(*fasthttp.RequestCtx) {}), fasttimeout.Config{Timeout: time.Minute}),
				provider.Tracer("test"))}
			served := make(chan error, 1)
			go func() { served <- server.Serve(ln) }()

			conn, err := ln.DialWithLocalAddr(&net.TCPAddr{IP: net.ParseIP(client), Port: 54321})
			require.NoError(t, err)
			_, err = conn.Write([]byte(tc.request))
			require.NoError(t, err)
			var resp fasthttp.Response
			require.NoError(t, resp.Read(bufio.NewReader(conn)))
			require.Equal(t, fasthttp.StatusOK, resp.StatusCode())
			require.NoError(t, conn.Close())

			span := endedSpan(t, ended, tc.name)
			got := spanAttrs(span)
			for _, key := range keys {
				value, ok := got[key]
				if assert.Equal(t, tc.want[key] != nil, ok, "%s set", key) && ok {
					assert.Equal(t, tc.want[key], value.AsInterface(), key)
				}
			}
			require.NoError(t, server.Shutdown())
			require.NoError(t, <-served)
			require.NoError(t, provider.Shutdown(context.Background()))
		})
	}
}
