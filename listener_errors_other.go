//go:build !linux

package fasttimeout

// pendingAcceptErrors and linuxRetriedAcceptErrors are empty outside Linux,
// whose accept alone returns them (see listener_errors_linux.go).
var pendingAcceptErrors, linuxRetriedAcceptErrors [0]error
