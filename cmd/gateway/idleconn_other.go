//go:build !(linux || darwin || freebsd || netbsd || openbsd || dragonfly)

package main

import "net"

// idleConnUsable reports true: there is no non-blocking peek here, and an
// upstream's close of an idle connection is found, as before, when the
// request on it gets no answer.
func idleConnUsable(net.Conn) bool { return true }
