//go:build !linux

package main

import "syscall"

// childAttr is nil: Pdeathsig is Linux's only, and a server child stays in
// this process's group, to get a terminal's Ctrl-C as before.
func childAttr() *syscall.SysProcAttr { return nil }

// suspendWithChildren does nothing: the server children, in this process's
// group, get a terminal's Ctrl-Z (SIGTSTP) and SIGCONT as it does.
func suspendWithChildren() {}
