package fasttimeout

import (
	"errors"
	"net"
	"os"
	"reflect"
	"sync"
	"syscall"
	"time"
	"unsafe"
	"weak"
)

// hangupSupported reports that this system can watch for the peer's hang-up.
const hangupSupported = true

// hangupEvents is what a registration asks for: never EPOLLIN, or a
// pipelined request waiting unread would look like a hang-up. EPOLLRDHUP is
// the peer's FIN (a half-close counts as gone, as in net/http); EPOLLHUP and
// EPOLLERR, reported anyway, the RST. Edge-triggered (EPOLLET, negative in
// package syscall) and registered once per connection: a keep-alive
// connection's later requests are watched without a system call.
const hangupEvents uint32 = syscall.EPOLLRDHUP | syscall.EPOLLHUP | syscall.EPOLLERR | 1<<31

// hangupIdleWait bounds each wait for events: after a whole wait with
// nothing watched the watcher goroutine exits, so an idle process keeps none.
// A wake-up per wait while busy costs nothing measurable; no eventfd needed.
const hangupIdleWait = 250 * time.Millisecond

// minSweep is the fewest registered connections at which a registration sweeps.
const minSweep = 1024

// hangupHandle names one watch: a slot index and the watch's number on that
// slot, from 1, so that the zero handle is never issued.
type hangupHandle struct {
	slot uint32
	seq  uint32
}

// hangupSlot is one connection's registration in the epoll set, from its
// first watch until it is garbage (see sweep) or the watcher stops. Its
// events carry its index and gen, dropped once the slot is freed: a closed
// descriptor's reused number never reaches a newer registration.
type hangupSlot struct {
	conn   weak.Pointer[byte] // the connection served; conns has its address
	gen    uint32             // advanced each time the slot is freed
	seq    uint32             // the number of the slot's latest watch
	onGone func()             // the watch's callback; nil when no watch is on
	pin    *byte              // conn, held while a watch is on, so that a sweep never frees a watched slot
	armed  bool               // a watch is on and its callback has not run
	gone   bool               // the peer hung up: the state stays, its edge came once
	ev     syscall.EpollEvent
}

// hangupWatcher watches connections for their peer's hang-up with one epoll
// set and one goroutine waiting on it, started by the first watch and gone
// about hangupIdleWait after the last is removed; the set keeps its
// registrations, and events wait there for its next start. The zero value is
// ready to use. mu guards all and is held while a callback runs: that is
// what makes remove final.
type hangupWatcher struct {
	mu      sync.Mutex
	running bool // the goroutine is alive
	epfd    int  // the epoll set, once conns is made
	// The epoll set as a file in Go's network poller, which keeps it open.
	epoll *os.File
	slots []*hangupSlot
	free  []uint32
	// Registered connections' slots by address; nil until the set exists.
	conns   map[uintptr]uint32
	sweepAt int // len(conns) at which to sweep
	active  int // watches not yet removed
}

// clientHangups is the process's watcher.
var clientHangups hangupWatcher

