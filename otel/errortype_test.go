package fasttimeoutotel_test

import (
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/valyala/fasthttp"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/fasttimeout/fasttimeout"
	fasttimeoutotel "github.com/fasttimeout/fasttimeout/otel"
)

// A span whose request fasttimeout ended has the status Error, and the
// conventions then require error.type: the status code of a 5xx answer, or
// else fasttimeout's name for the end, as for a hang-up's 499. A timeout
// answered with a status under 500 (Config.StatusCode 408, say) had the
// status Error and no error.type.
func TestMiddlewareSetsErrorTypeOfEveryTimeout(t *testing.T) {
	t.Parallel()
	for _, mode := range []fasttimeout.Mode{fasttimeout.Racing, fasttimeout.Cooperative} {
		for _, tc := range []struct {
			status        int
			wantErrorType string
		}{
			{fasthttp.StatusGatewayTimeout, strconv.Itoa(fasthttp.StatusGatewayTimeout)},
			{fasthttp.StatusRequestTimeout, fasttimeoutotel.EventTimeout},
			{fasthttp.StatusOK, fasttimeoutotel.EventTimeout},
		} {
			t.Run(mode.String()+"/"+strconv.Itoa(tc.status), func(t *testing.T) {
				t.Parallel()
				// A second, for /wait to start before its deadline on a
				// loaded machine (a spent budget gets the same answer).
				tt := serveTraced(t, fasttimeout.Config{Timeout: time.Second, StatusCode: tc.status, Mode: mode},
					sdktrace.AlwaysSample())
				require.Equal(t, tc.status, tt.get(t, "/wait"))
				span := tt.nextEnded(t)
				assert.Equal(t, codes.Error, span.Status().Code)
				assert.Equal(t, fasttimeout.ErrTimeout.Error(), span.Status().Description)
				assert.Equal(t, int64(tc.status), spanAttrs(span)["http.response.status_code"].AsInt64())
				errorType, ok := spanAttrs(span)["error.type"]
				require.True(t, ok, "no error.type on a span of status Error")
				assert.Equal(t, tc.wantErrorType, errorType.AsString())
			})
		}
	}
}
