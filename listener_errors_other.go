//go:build !linux

package fasttimeout

// pendingAcceptErrors is empty outside Linux, whose accept alone returns a
// queued connection's network errors (see listener_errors_linux.go).
var pendingAcceptErrors [0]error
