package main

// The server child of the hangup scenario.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/fasttimeout/fasttimeout"
	"github.com/valyala/fasthttp"
)

// probePrefix starts the path of the requests whose hang-up is timed; the
// rest of the path is the probe's number.
const probePrefix = "/probe/"

// hangupStats is what the server child answers to each command.
type hangupStats struct {
	Watch      bool  `json:"watch"` // requests go to the middleware that watches
	CPUNanos   int64 `json:"cpu_ns"`
	InFlight   int64 `json:"in_flight"`
	ClientGone int64 `json:"client_gone"`
	Goroutines int   `json:"goroutines"`
}

// probeSeen is what the server saw of one probe request, in Unix
// nanoseconds of the machine's wall clock, which parent and child share.
type probeSeen struct {
	ID      int   `json:"id"`
	Started int64 `json:"started"`
	Noticed int64 `json:"noticed,omitempty"` // the context ended with ErrClientGone
	Ended   int64 `json:"ended,omitempty"`   // the handler is about to return
}

// probeLog collects the server's view of probe requests; "probes" takes
// those that changed since the last time.
type probeLog struct {
	mu      sync.Mutex
	changed map[int]probeSeen
}

func (p *probeLog) update(s probeSeen) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.changed == nil {
		p.changed = map[int]probeSeen{}
	}
	p.changed[s.ID] = s
}

func (p *probeLog) take() []probeSeen {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]probeSeen, 0, len(p.changed))
	for _, s := range p.changed {
		out = append(out, s)
	}
	clear(p.changed)
	return out
}

// hangupSpec names the server child of a variant: variant/workMs.
func hangupSpec(variant string, cfg hangupConfig) string {
	return fmt.Sprintf("%s/%d", variant, cfg.WorkMs)
}

// parseHangupSpec reads what hangupSpec wrote.
func parseHangupSpec(spec string) (variant string, work time.Duration, err error) {
	variant, w, ok := strings.Cut(spec, "/")
	ms, perr := strconv.Atoi(w)
	if !ok || perr != nil || ms <= 0 || variant == "" {
		return "", 0, fmt.Errorf("bad hangup spec %q", spec)
	}
	return variant, time.Duration(ms) * time.Millisecond, nil
}

