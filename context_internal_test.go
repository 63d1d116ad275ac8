package fasttimeout

import (
	"testing"
	"unsafe"

	"github.com/stretchr/testify/assert"
)

// A request's context is allocated per request that asks for it: a field
// added or moved carelessly takes it to the next size class, 176 bytes.
func TestRequestContext_fits_in_160_bytes(t *testing.T) {
	if unsafe.Sizeof(uintptr(0)) != 8 {
		t.Skip("the size classes measured are those of 64-bit platforms")
	}
	assert.LessOrEqual(t, unsafe.Sizeof(requestContext{}), uintptr(160))
}