// add watches conn until remove: when its peer closes (FIN, a half-close
// included) or resets it, onGone is called once, on the watcher's goroutine
// with its lock held, so it must be quick, must not block and must not call
// add or remove (a deadlock). Pass a func value built once (per pooled call,
// say), not a closure per request.
//
// A connection's first watch registers it with one system call; later ones
// cost a map look-up. A peer already gone is reported at once. A second add
// of a connection replaces its watch. The result is false, and nothing
// watched, when conn has no descriptor (in-memory), a first watch finds it
// closed, or the system refuses. A registered connection this process
// closes leaves the epoll set: its watch never fires.
func (w *hangupWatcher) add(conn net.Conn, onGone func()) (hangupHandle, bool) {
	sock, p, ok := socketOf(conn)
	if !ok || onGone == nil {
		return hangupHandle{}, false
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.running && !w.start() {
		return hangupHandle{}, false
	}
	addr := uintptr(unsafe.Pointer(p))
	idx, known := w.conns[addr]
	if known && w.slots[idx].conn.Value() != p {
		// A connection that is garbage had this address.
		delete(w.conns, addr)
		w.freeSlot(idx)
		known = false
	}
	if !known {
		if idx, ok = w.register(sock, p, addr); !ok {
			return hangupHandle{}, false
		}
	}
	s := w.slots[idx]
	// The edge of a hang-up came while no watch was on, or fired an
	// earlier one: EPOLL_CTL_MOD makes the kernel report it again.
	if s.gone && ctl(sock, w.epfd, syscall.EPOLL_CTL_MOD, &s.ev) != nil {
		return hangupHandle{}, false
	}
	if s.onGone == nil {
		w.active++
	}
	if s.seq++; s.seq == 0 {
		s.seq = 1 // 0 stays the never-issued handle's
	}
	s.onGone, s.armed, s.pin = onGone, true, p
	return hangupHandle{slot: idx, seq: s.seq}, true
}

// register adds a connection seen for the first time to the epoll set and
// gives it a slot; w.mu is held.
func (w *hangupWatcher) register(sock syscall.Conn, p *byte, addr uintptr) (uint32, bool) {
	if len(w.conns) >= w.sweepAt {
		w.sweep()
	}
	idx := w.allocSlot()
	s := w.slots[idx]
	s.ev = syscall.EpollEvent{Events: hangupEvents, Fd: int32(idx), Pad: int32(s.gen)}
	err := ctl(sock, w.epfd, syscall.EPOLL_CTL_ADD, &s.ev)
	if errors.Is(err, syscall.EEXIST) {
		// Registered under another key (a wrapper that is not the same
		// object each time): this slot takes the events over.
		err = ctl(sock, w.epfd, syscall.EPOLL_CTL_MOD, &s.ev)
	}
	if err != nil {
		w.freeSlot(idx)
		return 0, false
	}
	s.conn = weak.Make(p)
	w.conns[addr] = idx
	return idx, true
}

// ctl runs epoll_ctl for sock's descriptor (see withFD).
func ctl(sock syscall.Conn, epfd, op int, ev *syscall.EpollEvent) error {
	var ctlErr error
	if err := withFD(sock, func(fd uintptr) { ctlErr = syscall.EpollCtl(epfd, op, int(fd), ev) }); err != nil {
		return err
	}
	return ctlErr
}

// withFD runs f with sock's descriptor inside Control, where it cannot be
// closed: the number f is given is this connection's.
func withFD(sock syscall.Conn, f func(fd uintptr)) error {
	rc, err := sock.SyscallConn()
	if err != nil {
		return err
	}
	return rc.Control(f)
}

// remove ends the watch h: when it returns, its callback has completed or
// will never be called, even if the hang-up was being reported meanwhile.
// It does nothing for the zero handle or a watch removed or replaced since,
// is safe after the connection closed, and leaves it registered.
func (w *hangupWatcher) remove(h hangupHandle) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if int(h.slot) >= len(w.slots) {
		return
	}
	s := w.slots[h.slot]
	if h.seq == 0 || s.seq != h.seq || s.onGone == nil {
		return // never issued, removed already, or replaced
	}
	s.onGone, s.armed, s.pin = nil, false, nil
	w.active--
}

// sweep frees the slots of garbage connections, whose closed descriptor
// left the epoll set. Run once the registered connections have doubled since
// the last, it costs a constant per registration. w.mu is held.
func (w *hangupWatcher) sweep() {
	for addr, idx := range w.conns {
		if w.slots[idx].conn.Value() == nil {
			delete(w.conns, addr)
			w.freeSlot(idx)
		}
	}
	w.sweepAt = max(2*len(w.conns), minSweep)
}

// start starts the goroutine, and the epoll set the first time; w.mu is held.
func (w *hangupWatcher) start() bool {
	if w.conns == nil && !w.openEpoll() {
		return false
	}
	w.running = true
	go w.run(w.epoll)
	return true
}

