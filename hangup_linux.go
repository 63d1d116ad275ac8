package fasttimeout

import (
	"errors"
	"net"
	"reflect"
	"sync"
	"syscall"
	"time"
)

// hangupSupported reports whether this system can watch connections for the
// peer's hang-up.
const hangupSupported = true

// hangupEvents is what a registration asks for. Never EPOLLIN: a pipelined
// request waiting unread in the socket must not look like a hang-up.
// EPOLLRDHUP is the peer's FIN (a half-close counts as gone, as in net/http);
// EPOLLHUP and EPOLLERR, reported by the kernel anyway, are the RST.
// One-shot, so a connection reports at most once per registration.
const hangupEvents = syscall.EPOLLRDHUP | syscall.EPOLLHUP | syscall.EPOLLERR | syscall.EPOLLONESHOT

// hangupIdleWait bounds each EpollWait: when nothing has been watched for a
// whole wait, the watcher goroutine closes the epoll set and exits, so an
// idle process keeps neither (and goleak sees nothing left). A wake-up per
// wait while busy costs nothing measurable; no eventfd is needed.
const hangupIdleWait = 250 // milliseconds

// hangupHandle names one registration: a slot index and the slot's
// generation at registration time. Both travel in the 64-bit epoll data, so
// an event is delivered only if its slot still holds that generation: a
// stale event (a closed descriptor whose number is reused, a registration
// removed while its event was queued) can never reach a newer registration.
// The zero handle is never issued (generations start at 1), so removing it
// does nothing.
type hangupHandle struct {
	slot uint32
	gen  uint32
}

// hangupSlot is one registration. Slots are allocated once and reused
// through a free list; each keeps one pre-built Control function, so that
// registering and removing do not allocate a closure.
type hangupSlot struct {
	gen    uint32
	armed  bool // registered and not yet fired
	rc     syscall.RawConn
	onGone func()

	// Arguments and result of ctl, which runs inside rc.Control with the
	// watcher's lock held.
	epfd  int
	op    int
	ev    syscall.EpollEvent
	err   error
	ctlFn func(fd uintptr)
}

// hangupWatcher watches connections for their peer's hang-up with one epoll
// set and one goroutine blocked in EpollWait, started by the first
// registration and gone about hangupIdleWait after the last one is removed.
// The zero value is ready to use. All state is guarded by mu, held also
// while a callback runs: that is what makes remove final.
type hangupWatcher struct {
	mu      sync.Mutex
	running bool // the goroutine is alive and epfd is open
	epfd    int
	slots   []*hangupSlot
	free    []uint32
	active  int // registrations not yet removed
}

// clientHangups is the process's watcher.
var clientHangups hangupWatcher

// add watches conn until remove: when its peer closes (FIN, including a
// half-close) or resets the connection, onGone is called once, on the
// watcher's goroutine, with the watcher's lock held: it must be quick, must
// not block and must not call add or remove (it would deadlock). Pass a
// func value built once (per pooled call, say), not a new closure per
// request, to keep add free of allocations beyond the one net makes for
// SyscallConn.
//
// A peer already gone when add is called is reported at once. A connection
// must have at most one registration at a time. The result is false, and
// nothing is watched, when conn has no descriptor (in-memory connections),
// is already closed, or the system refuses.
func (w *hangupWatcher) add(conn net.Conn, onGone func()) (hangupHandle, bool) {
	rc, ok := rawConnOf(conn)
	if !ok || onGone == nil {
		return hangupHandle{}, false
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.running && !w.start() {
		return hangupHandle{}, false
	}
	idx := w.allocSlot()
	s := w.slots[idx]
	s.ev = syscall.EpollEvent{Events: hangupEvents, Fd: int32(idx), Pad: int32(s.gen)}
	// Inside Control the descriptor cannot be closed, so the number that
	// is registered is this connection's and no one else's. The
	// connection's previous request may have left its registration in the
	// set (remove does not delete it): re-arm that one with
	// EPOLL_CTL_MOD, one system call per watched keep-alive request; a new
	// connection has none, and gets EPOLL_CTL_ADD.
	s.op = syscall.EPOLL_CTL_MOD
	err := rc.Control(s.ctlFn)
	if err == nil && errors.Is(s.err, syscall.ENOENT) {
		s.op, s.err = syscall.EPOLL_CTL_ADD, nil
		err = rc.Control(s.ctlFn)
	}
	if err != nil || s.err != nil {
		s.err = nil
		w.freeSlot(idx)
		return hangupHandle{}, false
	}
	s.rc, s.onGone, s.armed = rc, onGone, true
	w.active++
	return hangupHandle{slot: idx, gen: s.gen}, true
}

// remove ends the registration h. When it returns, onGone has either
// completed or will never be called, even if the hang-up was being reported
// at that moment. It is idempotent, does nothing for the zero handle, and is
// safe after the connection was closed (closing the descriptor took it out
// of the epoll set already; the descriptor number, maybe reused since, is
// not touched then).
func (w *hangupWatcher) remove(h hangupHandle) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if int(h.slot) >= len(w.slots) {
		return
	}
	s := w.slots[h.slot]
	if h.gen == 0 || s.gen != h.gen || s.rc == nil {
		return // never issued, or removed already
	}
	// No EPOLL_CTL_DEL, which would be a second system call per watched
	// request: the registration stays in the set, but its slot's
	// generation moves on (freeSlot, allocSlot), so an event it still
	// reports is dropped by dispatch. The connection's next registration
	// re-arms it (add), and the kernel removes it when the connection is
	// closed, or with the set when the watcher stops.
	w.freeSlot(h.slot)
	w.active--
}

