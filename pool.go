package fasttimeout

import (
	"sync"
	"sync/atomic"
)

// idleSlots is the number of per-connection slots of an idleWorkers.
const idleSlots = 256

// idleWorkers keeps the workers waiting for a call. A connection's requests
// go to the slot of its connection ID, so the fast path takes and returns a
// worker with one atomic swap each and no lock, mostly reusing the worker of
// the connection's previous request. Workers that do not fit a slot wait in
// a shared LIFO stack.
type idleWorkers struct {
	slots [idleSlots]struct {
		w atomic.Pointer[worker]
		_ [56]byte // one cache line per slot: neighbours are busy on other cores
	}

	mu    sync.Mutex
	stack []*worker
}

// get returns an idle worker for connection connID, or nil.
func (p *idleWorkers) get(connID uint64) *worker {
	if w := p.slots[connID%idleSlots].w.Swap(nil); w != nil {
		return w
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	n := len(p.stack)
	if n == 0 {
		return nil
	}
	w := p.stack[n-1]
	p.stack[n-1] = nil
	p.stack = p.stack[:n-1]
	return w
}

// put makes w available to the next request of connection connID.
func (p *idleWorkers) put(connID uint64, w *worker) {
	if p.slots[connID%idleSlots].w.CompareAndSwap(nil, w) {
		return
	}
	p.mu.Lock()
	p.stack = append(p.stack, w)
	p.mu.Unlock()
}

// takeStale removes and returns the workers last used before t.
func (p *idleWorkers) takeStale(t int64) []*worker {
	var stale []*worker
	for i := range p.slots {
		s := &p.slots[i].w
		if w := s.Load(); w != nil && w.lastUsed.Load() < t && s.CompareAndSwap(w, nil) {
			stale = append(stale, w)
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0 // the stack is LIFO: the stale ones are at the bottom
	for n < len(p.stack) && p.stack[n].lastUsed.Load() < t {
		n++
	}
	stale = append(stale, p.stack[:n]...)
	p.stack = append(p.stack[:0], p.stack[n:]...)
	clear(p.stack[len(p.stack):cap(p.stack)]) // drop references for the GC
	return stale
}