// openEpoll creates the watcher's epoll set in Go's network poller (it is
// readable while it has events), so the watcher waits parked, not in a
// blocking epoll_wait: that keeps its P until the runtime's monitor takes it
// back, up to 10 ms under load, while on one P every request waits. It keeps
// the descriptor too: the file's Fd method would put it back in blocking
// mode. It reports whether it made the set; w.mu is held.
func (w *hangupWatcher) openEpoll() bool {
	epfd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		return false
	}
	if err := syscall.SetNonblock(epfd, true); err != nil {
		syscall.Close(epfd)
		return false
	}
	// A non-blocking descriptor goes to the network poller.
	f := os.NewFile(uintptr(epfd), "epoll")
	if err := f.SetReadDeadline(time.Time{}); err != nil { // fails if the poller refused it
		f.Close()
		return false
	}
	w.epoll, w.epfd, w.conns = f, epfd, make(map[uintptr]uint32)
	return true
}

// allocSlot returns a free slot's index, its generation already advanced
// past every event issued for it (see freeSlot); w.mu is held.
func (w *hangupWatcher) allocSlot() uint32 {
	if n := len(w.free); n > 0 {
		idx := w.free[n-1]
		w.free = w.free[:n-1]
		return idx
	}
	w.slots = append(w.slots, &hangupSlot{})
	return uint32(len(w.slots) - 1)
}

// freeSlot makes the slot reusable (w.mu held); its gen moves on, so the
// events issued for it are stale from now on, and its seq runs on, so its
// handles stay dead.
func (w *hangupWatcher) freeSlot(idx uint32) {
	s := w.slots[idx]
	s.conn, s.onGone, s.pin, s.armed, s.gone = weak.Pointer[byte]{}, nil, nil, false, false
	s.gen++
	w.free = append(w.free, idx)
}

// run waits for hang-ups until a whole wait passes with nothing watched,
// then sweeps and exits.
func (w *hangupWatcher) run(epoll *os.File) {
	rc, _ := epoll.SyscallConn() // fails only for a nil *os.File
	var events [128]syscall.EpollEvent
	for {
		var n int
		err := epoll.SetReadDeadline(time.Now().Add(hangupIdleWait))
		if err == nil {
			readErr := rc.Read(func(fd uintptr) bool {
				n, err = syscall.EpollWait(int(fd), events[:], 0)
				if errors.Is(err, syscall.EINTR) {
					n, err = 0, nil
				}
				// No event yet: park until the set is readable.
				return n > 0 || err != nil
			})
			// Past the deadline, a whole wait without events: n is 0, as
			// Read fails only before a call of the func or after one that
			// returned false.
			if readErr != nil && !errors.Is(readErr, os.ErrDeadlineExceeded) {
				err = readErr
			}
		}
		if err != nil {
			// Not expected (the set is ours and open): treat it as a
			// timeout, after a pause so that it cannot spin.
			n = 0
			time.Sleep(10 * time.Millisecond)
		}
		w.mu.Lock()
		for i := range events[:n] {
			w.dispatch(uint32(events[i].Fd), uint32(events[i].Pad))
		}
		if n == 0 && w.active == 0 {
			w.running = false
			w.sweep()
			w.mu.Unlock()
			return
		}
		w.mu.Unlock()
	}
}

// dispatch notes the hang-up an event reports, if its slot still serves the
// connection registered, and calls the watch's callback once; w.mu is held.
// The event's index is a slot's: only register puts one in the set, and
// slots never shrinks.
func (w *hangupWatcher) dispatch(idx, gen uint32) {
	s := w.slots[idx]
	if s.gen != gen {
		return // stale: the slot was freed, and may serve a newer connection
	}
	s.gone = true
	if s.armed {
		s.armed = false
		s.onGone()
	}
}

