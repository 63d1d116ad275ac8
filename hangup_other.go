//go:build !linux

package fasttimeout

import "net"

// hangupSupported reports whether this system can watch for the peer's
// hang-up: only Linux can (EPOLLRDHUP); elsewhere a hang-up goes unnoticed.
const hangupSupported = false

// hangupHandle names one registration; none is ever issued here.
type hangupHandle struct{}

// hangupWatcher watches nothing on this system.
type hangupWatcher struct{}

// clientHangups is the process's watcher.
var clientHangups hangupWatcher

// add reports that conn cannot be watched here.
func (*hangupWatcher) add(net.Conn, func()) (hangupHandle, bool) { return hangupHandle{}, false }

// remove does nothing: add never registers anything here.
func (*hangupWatcher) remove(hangupHandle) {}

// peerGone reports that conn's peer is there: nothing is looked at here.
func peerGone(net.Conn) bool { return false }
