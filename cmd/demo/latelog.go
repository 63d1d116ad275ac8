package main

import (
	"fmt"
	"log"
	"sync"
	"time"

	"github.com/valyala/fasthttp"
)

const (
	// lateLogEvery is the period of the late-return log: at most one line
	// per period, for all the handlers that returned late in it.
	lateLogEvery = time.Second
	// honouredWithin tells a handler that honoured its context from one
	// that ignored it: one that returned within 2 ms of its deadline, or of
	// its client's hang-up, stopped when its context was cancelled (at the
	// deadline: at once by the request's timer in racing mode, within a
	// tick of the housekeeping goroutine, Config.Precision, 1 ms here, in
	// cooperative mode; at a hang-up: as soon as it is seen), plus the
	// wake-up of its goroutine; one that returned later ran on. On an
	// overloaded machine a honouring handler can take longer to be
	// scheduled, and is then counted as having run on.
	honouredWithin = 2 * time.Millisecond
)

// lateLog aggregates the late returns the middleware reports
// (Config.OnLateReturn) into at most one log line per lateLogEvery: how
// many, the worst lateness and its request, and how many honoured their
// context versus ran on. A burst of 2 000 timeouts gives one line, not
// 2 000. No goroutine runs while nothing is late: the first late return of
// a period schedules the line at its end.
type lateLog struct {
	logger *log.Logger
	// after runs f once d has passed (time.AfterFunc; a test's fake).
	after func(d time.Duration, f func())

	mu       sync.Mutex
	pending  bool // a line is scheduled
	count    int64
	honoured int64
	worst    time.Duration
	worstReq string
}

func newLateLog(logger *log.Logger) *lateLog {
	return &lateLog{logger: logger, after: func(d time.Duration, f func()) { time.AfterFunc(d, f) }}
}

// record is the middleware's OnLateReturn.
func (l *lateLog) record(ctx *fasthttp.RequestCtx, late time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.count++
	if late <= honouredWithin {
		l.honoured++
	}
	if late > l.worst || l.count == 1 {
		l.worst = late
		l.worstReq = string(ctx.Method()) + " " + string(ctx.RequestURI())
	}
	if !l.pending {
		l.pending = true
		l.after(lateLogEvery, l.flush)
	}
}

// flush writes the line of the period that ends, and starts a new one.
func (l *lateLog) flush() {
	l.mu.Lock()
	count, honoured, worst, worstReq := l.count, l.honoured, l.worst, l.worstReq
	l.count, l.honoured, l.worst, l.worstReq = 0, 0, 0, ""
	l.pending = false
	l.mu.Unlock()
	if count == 0 {
		return
	}
	l.logger.Print(formatLateLine(count, honoured, worst, worstReq))
}

func formatLateLine(count, honoured int64, worst time.Duration, worstReq string) string {
	return fmt.Sprintf("late handlers: %d returned late (after their deadline or client's hang-up) in the last %v, the worst %v late (%s); "+
		"%d stopped within %v of it (honoured their context), %d ran on (ignored it)",
		count, lateLogEvery, roundLate(worst), worstReq, honoured, honouredWithin, count-honoured)
}

// roundLate keeps a lateness readable: to the millisecond above 10 ms, to
// the microsecond below.
func roundLate(d time.Duration) time.Duration {
	if d >= 10*time.Millisecond {
		return d.Round(time.Millisecond)
	}
	return d.Round(time.Microsecond)
}
