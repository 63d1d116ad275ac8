//go:build !unix

package fasttimeout_test

// Without SIGSTOP there is no process stall test, and no child to serve it.
const stallServerEnv = "FASTTIMEOUT_STALL_SERVER"

func runStallServer(string) {}
