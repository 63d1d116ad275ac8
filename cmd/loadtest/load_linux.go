package main

import (
	"os"
	"os/signal"
	"runtime"
	"syscall"
)

// childAttr puts a server child in a process group of its own, so that a
// terminal's Ctrl-C reaches only this process, which stops the children in
// order, and has the kernel kill it when the thread that started it exits
// (see startChildFiles), even if this process is killed hard (SIGKILL).
func childAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}

// suspendWithChildren makes a terminal's Ctrl-Z (SIGTSTP), which reaches
// only this process (see childAttr), stop the server children too, and the
// SIGCONT that resumes this process (the shell's fg or bg) resume them: a
// child left running while the load test is stopped goes on with the work
// in flight (an overload's queue, a storm's slow handlers) on the CPU the
// user meant to free. The children get SIGSTOP, which a process in a
// process group the kernel deems orphaned does not discard, as it does
// SIGTSTP.
func suspendWithChildren() {
	stops := make(chan os.Signal, 1)
	signal.Notify(stops, syscall.SIGTSTP)
	go func() {
		for range stops {
			suspend()
		}
	}()
}

// suspend stops the server children's process groups, then this process,
// and once it is resumed, resumes them. It holds children's lock
// throughout, so that no child is started or forgotten in between.
func suspend() {
	children.mu.Lock()
	defer children.mu.Unlock()
	for p := range children.procs {
		_ = syscall.Kill(-p.Pid, syscall.SIGSTOP)
	}
	// A signal sent to this thread stops it, with the whole process, on
	// its way back from the call, which returns once a SIGCONT has
	// resumed the process. Sent to the process (kill), it could be taken
	// by another thread, and this one go on to resume the children before
	// it is stopped.
	runtime.LockOSThread()
	_ = syscall.Tgkill(os.Getpid(), syscall.Gettid(), syscall.SIGSTOP)
	runtime.UnlockOSThread()
	for p := range children.procs {
		_ = syscall.Kill(-p.Pid, syscall.SIGCONT)
	}
}
