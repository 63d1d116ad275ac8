// Package signalstop stops a server command at SIGINT or SIGTERM: the first
// cancels the context it serves under, which starts its graceful shutdown,
// and a second ends the process at once. The gateway uses it, and the demo
// through its replace directive.
package signalstop

import (
	"context"
	"log"
	"os"
	"os/signal"
	"syscall"
)

// Context returns a context that the first SIGINT or SIGTERM cancels. A
// second one, during the shutdown that follows, ends the process without
// waiting for open connections: the grace period can last seconds, and a
// second Ctrl-C means the user wants out now. It logs "<signal> again:
// stopping at once, open connections abandoned" to logger and exits with
// 128 plus the signal's number (130 for SIGINT, 143 for SIGTERM), what a
// shell reports for a process that signal killed. Call it once, before the
// command listens.
func Context(logger *log.Logger) context.Context {
	// Room for both signals, should they come before stop reads the first:
	// Notify drops what does not fit.
	signals := make(chan os.Signal, 2)
	signal.Notify(signals, os.Interrupt, syscall.SIGTERM)
	ctx, cancel := context.WithCancel(context.Background())
	go stop(signals, cancel, logger)
	return ctx
}

// stop cancels the run at the first signal and ends the process at the
// second.
func stop(signals <-chan os.Signal, cancel context.CancelFunc, logger *log.Logger) {
	<-signals
	cancel()
	sig := <-signals
	logger.Printf("%v again: stopping at once, open connections abandoned", sig)
	code := 1
	if s, ok := sig.(syscall.Signal); ok {
		code = 128 + int(s)
	}
	os.Exit(code)
}
