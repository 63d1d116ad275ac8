package fasttimeoutotel

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/fasttimeout/fasttimeout"
	"github.com/stretchr/testify/assert"
)

func TestEndOfNamesTheCause(t *testing.T) {
	t.Parallel()
	other := errors.New("some other cause")
	tests := []struct {
		cause error
		event string
	}{
		{fasttimeout.ErrTimeout, EventTimeout},
		{fasttimeout.ErrShutdown, EventShutdown},
		{fasttimeout.ErrClientGone, EventClientGone},
		{other, EventCancelled},
		{context.Canceled, EventCancelled},
	}
	for _, tt := range tests {
		t.Run(tt.event+"/"+tt.cause.Error(), func(t *testing.T) {
			t.Parallel()
			c, cancel := context.WithCancelCause(context.Background())
			cancel(tt.cause)
			at := time.Now()
			e := endOf(c, at)
			assert.Equal(t, tt.event, e.event)
			assert.Equal(t, tt.cause, e.cause)
			attrs := e.attributes(time.Second, at.Add(time.Millisecond))
			assert.Equal(t, tt.cause.Error(), attrs[0].Value.AsString())
			assert.Equal(t, 1.0, attrs[1].Value.AsFloat64())
			assert.InDelta(t, 0.001, attrs[2].Value.AsFloat64(), 1e-9, "measured from the end without a deadline")
		})
	}
}
