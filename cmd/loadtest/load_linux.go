package main

import "syscall"

// childAttr puts a server child in a process group of its own, so that a
// terminal's Ctrl-C reaches only this process, which stops the children in
// order, and has the kernel kill it when the thread that started it exits
// (see startChildFiles), even if this process is killed hard (SIGKILL).
func childAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}