// serveHangup runs the server child of the hangup scenario; spec is what
// hangupSpec wrote. It builds the variant twice, watching hang-ups and
// ignoring them (Config.IgnoreHangups), with one Stats, and hands each new
// request to one of them: the commands "on" and "off" choose which, so that
// both are measured in the same process under the same connections. The
// handler waits for its context or the work time, then answers; for probe
// requests it logs when it started and when its context ended with
// ErrClientGone. Each command line gets a JSON line: hangupStats for
// "stats", "on" and "off", the changed probeSeen for "probes", lagStats
// for "lag-start" and "lag-stop" (see lagSampler). The child
// ends when its input is closed.
func serveHangup(spec string, in io.Reader, out io.Writer) error {
	variant, work, err := parseHangupSpec(spec)
	if err != nil {
		return err
	}
	raiseFileLimit()
	var (
		stats  fasttimeout.Stats
		probes probeLog
		lag    lagSampler
		watch  atomic.Bool
	)
	handler := func(ctx *fasthttp.RequestCtx) {
		id, probe := probeID(ctx.Path())
		var seen probeSeen
		if probe {
			seen = probeSeen{ID: id, Started: time.Now().UnixNano()}
			probes.update(seen)
		}
		c := fasttimeout.Context(ctx)
		t := time.NewTimer(work)
		select {
		case <-c.Done():
		case <-t.C:
		}
		t.Stop()
		if probe {
			now := time.Now().UnixNano()
			if errors.Is(context.Cause(c), fasttimeout.ErrClientGone) {
				seen.Noticed = now
			}
			seen.Ended = now
			probes.update(seen)
		}
		ctx.SetBody(okBody)
	}
	cfg := fasttimeout.Config{Timeout: 2 * work, Stats: &stats}
	switch variant {
	case ftRace:
	case ftCooperative:
		cfg.Mode = fasttimeout.Cooperative
	default:
		return fmt.Errorf("variant %q has no hangup scenario", variant)
	}
	on := fasttimeout.New(handler, cfg)
	cfg.IgnoreHangups = true
	off := fasttimeout.New(handler, cfg)
	watch.Store(true)

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	s := &fasthttp.Server{
		Handler: func(ctx *fasthttp.RequestCtx) {
			if watch.Load() {
				on(ctx)
			} else {
				off(ctx)
			}
		},
		Logger: log.New(io.Discard, "", 0),
	}
	served := make(chan error, 1)
	go func() { served <- s.Serve(ln) }()

	w := bufio.NewWriter(out)
	fmt.Fprintln(w, ln.Addr().String())
	if err := w.Flush(); err != nil {
		return err
	}
	sc := bufio.NewScanner(in)
	enc := json.NewEncoder(w)
	for sc.Scan() {
		var answer any
		switch cmd := sc.Text(); cmd {
		case "on", "off", "stats":
			if cmd != "stats" {
				watch.Store(cmd == "on")
			}
			c := stats.Snapshot()
			answer = hangupStats{Watch: watch.Load(), CPUNanos: cpuTime(), InFlight: c.InFlight,
				ClientGone: c.ClientGone, Goroutines: runtime.NumGoroutine()}
		case "probes":
			answer = probes.take()
		case "lag-start":
			lag.start()
			answer = lagStats{}
		case "lag-stop":
			answer = lagStats{MaxNs: lag.stop()}
		default:
			return fmt.Errorf("unknown command %q", cmd)
		}
		if err := enc.Encode(answer); err != nil {
			return err
		}
		if err := w.Flush(); err != nil {
			return err
		}
	}
	lag.stop()
	if err := s.Shutdown(); err != nil {
		return err
	}
	if err := <-served; err != nil {
		return err
	}
	return sc.Err()
}

// probeID parses a probe request's path.
func probeID(path []byte) (int, bool) {
	rest, ok := bytes.CutPrefix(path, []byte(probePrefix))
	if !ok {
		return 0, false
	}
	id, err := strconv.Atoi(string(rest))
	return id, err == nil
}

// raiseFileLimit lifts the soft limit of open files to the hard one: each
// connection costs a descriptor on each side.
func raiseFileLimit() {
	var l syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l); err == nil && l.Cur < l.Max {
		l.Cur = l.Max
		_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l)
	}
}

// lagStats is the answer to "lag-start" and "lag-stop".
type lagStats struct {
	MaxNs int64 `json:"max_ns"` // the longest overshoot of a 1 ms sleep since lag-start
}

// lagSampler tells how late the server's goroutines can be woken, apart
// from any hang-up: while it runs, one goroutine sleeps 1 ms after 1 ms
// and keeps the longest overshoot. It runs only while hang-ups are timed,
// not in the CPU windows.
type lagSampler struct {
	max  atomic.Int64
	done chan struct{}
	over chan struct{}
}

func (l *lagSampler) start() {
	l.stop()
	l.max.Store(0)
	l.done, l.over = make(chan struct{}), make(chan struct{})
	go func(done, over chan struct{}) {
		defer close(over)
		for {
			t := time.Now()
			time.Sleep(time.Millisecond)
			raise(&l.max, int64(time.Since(t)-time.Millisecond))
			select {
			case <-done:
				return
			default:
			}
		}
	}(l.done, l.over)
}

// stop ends the sampling, if it runs, and returns the longest overshoot.
func (l *lagSampler) stop() int64 {
	if l.done != nil {
		close(l.done)
		<-l.over
		l.done, l.over = nil, nil
	}
	return l.max.Load()
}
