package main

import (
	"log"
	"sync"
	"time"

	"github.com/valyala/fasthttp"
)

// goneLog logs the clients that hang up while their handler runs
// (Config.OnHangup): the first of a period at once, as "client gone after
// 1.2s: GET /async_sleep/10", the others of that period in one line at its
// end, so that a load balancer dropping 2 000 connections gives two lines.
type goneLog struct {
	logger *log.Logger
	after  func(d time.Duration, f func()) // time.AfterFunc; a test's fake

	mu      sync.Mutex
	pending bool  // a period is open
	more    int64 // hang-ups after the first of the period
}

func newGoneLog(logger *log.Logger) *goneLog {
	return &goneLog{logger: logger, after: func(d time.Duration, f func()) { time.AfterFunc(d, f) }}
}

// record is the middleware's OnHangup.
func (l *goneLog) record(ctx *fasthttp.RequestCtx, after time.Duration) {
	l.mu.Lock()
	first := !l.pending
	if first {
		l.pending = true
		l.after(lateLogEvery, l.flush)
	} else {
		l.more++
	}
	l.mu.Unlock()
	if first {
		l.logger.Printf("client gone after %v: %s %s", roundLate(after), ctx.Method(), ctx.RequestURI())
	}
}

// flush closes the period, with a line for the hang-ups after its first.
func (l *goneLog) flush() {
	l.mu.Lock()
	more := l.more
	l.more, l.pending = 0, false
	l.mu.Unlock()
	if more > 0 {
		l.logger.Printf("clients gone: %d more in the last %v", more, lateLogEvery)
	}
}
