//go:build !plan9

package fasttimeout

import "syscall"

// retriedAcceptErrors say the process or system is out of a resource for
// now (descriptors, socket buffers, memory): it passes, but not at once, so
// Accept waits before it tries again. Matched with errors.Is, through the
// net package's wrapping.
var retriedAcceptErrors = [...]error{
	syscall.EMFILE,  // the process's descriptor limit (RLIMIT_NOFILE)
	syscall.ENFILE,  // the system's descriptor limit
	syscall.ENOBUFS, // no socket buffers
	syscall.ENOMEM,  // no kernel memory
}

// abortedAcceptErrors say the connection accept was taking went away first:
// Accept tries again at once (see pendingAcceptErrors).
var abortedAcceptErrors = [...]error{
	syscall.ECONNABORTED,
}
