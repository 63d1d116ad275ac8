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

// hangupSupported reports whether this system can watch connections for the
// peer's hang-up.
const hangupSupported = true

// hangupEvents is what a connection's registration asks for. Never EPOLLIN:
// a pipelined request waiting unread in the socket must not look like a
// hang-up. EPOLLRDHUP is the peer's FIN (a half-close counts as gone, as in
// net/http); EPOLLHUP and EPOLLERR, reported by the kernel anyway, are the
// RST. Edge-triggered (EPOLLET, negative in package syscall), and
// registered once per connection: the later requests of a keep-alive
// connection are watched without a system call.
const hangupEvents uint32 = syscall.EPOLLRDHUP | syscall.EPOLLHUP | syscall.EPOLLERR | 1<<31

// hangupIdleWait bounds each wait for events: when nothing has been watched
// for a whole wait, the watcher goroutine exits, so an idle process keeps
// none (and goleak sees nothing left). A wake-up per wait while busy costs
// nothing measurable; no eventfd is needed.
const hangupIdleWait = 250 * time.Millisecond

// minSweep is the number of registered connections below which the
// watcher does not look for collected ones.
const minSweep = 1024

// hangupHandle names one watch: a slot index and the number of the watch on
// that slot. The zero handle is never issued (numbers start at 1), so
// removing it does nothing.
type hangupHandle struct {
	slot uint32
	seq  uint32
}

// hangupSlot is one connection's registration in the epoll set, kept from
// the connection's first watch until the connection is garbage (see sweep)
// or the watcher stops. Its events carry its index and gen, and are
// dropped once the slot serves another connection: a closed descriptor
// whose number is reused can never reach a newer registration.
type hangupSlot struct {
	conn   weak.Pointer[byte] // the connection served; conns has its address
	gen    uint32             // advanced each time the slot serves a new connection
	seq    uint32             // the number of the slot's latest watch
	onGone func()             // the watch's callback; nil when no watch is on
	pin    *byte              // conn, held while a watch is on, so that a sweep never frees a watched slot
	armed  bool               // a watch is on and its callback has not run
	gone   bool               // the peer hung up: the state stays, its edge came once
	ev     syscall.EpollEvent
}

// hangupWatcher watches connections for their peer's hang-up with one epoll
// set and one goroutine waiting for its events, started by the first watch
// and gone about hangupIdleWait after the last one is removed. The set
// stays, with the registrations of live connections: events that come
// meanwhile wait in it for the goroutine's next start. The zero value is
// ready to use. All state is guarded by mu, held also while a callback
// runs: that is what makes remove final.
type hangupWatcher struct {
	mu      sync.Mutex
	running bool // the goroutine is alive
	epfd    int  // the epoll set, once conns is made
	// The epoll set as a file in Go's network poller, which keeps it
	// open, and its descriptor.
	epoll *os.File
	rc    syscall.RawConn
	slots []*hangupSlot
	free  []uint32
	// Registered connections, by address, and their slots; nil until
	// the epoll set exists.
	conns   map[uintptr]uint32
	sweepAt int // len(conns) at which to sweep
	active  int // watches not yet removed
}

// clientHangups is the process's watcher.
var clientHangups hangupWatcher

// add watches conn until remove: when its peer closes (FIN, including a
// half-close) or resets the connection, onGone is called once, on the
// watcher's goroutine, with the watcher's lock held: it must be quick, must
// not block and must not call add or remove (it would deadlock). Pass a
// func value built once (per pooled call, say), not a new closure per
// request.
//
// A connection's first watch registers it with one system call; later
// watches of the same connection cost a map look-up. A peer already gone
// when add is called is reported at once. A connection has at most one
// watch at a time: a second add replaces the first. The result is false,
// and nothing is watched, when conn has no descriptor (in-memory
// connections), a first watch finds it closed, or the system refuses. A
// registered connection closed by this process is taken out of the epoll
// set by the kernel; a watch of it then never fires.
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

// ctl runs epoll_ctl for sock's descriptor. Inside Control the descriptor
// cannot be closed, so the number given is this connection's and no one
// else's.
func ctl(sock syscall.Conn, epfd, op int, ev *syscall.EpollEvent) error {
	rc, err := sock.SyscallConn()
	if err != nil {
		return err
	}
	var ctlErr error
	err = rc.Control(func(fd uintptr) { ctlErr = syscall.EpollCtl(epfd, op, int(fd), ev) })
	if err != nil {
		return err
	}
	return ctlErr
}

// remove ends the watch h. When it returns, its callback has either
// completed or will never be called, even if the hang-up was being reported
// at that moment. It is idempotent, does nothing for the zero handle or a
// watch replaced since, and is safe after the connection was closed. The
// connection stays registered, for its next watch.
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

// sweep frees the slots of connections that are garbage: their descriptor
// was closed, which took them out of the epoll set. It runs when the number
// of registered connections has doubled since the last sweep, so its cost
// per registration is constant. w.mu is held.
func (w *hangupWatcher) sweep() {
	for addr, idx := range w.conns {
		if w.slots[idx].conn.Value() == nil {
			delete(w.conns, addr)
			w.freeSlot(idx)
		}
	}
	w.sweepAt = max(2*len(w.conns), minSweep)
}

