package fasttimeout

import "syscall"

// pendingAcceptErrors are the network errors Linux's accept returns for a
// connection that failed in the listen queue: accept(2) says to "treat them
// like EAGAIN by retrying". The net package retries ECONNABORTED itself but
// returns these, and fasthttp's Serve would end at the first.
var pendingAcceptErrors = [...]error{
	syscall.ENETDOWN,
	syscall.EPROTO,
	syscall.ENOPROTOOPT,
	syscall.EHOSTDOWN,
	syscall.ENONET,
	syscall.EHOSTUNREACH,
	syscall.EOPNOTSUPP,
	syscall.ENETUNREACH,
}
