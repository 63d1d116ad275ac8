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

// The addresses of the connection requestSpan sends its request on.
const (
	peerAddress  = "192.0.2.4" // the client's
	localAddress = "192.0.2.80"
)

// requestSpan sends request, as is, to a server with Middleware, over an
// in-memory connection from peerAddress to localAddress port 8080, and
// returns its span once it ended.
func requestSpan(t *testing.T, request string) sdktrace.ReadOnlySpan {
	t.Helper()
	ended := make(chan sdktrace.ReadOnlySpan, 1)
	provider := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(endSignal{ended}))
	ln := fasthttputil.NewInmemoryListener()
	ln.SetLocalAddr(&net.TCPAddr{IP: net.ParseIP(localAddress), Port: 8080})
	server := &fasthttp.Server{Handler: fasttimeoutotel.Middleware(fasttimeout.New(
		fasttimeoutotel.Handler(func(*fasthttp.RequestCtx) {}), fasttimeout.Config{Timeout: time.Minute}),
		provider.Tracer("test"))}
	served := make(chan error, 1)
	go func() { served <- server.Serve(ln) }()

	conn, err := ln.DialWithLocalAddr(&net.TCPAddr{IP: net.ParseIP(peerAddress), Port: 54321})
	require.NoError(t, err)
	_, err = conn.Write([]byte(request))
	require.NoError(t, err)
	var resp fasthttp.Response
	require.NoError(t, resp.Read(bufio.NewReader(conn)))
	require.Equal(t, fasthttp.StatusOK, resp.StatusCode())
	require.NoError(t, conn.Close())

	span := endedSpan(t, ended, request)
	require.NoError(t, server.Shutdown())
	require.NoError(t, <-served)
	require.NoError(t, provider.Shutdown(context.Background()))
	return span
}

// Middleware's span has the request's attributes that the HTTP conventions
// recommend for a server span: url.query if the request has one,
// server.address and server.port from the request target's host (the Host
// header, or an absolute-form target's) or else the local address,
// client.address the connection's peer, whatever X-Forwarded-For says
// (anyone can send it), and user_agent.original.
func TestMiddlewareRecordsTheRequestsAttributes(t *testing.T) {
	t.Parallel()
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
			"client.address": peerAddress, "user_agent.original": "probe/1.0"},
	}, {
		name:    "no_query_no_port_no_user_agent",
		request: "GET /report HTTP/1.1\r\nHost: app\r\n\r\n",
		want:    map[attribute.Key]any{"server.address": "app", "client.address": peerAddress},
	}, {
		name:    "an_IPv6_host",
		request: "GET /report HTTP/1.1\r\nHost: [2001:db8::1]:8443\r\n\r\n",
		want:    map[attribute.Key]any{"server.address": "2001:db8::1", "server.port": int64(8443), "client.address": peerAddress},
	}, {
		name:    "an_absolute_form_target",
		request: "GET http://example.com:9090/report?x=1 HTTP/1.1\r\nHost: app\r\n\r\n",
		want: map[attribute.Key]any{"url.query": "x=1", "server.address": "example.com", "server.port": int64(9090),
			"client.address": peerAddress},
	}, {
		name:    "no_host",
		request: "GET /report HTTP/1.0\r\n\r\n",
		want:    map[attribute.Key]any{"server.address": localAddress, "server.port": int64(8080), "client.address": peerAddress},
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got := spanAttrs(requestSpan(t, tc.request))
			for _, key := range keys {
				value, ok := got[key]
				if assert.Equal(t, tc.want[key] != nil, ok, "%s set", key) && ok {
					assert.Equal(t, tc.want[key], value.AsInterface(), key)
				}
			}
		})
	}
}

// url.query shows no value of a query key the HTTP conventions call
// sensitive (signatures and credentials of presigned URLs): each one is
// REDACTED, its key kept as sent, whatever the key's escaping, as the
// handler would read it under that name. Keys that only look alike, and
// values with nothing to hide, are left as they are.
func TestMiddlewareRedactsSensitiveQueryValues(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, query, want string
	}{{
		name:  "none_sensitive",
		query: "week=12&team=a&q=x%3Dy",
		want:  "week=12&team=a&q=x%3Dy",
	}, {
		name:  "aws_signature_version_4",
		query: "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAEXAMPLE%2F20261207%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20261207T000000Z&X-Amz-Expires=60&X-Amz-Security-Token=FwoGZXIvYXdzEXAMPLE&X-Amz-SignedHeaders=host&X-Amz-Signature=fe5f80f77d5fa3beca038a248ff027d0",
		want:  "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=REDACTED&X-Amz-Date=20261207T000000Z&X-Amz-Expires=60&X-Amz-Security-Token=REDACTED&X-Amz-SignedHeaders=host&X-Amz-Signature=REDACTED",
	}, {
		name:  "aws_signature_version_2",
		query: "AWSAccessKeyId=AKIAEXAMPLE&Expires=1796601600&Signature=vjbyPxybdZaNmGa%2ByT272YEAiv4%3D",
		want:  "AWSAccessKeyId=REDACTED&Expires=1796601600&Signature=REDACTED",
	}, {
		name:  "azure_and_google",
		query: "sv=2022-11-02&sig=abc%2Bdef%3D&X-Goog-Date=20261207T000000Z&X-Goog-Signature=0a1b2c",
		want:  "sv=2022-11-02&sig=REDACTED&X-Goog-Date=20261207T000000Z&X-Goog-Signature=REDACTED",
	}, {
		name:  "value_with_an_equals_sign",
		query: "sig=a=b&next=1",
		want:  "sig=REDACTED&next=1",
	}, {
		name:  "keys_that_only_look_alike",
		query: "Sig=1&SIG=2&signature=3&sigs=4&xsig=5&sig_=6&X-Goog-Signature2=7&x-goog-signature=8&X-Amz-Signature-=9&q=sig%3D10&q=sig=11",
		want:  "Sig=1&SIG=2&signature=3&sigs=4&xsig=5&sig_=6&X-Goog-Signature2=7&x-goog-signature=8&X-Amz-Signature-=9&q=sig%3D10&q=sig=11",
	}, {
		name:  "repeated_keys",
		query: "sig=a&x=1&sig=b&sig=c",
		want:  "sig=REDACTED&x=1&sig=REDACTED&sig=REDACTED",
	}, {
		name:  "empty_values_and_no_value",
		query: "sig=&Signature&x=&&X-Amz-Signature=s&",
		want:  "sig=&Signature&x=&&X-Amz-Signature=REDACTED&",
	}, {
		name:  "escaped_keys",
		query: "%73ig=a&si%67=b&X%2DGoog%2dSignature=c&%53ignature=d&X-Amz%2DCredential=e",
		want:  "%73ig=REDACTED&si%67=REDACTED&X%2DGoog%2dSignature=REDACTED&%53ignature=REDACTED&X-Amz%2DCredential=REDACTED",
	}, {
		// Not sig once decoded: a space, a twice-escaped s, a bad escape.
		name:  "escaped_keys_that_only_look_alike",
		query: "sig+=a&%2573ig=b&sig%=c&sig%2=d&%7sig=e&sig%00=f",
		want:  "sig+=a&%2573ig=b&sig%=c&sig%2=d&%7sig=e&sig%00=f",
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			span := requestSpan(t, "GET /report?"+tc.query+" HTTP/1.1\r\nHost: app\r\n\r\n")
			assert.Equal(t, tc.want, spanAttrs(span)["url.query"].AsString())
		})
	}
}
