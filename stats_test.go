package fasttimeout_test

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/valyala/fasthttp"

	"github.com/fasttimeout/fasttimeout"
)

func TestStats_String_is_JSON_for_expvar(t *testing.T) {
	t.Parallel()
	stats := new(fasttimeout.Stats)
	s := serve(t, fasttimeout.New(func(*fasthttp.RequestCtx) {}, fasttimeout.Config{Stats: stats}))
	do(t, s, "GET", "/")
	do(t, s, "GET", "/")
	assert.JSONEq(t, `{"requests":2,"in_flight":0,"timeouts":0,"late_running":0,"late_finished":0,"panics":0,"shed":0,"bad_deadline_headers":0,"spent_budgets":0,"client_gone":0}`, stats.String())
}
