package fasttimeout

import (
	"context"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"
)

// Context returns the standard context of a request; every call within one
// request returns the same one. It never panics, not even for a zero
// fasthttp.RequestCtx, and returns context.Background() for a nil one.
//
// Inside a handler wrapped by [New], its Deadline is the request's deadline.
// Done is closed at the deadline (Err [context.DeadlineExceeded],
// [context.Cause] [ErrTimeout]), when the server shuts down (Err
// [context.Canceled], Cause [ErrShutdown]), when the client hangs up (Err
// context.Canceled, Cause [ErrClientGone]; see Config.IgnoreHangups), or
// when the handler returns (Err context.Canceled). Value returns the
// request's user values (ctx.UserValue) while the handler runs, nil after.
// The context is allocated on first use, and no goroutine is started per
// request nor per context derived directly from it (context.WithCancel,
// WithTimeout, AfterFunc); one derived under another layer, such as
// context.WithValue, takes a goroutine, as under any non-standard context.
// Inside nested News it is the innermost one's while that New's handler
// runs, for every goroutine of the request (an enclosing handler's too),
// and ends when that handler returns.
//
// A handler that returns without writing when its context ends sends an
// empty 200: the middleware replaces it at the deadline, but on shutdown
// (Cause ErrShutdown) the handler should answer itself, a 503 say.
//
// Outside New, the context has no deadline and is cancelled at server
// shutdown with cause ErrShutdown; each context derived from it takes a
// goroutine. Asked for first after New answered the request without
// running it (inside nested News, an inner New, once the outermost has
// returned), its budget spent (see SpentBudget), it is already done, with
// cause ErrTimeout, or, its client gone while it waited for a slot, with
// cause ErrClientGone; one asked for before (by a handler around New, Skip
// or TimeoutFunc) still ends only at shutdown. Its
// Value returns nil once fasthttp has reset the request. The first call
// stores it in the user values, so, as for any RequestCtx method that
// writes, call it on one goroutine at a time.
func Context(ctx *fasthttp.RequestCtx) context.Context {
	if ctx == nil {
		return context.Background()
	}
	if c, root, h := hold(ctx, false); c != nil {
		defer root.unhold(h)
		return c.context()
	}
	if e, ok := ctx.UserValue(outsideKey{}).(*outsideEnd); ok {
		return (*requestContext)(e)
	}
	b := newRequestContext(ctx, noDeadline)
	// For OnTimeout, OnHangup and the middlewares around New, a request
	// answered without running has timed out, or lost its client, as one
	// answered at its deadline or its client's hang-up has.
	switch answeredUnrun(ctx) {
	case spentBudget:
		b.cancel(context.DeadlineExceeded, &timeoutCause)
	case leftWaiting:
		b.cancel(context.Canceled, &goneCause)
	default:
		b.outside = true
	}
	setFirstUserValue(ctx, outsideKey{}, (*outsideEnd)(b))
	return b
}

// setFirstUserValue stores value under key ahead of ctx's other user
// values: a reset closes and clears them in order, and the context's Close
// must come first, or a Value call meanwhile reads values being cleared.
func setFirstUserValue(ctx *fasthttp.RequestCtx, key, value any) {
	var keys, values []any
	ctx.VisitUserValuesAll(func(k, v any) {
		keys, values = append(keys, k), append(values, v)
	})
	for _, k := range keys {
		ctx.RemoveUserValue(k) // Remove closes nothing
	}
	ctx.SetUserValue(key, value)
	for i, k := range keys {
		ctx.SetUserValue(k, values[i])
	}
}

// outsideKey is the user-value key of the *outsideEnd Context made outside New.
type outsideKey struct{}

// outsideEnd is a context made outside New, as a user value: fasthttp
// closes io.Closer user values at reset, its only word of the request's end.
type outsideEnd requestContext

// Close stops the context's Value from reading the RequestCtx.
func (e *outsideEnd) Close() error {
	(*requestContext)(e).detach()
	return nil
}

// Shared, cancelled contexts that carry the causes: context.Cause asks
// Value for the standard library's cancelCtx, which a cancelled request
// context answers from one of these, without an allocation per request.
var (
	timeoutCause  = cancelledWith(ErrTimeout)
	shutdownCause = cancelledWith(ErrShutdown)
	goneCause     = cancelledWith(ErrClientGone)
)

// cancelledWith returns a context already cancelled with cause.
func cancelledWith(cause error) context.Context {
	ctx, cancel := context.WithCancelCause(context.Background())
	cancel(cause)
	return ctx
}

// closedChan is the Done of a context cancelled before Done was called.
var closedChan = func() chan struct{} {
	ch := make(chan struct{})
	close(ch)
	return ch
}()

