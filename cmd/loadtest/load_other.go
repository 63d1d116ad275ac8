//go:build !linux

package main

import "syscall"

// childAttr is nil: Pdeathsig is Linux's only, and a server child stays in
// this process's group, to get a terminal's Ctrl-C as before.
func childAttr() *syscall.SysProcAttr { return nil }