// start starts the goroutine, and creates the epoll set the first time;
// w.mu is held.
func (w *hangupWatcher) start() bool {
	if w.conns == nil {
		epoll, rc, epfd, err := newEpoll()
		if err != nil {
			return false
		}
		w.epoll, w.rc, w.epfd, w.conns = epoll, rc, epfd, make(map[uintptr]uint32)
	}
	w.running = true
	go w.run(w.epoll, w.rc)
	return true
}

// newEpoll creates an epoll set in Go's network poller: an epoll set is
// readable while it has events, so the watcher's goroutine can wait for
// them parked, as for a socket, instead of in epoll_wait. A goroutine in a
// blocking system call keeps its P until the runtime's monitor takes it
// back, which under load can be 10 ms: on a server with one P, every
// request waits meanwhile. The descriptor is returned too: the file's Fd
// method would put it back in blocking mode.
func newEpoll() (*os.File, syscall.RawConn, int, error) {
	epfd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		return nil, nil, 0, err
	}
	if err := syscall.SetNonblock(epfd, true); err != nil {
		syscall.Close(epfd)
		return nil, nil, 0, err
	}
	// A non-blocking descriptor goes to the network poller.
	f := os.NewFile(uintptr(epfd), "epoll")
	rc, err := f.SyscallConn()
	if err == nil {
		err = f.SetReadDeadline(time.Time{}) // fails if the poller refused it
	}
	if err != nil {
		f.Close()
		return nil, nil, 0, err
	}
	return f, rc, epfd, nil
}

// allocSlot returns a free slot's index, its generation already advanced
// past every event issued for it; w.mu is held.
func (w *hangupWatcher) allocSlot() uint32 {
	var idx uint32
	if n := len(w.free); n > 0 {
		idx = w.free[n-1]
		w.free = w.free[:n-1]
	} else {
		idx = uint32(len(w.slots))
		w.slots = append(w.slots, &hangupSlot{})
	}
	s := w.slots[idx]
	if s.gen++; s.gen == 0 {
		s.gen = 1 // an event carrying 0 is never issued
	}
	return idx
}

// freeSlot makes the slot reusable; its generation moves on at the next
// allocation, so its old events stay dead. Its watch number runs on, so
// that old handles do too. w.mu is held.
func (w *hangupWatcher) freeSlot(idx uint32) {
	s := w.slots[idx]
	s.conn, s.onGone, s.pin, s.armed, s.gone = weak.Pointer[byte]{}, nil, nil, false, false
	w.free = append(w.free, idx)
}

// run waits for hang-ups on the epoll set until a whole wait passes with
// nothing watched, then frees the slots of connections that are garbage and
// exits.
func (w *hangupWatcher) run(epoll *os.File, rc syscall.RawConn) {
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
			if errors.Is(readErr, os.ErrDeadlineExceeded) {
				n = 0 // a whole wait without events
			} else if readErr != nil {
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
// connection it was registered for, and calls the callback of the watch
// that is on, unless it has run already; w.mu is held.
func (w *hangupWatcher) dispatch(idx, gen uint32) {
	if int(idx) >= len(w.slots) {
		return
	}
	s := w.slots[idx]
	if s.gen != gen || s.conn == (weak.Pointer[byte]{}) {
		return // stale: the slot was freed, or serves a newer connection
	}
	s.gone = true
	if s.armed {
		s.armed = false
		s.onGone()
	}
}

// peerGone reports whether conn's peer has closed or reset it, by one look
// at its socket that neither blocks nor consumes anything: the end of the
// stream (a half-close counts, as for the watch) or a reset. Bytes pending
// (a pipelined request) or none yet are a live peer, and so is a
// connection without a descriptor. SyscallConn allocates anyway, so the
// closure is not worth avoiding.
func peerGone(conn net.Conn) bool {
	sock, _, ok := socketOf(conn)
	if !ok {
		return false
	}
	rc, err := sock.SyscallConn()
	if err != nil {
		return false
	}
	gone := false
	_ = rc.Control(func(fd uintptr) {
		var b [1]byte
		n, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		gone = n == 0 && err == nil || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
	})
	return gone
}

var netConnType = reflect.TypeFor[net.Conn]()

// socketOf finds the socket under conn and the first byte of the object
// that holds it, which names the connection while it lives: it unwraps
// NetConn() (tls.Conn, listener wrappers), Raw() (github.com/pires/
// go-proxyproto's Conn, for servers behind a load balancer speaking the
// PROXY protocol) and fasthttp's MaxConnsPerIP
// wrapper (see embeddedConn) as long as it can, down to a pointer that
// implements syscall.Conn. The depth is bounded in case a wrapper returns
// itself.
func socketOf(conn net.Conn) (syscall.Conn, *byte, bool) {
	for range 16 {
		if conn == nil {
			break
		}
		if sc, ok := conn.(syscall.Conn); ok {
			v := reflect.ValueOf(sc)
			if v.Kind() != reflect.Pointer || v.IsNil() {
				break
			}
			return sc, (*byte)(v.UnsafePointer()), true
		}
		if nc, ok := conn.(interface{ NetConn() net.Conn }); ok {
			conn = nc.NetConn()
			continue
		}
		if rc, ok := conn.(interface{ Raw() net.Conn }); ok { // PROXY protocol (go-proxyproto)
			conn = rc.Raw()
			continue
		}
		inner, ok := embeddedConn(conn)
		if !ok {
			break
		}
		conn = inner
	}
	return nil, nil, false
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
