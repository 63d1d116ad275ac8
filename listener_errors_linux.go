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

// linuxRetriedAcceptErrors are accept(2)'s other passing errors, waited out
// as retriedAcceptErrors: EPERM is a connection's (firewall rules forbid it),
// but a sandbox that forbids accept returns it on every call, and a wait
// does not spin on that. ESOCKTNOSUPPORT and EPROTONOSUPPORT, of the
// socket's type, would not pass: they are returned.
var linuxRetriedAcceptErrors = [...]error{
	syscall.ENOSR, // out of STREAMS resources
	syscall.EPERM,
}
