//go:build !plan9

package fasttimeout

import "syscall"

// retriedAcceptErrors are the errors of accept that say the process or the
// system is out of a resource for now (descriptors, socket buffers,
// memory). Each passes, closing connections frees descriptors, but not at
// once: Accept waits before it tries again. They are matched with
// errors.Is, so the net package's wrapping (*net.OpError,
// *os.SyscallError) does not matter.
var retriedAcceptErrors = [...]error{
	syscall.EMFILE,  // the process's descriptor limit (RLIMIT_NOFILE)
	syscall.ENFILE,  // the system's descriptor limit
	syscall.ENOBUFS, // no socket buffers
	syscall.ENOMEM,  // no kernel memory
}

// abortedAcceptErrors say that the connection accept was taking went away
// before it was taken: the client's business, and the next connection may
// be fine, so Accept tries again at once (see pendingAcceptErrors).
var abortedAcceptErrors = [...]error{
	syscall.ECONNABORTED,
}
