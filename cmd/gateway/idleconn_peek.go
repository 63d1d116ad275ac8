//go:build linux || darwin || freebsd || netbsd || openbsd || dragonfly

package main

import (
	"errors"
	"net"
	"syscall"
)

// idleConnUsable reports whether conn, a connection idle since its last
// response, can carry a request: the upstream has neither closed it (a
// peek reads end of file or an error) nor sent bytes no request asked for
// (a peek reads some), which would be read as the answer to the next
// request. The peek neither waits nor takes anything from the socket.
func idleConnUsable(conn net.Conn) bool {
	sc, ok := conn.(syscall.Conn)
	if !ok {
		return true
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return true
	}
	var (
		peekErr error
		buf     [1]byte
	)
	// Control, not Read: Read would first fail on the read deadline of
	// the last response, long past.
	err = rc.Control(func(fd uintptr) {
		_, _, peekErr = syscall.Recvfrom(int(fd), buf[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
	})
	if err != nil {
		return false // closed
	}
	if peekErr != nil {
		return errors.Is(peekErr, syscall.EAGAIN) || errors.Is(peekErr, syscall.EWOULDBLOCK) || errors.Is(peekErr, syscall.EINTR)
	}
	return false // end of file, or unasked bytes
}