// peerGone reports whether conn's peer has closed (a half-close counts) or
// reset it, by one look at its socket for the events the watch asks for,
// neither blocking nor consuming: a FIN counts even behind bytes pending (a
// TLS client's close_notify); bytes alone (a pipelined request), none, or
// no descriptor are a live peer.
func peerGone(conn net.Conn) bool {
	sock, _, ok := socketOf(conn)
	if !ok {
		return false
	}
	l := peerLooks.Get().(*peerLook)
	defer peerLooks.Put(l)
	// Reset first: a pooled look holds an earlier one's result, and a
	// RawConn's Control may return nil without running l.poll.
	l.gone = false
	_ = withFD(sock, l.poll)
	return l.gone
}

// peerLook is one look of peerGone's at a descriptor. A func given to
// Control, an interface's method, escapes: a closure per look would cost two
// allocations, itself and the result it writes, where a pooled peerLook's
// method value, made once, costs none. SyscallConn's RawConn remains, one a
// look.
type peerLook struct {
	gone bool
	poll func(fd uintptr) // look, bound to this peerLook
}

// peerLooks holds the peerLooks not in use.
var peerLooks = sync.Pool{New: func() any {
	l := new(peerLook)
	l.poll = l.look
	return l
}}

// look polls fd once, without waiting, for the events the watch asks for.
func (l *peerLook) look(fd uintptr) {
	p := struct { // struct pollfd
		fd              int32
		events, revents int16
	}{fd: int32(fd), events: int16(hangupEvents & 0xffff)} // less EPOLLET
	var ts syscall.Timespec // no wait
	n, _, errno := syscall.Syscall6(syscall.SYS_PPOLL, uintptr(unsafe.Pointer(&p)), 1, uintptr(unsafe.Pointer(&ts)), 0, 0, 0)
	l.gone = errno == 0 && n == 1
}

// socketOf finds the socket under conn and the first byte of the object
// holding it, which names the connection while it lives, unwrapping NetConn()
// (tls.Conn, listener wrappers), Raw() (github.com/pires/go-proxyproto, for
// the PROXY protocol) and fasthttp's MaxConnsPerIP wrapper (embeddedConn)
// down to a pointer implementing syscall.Conn, at a bounded depth in case a
// wrapper returns itself.
func socketOf(conn net.Conn) (syscall.Conn, *byte, bool) {
	for range 16 {
		switch c := conn.(type) {
		case syscall.Conn:
			v := reflect.ValueOf(c)
			if v.Kind() != reflect.Pointer || v.IsNil() {
				return nil, nil, false
			}
			return c, (*byte)(v.UnsafePointer()), true
		case interface{ NetConn() net.Conn }:
			conn = c.NetConn()
		case interface{ Raw() net.Conn }:
			conn = c.Raw()
		default: // nil too, which embeds nothing
			var ok bool
			if conn, ok = embeddedConn(conn); !ok {
				return nil, nil, false
			}
		}
	}
	return nil, nil, false
}

// embeddedConn returns the net.Conn that conn, a struct or a pointer to one,
// embeds as its field Conn, read by reflect without unsafe: fasthttp's
// MaxConnsPerIP wrapper (perIPConn) hides syscall.Conn and NetConn so (its
// TLS twin embeds *tls.Conn, with NetConn); the MaxConnsPerIP test notices
// if that changes. A listener's wrapper may embed it by value too: the
// connection inside, not the copy, is then what names it.
func embeddedConn(conn net.Conn) (net.Conn, bool) {
	v := reflect.ValueOf(conn)
	if v.Kind() == reflect.Pointer && !v.IsNil() {
		v = v.Elem()
	}
	if v.Kind() != reflect.Struct {
		return nil, false
	}
	f, ok := v.Type().FieldByName("Conn")
	if !ok || !f.Anonymous || f.Type != reflect.TypeFor[net.Conn]() || len(f.Index) != 1 {
		return nil, false
	}
	inner, _ := v.Field(f.Index[0]).Interface().(net.Conn)
	return inner, inner != nil
}