// start creates the epoll set and the goroutine; w.mu is held.
func (w *hangupWatcher) start() bool {
	epfd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		return false
	}
	w.epfd, w.running = epfd, true
	go w.run(epfd)
	return true
}

// allocSlot returns a free slot's index, its generation already advanced
// past every handle issued for it; w.mu is held.
func (w *hangupWatcher) allocSlot() uint32 {
	var idx uint32
	if n := len(w.free); n > 0 {
		idx = w.free[n-1]
		w.free = w.free[:n-1]
	} else {
		idx = uint32(len(w.slots))
		s := &hangupSlot{}
		s.ctlFn = func(fd uintptr) { s.err = syscall.EpollCtl(s.epfd, s.op, int(fd), &s.ev) }
		w.slots = append(w.slots, s)
	}
	s := w.slots[idx]
	s.epfd = w.epfd
	if s.gen++; s.gen == 0 {
		s.gen = 1 // 0 stays the never-issued handle's
	}
	return idx
}

// freeSlot makes the slot reusable; its generation moves on at the next
// allocation, so its old handle and events stay dead. w.mu is held.
func (w *hangupWatcher) freeSlot(idx uint32) {
	s := w.slots[idx]
	s.rc, s.onGone, s.armed = nil, nil, false
	w.free = append(w.free, idx)
}

// run waits for hang-ups on epfd until a whole wait passes with nothing
// watched, then closes epfd and exits.
func (w *hangupWatcher) run(epfd int) {
	var events [128]syscall.EpollEvent
	for {
		n, err := syscall.EpollWait(epfd, events[:], hangupIdleWait)
		if err != nil {
			if errors.Is(err, syscall.EINTR) {
				continue
			}
			// Not expected (epfd is ours and open): treat it as a
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
			syscall.Close(epfd)
			w.mu.Unlock()
			return
		}
		w.mu.Unlock()
	}
}

// dispatch calls the callback of the registration an event names, if it is
// still registered and has not fired; w.mu is held.
func (w *hangupWatcher) dispatch(idx, gen uint32) {
	if int(idx) >= len(w.slots) {
		return
	}
	s := w.slots[idx]
	if s.gen != gen || !s.armed {
		return // stale: removed, or the slot serves a newer registration
	}
	s.armed = false
	s.onGone()
}

var netConnType = reflect.TypeFor[net.Conn]()

// rawConnOf finds the socket under conn: it unwraps NetConn() (tls.Conn,
// listener wrappers) and fasthttp's MaxConnsPerIP wrapper (see
// embeddedConn) as long as it can, then asks for the syscall.RawConn.
// The depth is bounded in case a wrapper returns itself.
func rawConnOf(conn net.Conn) (syscall.RawConn, bool) {
	for range 16 {
		if conn == nil {
			return nil, false
		}
		if sc, ok := conn.(syscall.Conn); ok {
			rc, err := sc.SyscallConn()
			return rc, err == nil && rc != nil
		}
		if nc, ok := conn.(interface{ NetConn() net.Conn }); ok {
			conn = nc.NetConn()
			continue
		}
		inner, ok := embeddedConn(conn)
		if !ok {
			return nil, false
		}
		conn = inner
	}
	return nil, false
}

// embeddedConn returns the net.Conn that conn, a pointer to a struct, embeds
// as its field Conn. That is the shape of fasthttp's MaxConnsPerIP wrapper
// (perIPConn, unexported, embedding net.Conn and overriding only Close),
// which hides both syscall.Conn and NetConn; its TLS twin embeds *tls.Conn
// and so has NetConn already. Reading an exported field through reflect is
// safe and needs no unsafe; the test with MaxConnsPerIP notices if fasthttp
// ever changes the shape.
func embeddedConn(conn net.Conn) (net.Conn, bool) {
	v := reflect.ValueOf(conn)
	if v.Kind() != reflect.Pointer || v.IsNil() || v.Elem().Kind() != reflect.Struct {
		return nil, false
	}
	f, ok := v.Elem().Type().FieldByName("Conn")
	if !ok || !f.Anonymous || f.Type != netConnType || len(f.Index) != 1 {
		return nil, false
	}
	inner, _ := v.Elem().Field(f.Index[0]).Interface().(net.Conn)
	return inner, inner != nil
}

// connFD returns the descriptor of the socket under conn, for tests and
// diagnostics: the number may be stale as soon as it is returned.
func connFD(conn net.Conn) (int, bool) {
	rc, ok := rawConnOf(conn)
	if !ok {
		return 0, false
	}
	fd := -1
	if err := rc.Control(func(d uintptr) { fd = int(d) }); err != nil || fd < 0 {
		return 0, false
	}
	return fd, true
}