// requestContext is the context.Context of one request. One is allocated
// per request that asks for it: outside and shard sit in hasDone's padding,
// which keeps it in the 160-byte size class, not 176.
type requestContext struct {
	request    atomic.Pointer[fasthttp.RequestCtx] // source of Value; nil once the request is over
	deadline   atomic.Int64                        // nanoseconds since epoch, or noDeadline
	serverDone <-chan struct{}
	hasDone    atomic.Bool                     // done is set; it never changes after
	outside    bool                            // made outside New: ends only with the server
	shard      uint8                           // the housekeeper's shard that watches it, by connection; set before it is shared
	done       chan struct{}                   // made on the first Done call, under mu
	causes     atomic.Pointer[context.Context] // &timeoutCause, &shutdownCause or &goneCause once cancelled with one

	// Watched by the housekeeper (cooperative mode), under its shard's lock.
	slot  int    // index in the shard's contexts while watched, else -1
	owner *call  // whose context it is, which the housekeeper times out at the deadline; nil once unwatched
	gen   uint64 // owner's generation (see call.begin): a context made after its request ended times out no other
	call  *call  // whose hang-up watch the housekeeper is to start; nil once started, or never will be

	stopFollow func() bool // ends follow, if it was called

	valueMu    sync.RWMutex // held for reading while Value reads the RequestCtx
	mu         sync.Mutex
	err        error
	afterFuncs []*afterFunc
}

// afterFunc is a function registered with AfterFunc; stop finds it by its
// address. An inline one is run by cancel itself (see follow).
type afterFunc struct {
	f      func()
	inline bool
}

// newRequestContext returns ctx's context with deadline, not yet watched.
func newRequestContext(ctx *fasthttp.RequestCtx, deadline int64) *requestContext {
	b := &requestContext{serverDone: serverDone(ctx), slot: -1}
	b.request.Store(ctx)
	b.deadline.Store(deadline)
	return b
}

// serverDone returns the channel fasthttp closes when ctx's server shuts
// down, or nil without a server (ctx.Done panics then, fasthttp #2026).
func serverDone(ctx *fasthttp.RequestCtx) (done <-chan struct{}) {
	defer func() { _ = recover() }()
	return ctx.Done()
}

// Deadline returns the request's deadline, if it has one.
func (b *requestContext) Deadline() (time.Time, bool) {
	d := b.deadline.Load()
	if d == noDeadline {
		return time.Time{}, false
	}
	return epoch.Add(time.Duration(d)), true
}

// Done returns a channel closed when the context is cancelled.
func (b *requestContext) Done() <-chan struct{} {
	if b.hasDone.Load() {
		return b.done
	}
	if b.outside {
		return b.serverDone // nothing else ends it; nil for a zero RequestCtx
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.done == nil { // not cancelled yet: cancelLocked sets done
		b.done = make(chan struct{})
		b.hasDone.Store(true)
	}
	return b.done
}

// Err returns nil until the context is cancelled, then why.
func (b *requestContext) Err() error {
	b.mu.Lock()
	err := b.err
	b.mu.Unlock()
	if err == nil && b.outside && closed(b.serverDone) { // never, for a nil serverDone
		return context.Canceled
	}
	return err
}

// Value returns the request's user value for key while the request runs.
// Once cancelled with a cause, it answers context.Cause's keys from the
// cause's context, so derived contexts' goroutines never read the RequestCtx.
func (b *requestContext) Value(key any) any {
	causes := b.causes.Load()
	if causes == nil && b.outside && b.Err() != nil {
		causes = &shutdownCause
	}
	if causes != nil {
		if v := (*causes).Value(key); v != nil {
			return v
		}
	}
	b.valueMu.RLock()
	defer b.valueMu.RUnlock()
	if ctx := b.request.Load(); ctx != nil {
		return ctx.UserValue(key)
	}
	return nil
}

// detach stops Value from reading the RequestCtx, and waits for those that are.
func (b *requestContext) detach() {
	b.valueMu.Lock()
	b.request.Store(nil)
	b.valueMu.Unlock()
}

// AfterFunc calls f in its own goroutine once the context is done; with it,
// context.WithCancel and friends derive from this one without a goroutine.
func (b *requestContext) AfterFunc(f func()) (stop func() bool) {
	if b.outside {
		// Only its server's shutdown ends it, closing serverDone without
		// cancel: the standard library's AfterFunc waits for that on a
		// goroutine, as for any context of its own kind.
		return context.AfterFunc(serverShutdown{context.Background(), b}, f)
	}
	return b.afterFunc(f, false)
}

// serverShutdown is a context made outside New as the standard library's
// AfterFunc sees it: its Done and Err, without values (whose look-up would
// read the RequestCtx on whichever goroutine calls stop) and without an
// AfterFunc method (which would call back here).
type serverShutdown struct {
	context.Context // Background: no deadline, no values
	b               *requestContext
}

func (s serverShutdown) Done() <-chan struct{} { return s.b.Done() }

func (s serverShutdown) Err() error { return s.b.Err() }

// afterFunc is AfterFunc for a context made inside New; f runs on the
// goroutine that cancels the context if inline, else on its own.
func (b *requestContext) afterFunc(f func(), inline bool) (stop func() bool) {
	a := &afterFunc{f: f, inline: inline}
	b.mu.Lock()
	if b.err != nil {
		b.mu.Unlock()
		runAfterFuncs(a)
		return func() bool { return false }
	}
	b.afterFuncs = append(b.afterFuncs, a)
	b.mu.Unlock()
	return func() bool {
		b.mu.Lock()
		defer b.mu.Unlock()
		i := slices.Index(b.afterFuncs, a) // -1 once run (cancel took them all) or stopped
		if i >= 0 {
			b.afterFuncs = slices.Delete(b.afterFuncs, i, i+1)
		}
		return i >= 0
	}
}

// follow makes b end when outer ends, with outer's error and cause, until
// unfollow. Called before b is shared: if outer has ended, b starts done
// (afterFunc runs an inline function at once on an ended context). Later b
// ends within outer's cancel, not on a goroutine: a racing outer call
// cancels its context before its server goroutine answers, and OnTimeout or
// OnHangup (innermost Context) must find b ended too. Either way outer's
// error and cause are set by then.
func (b *requestContext) follow(outer *requestContext) {
	b.stopFollow = outer.afterFunc(func() { b.cancel(outer.Err(), outer.causes.Load()) }, true)
}

// unfollow undoes follow, if it was called.
func (b *requestContext) unfollow() {
	if b.stopFollow != nil {
		b.stopFollow()
	}
}

// syncDeadline gives a context not yet cancelled its call's deadline, and
// reports whether it did. Read under the lock: of two moves, the last to
// sync leaves the latest deadline.
func (b *requestContext) syncDeadline(deadline *atomic.Int64) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.err != nil {
		return false
	}
	b.deadline.Store(deadline.Load())
	return true
}

