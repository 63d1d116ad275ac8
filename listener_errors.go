//go:build !plan9

package fasttimeout

import "syscall"

// retriedAcceptErrors say the process or system is out of a resource for
// now (descriptors, socket buffers, memory), or that a listener the poller
// does not watch has no connection yet: it passes, but not at once, so
// Accept waits before it tries again. Matched with errors.Is, through the
// net package's wrapping. net/http also retries any error whose Temporary
// method says so, a listener's deadline included; RetryListener returns
// those it does not list (fasthttp waits a deadline out itself).
var retriedAcceptErrors = [...]error{
	syscall.EMFILE,  // the process's descriptor limit (RLIMIT_NOFILE)
	syscall.ENFILE,  // the system's descriptor limit
	syscall.ENOBUFS, // no socket buffers
	syscall.ENOMEM,  // no kernel memory
	syscall.EAGAIN,  // no connection yet, from a listener the poller does not watch
}

// abortedAcceptErrors say the connection accept was taking went away first
// (aborted, reset, or timed out in the listen queue), or a signal cut the
// call short: nothing to wait for, so Accept tries again at once (see
// pendingAcceptErrors).
var abortedAcceptErrors = [...]error{
	syscall.ECONNABORTED,
	syscall.ECONNRESET,
	syscall.ETIMEDOUT,
	syscall.EINTR,
}
