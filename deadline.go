package fasttimeout

import (
	"time"

	"github.com/valyala/fasthttp"
)

// incomingBudget returns the time the caller gives this request, from the
// first deadline header present: grpc-timeout, X-Envoy-Expected-Rq-Timeout-Ms,
// then Request-Timeout. found reports that one was present and valid;
// malformed that one was present but not valid (and was ignored).
//
// TODO(gateway): parse the headers; this stub finds none.
func incomingBudget(h *fasthttp.RequestHeader) (budget time.Duration, found, malformed bool) {
	return 0, false, false
}