// moveBack gives the context back the deadline old that an undone move
// (call.moveBack) changed to moved, even if it has ended since, so that it
// does not claim a later deadline.
func (b *requestContext) moveBack(moved, old int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.deadline.Load() == moved {
		b.deadline.Store(old)
	}
}

// ownerRunning reports whether b's owner still runs in b's generation. The
// lock of b's shard is held.
func (b *requestContext) ownerRunning() bool {
	return b.owner != nil && b.runningIn(b.owner.state.Load())
}

// runningIn reports whether s, a state word of b's owner, is running in b's
// generation.
func (b *requestContext) runningIn(s uint64) bool {
	return s&phaseMask == callRunning && s&^(generation-1) == b.gen
}

// expire ends the context if its deadline is not after t, and reports
// whether it has ended: through its owner's timeout (call.expire), so cause
// and outcome agree, or, without one, by cancel. Checked under the lock, so
// a concurrent move (syncDeadline) is never missed.
func (b *requestContext) expire(t int64) bool {
	if c := b.owner; c != nil {
		return c.expire(b, t)
	}
	b.mu.Lock()
	var funcs []*afterFunc
	if b.err == nil && b.deadline.Load() <= t {
		funcs = b.cancelLocked(context.DeadlineExceeded, &timeoutCause)
	}
	cancelled := b.err != nil
	b.mu.Unlock()
	runAfterFuncs(funcs...)
	return cancelled
}

// cancel ends the context with err; causes, if not nil, answers
// context.Cause. Only the first cancel counts.
func (b *requestContext) cancel(err error, causes *context.Context) {
	b.mu.Lock()
	funcs := b.cancelLocked(err, causes)
	b.mu.Unlock()
	runAfterFuncs(funcs...)
}

// cancelLocked cancels the context, b.mu held, and returns the functions
// registered with AfterFunc, to be started once b.mu is released.
func (b *requestContext) cancelLocked(err error, causes *context.Context) []*afterFunc {
	if b.err != nil {
		return nil
	}
	b.err = err
	if causes != nil {
		b.causes.Store(causes)
	}
	if b.done != nil {
		close(b.done)
	} else {
		b.done = closedChan
		b.hasDone.Store(true)
	}
	funcs := b.afterFuncs
	b.afterFuncs = nil
	return funcs
}

// runAfterFuncs runs each of funcs: on a goroutine of its own or, inline,
// on this one.
func runAfterFuncs(funcs ...*afterFunc) {
	for _, a := range funcs {
		if a.inline {
			a.f()
		} else {
			go a.f()
		}
	}
}

// String names the context, as the standard library's contexts do.
func (b *requestContext) String() string { return "fasttimeout.Context" }
