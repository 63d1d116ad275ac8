//go:build !plan9

package fasttimeout

import "syscall"

// retriedAcceptErrors are the errors of accept that say the process or the
// system is out of a resource for now (descriptors, socket buffers, memory)
// or that a connection went away before it was taken. Each passes: closing
// connections frees descriptors, and an aborted connection is the client's
// business. They are matched with errors.Is, so the net package's wrapping
// (*net.OpError, *os.SyscallError) does not matter.
var retriedAcceptErrors = [...]error{
	syscall.EMFILE,       // the process's descriptor limit (RLIMIT_NOFILE)
	syscall.ENFILE,       // the system's descriptor limit
	syscall.ENOBUFS,      // no socket buffers
	syscall.ENOMEM,       // no kernel memory
	syscall.ECONNABORTED, // the connection was reset before it was taken
}
