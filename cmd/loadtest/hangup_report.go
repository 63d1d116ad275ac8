package main

import (
	"fmt"
	"strings"
)

// writeHangupMarkdown writes the hangup scenario's tables, if it ran.
func writeHangupMarkdown(b *strings.Builder, h *hangupReport) {
	if h == nil || len(h.Rows) == 0 {
		return
	}
	c := h.Config
	fmt.Fprintf(b, "### Client hang-ups: the watch's cost (%d connections, each with one request in flight; handlers wait %d ms for their context, timeout %d ms; windows of %d ms, %d per setting, on and off alternating)\n\n",
		c.Conns, c.WorkMs, c.TimeoutMs, c.WindowMs, c.Rounds)
	b.WriteString("| variant | hang-up watch | handlers in flight | req/s | server CPU, % of one core | each window | client gone | errors |\n")
	b.WriteString("|---|---|---:|---:|---:|---|---:|---:|\n")
	for _, r := range h.Rows {
		watch := "on"
		if !r.Watch {
			watch = "off (IgnoreHangups)"
		}
		if r.Error != "" {
			fmt.Fprintf(b, "| %s | %s | failed: %s ||||||\n", r.Variant, watch, oneLine(r.Error))
			continue
		}
		inFlight := fmt.Sprint(r.InFlight)
		if r.InFlight*10 < int64(c.Conns)*9 {
			inFlight += " (load not held)"
		}
		fmt.Fprintf(b, "| %s | %s | %s | %.0f | %.1f %% | %s | %d | %d |\n",
			r.Variant, watch, inFlight, r.ReqPerSec, r.CPUPercent, pctList(r.WindowsPct, false), r.ClientGone, r.Errors)
	}
	b.WriteString("\n")
	if len(h.Diffs) > 0 {
		b.WriteString("| variant | watch on | watch off | on − off, % of one core | each pair of windows |\n")
		b.WriteString("|---|---:|---:|---:|---|\n")
		for _, d := range h.Diffs {
			fmt.Fprintf(b, "| %s | %.1f %% | %.1f %% | %+.1f | %s |\n", d.Variant, d.OnPct, d.OffPct, d.DiffPct, pctList(d.PairsPct, true))
		}
		b.WriteString("\n")
	}
	var rows strings.Builder
	for _, r := range h.Rows {
		for _, n := range []struct {
			load string
			row  *noticeRow
		}{{"idle", r.Idle}, {fmt.Sprintf("%d slow requests", c.Conns), r.Loaded}} {
			if x := n.row; x != nil {
				fmt.Fprintf(&rows, "| %s | %s | %d | %d | %d | %d | %.2f ms | %.2f ms | %.2f ms | %d | %.2f ms | %.2f ms | %.2f ms |\n",
					r.Variant, n.load, x.Probes, x.Resets, x.Noticed, x.NotStarted, x.P50Ms, x.P99Ms, x.MaxMs,
					x.Watched, x.WatchedP99Ms, x.WatchedMaxMs, x.ServerLagMs)
			}
		}
	}
	if rows.Len() == 0 {
		return
	}
	fmt.Fprintf(b, "### Client hang-ups: how soon they are seen (noticed by the handler − closed by the client, on one wall clock; closes 1-25 ms after the request; \"watched\": closed %v or more after the handler started; server lag: the longest overshoot of a 1 ms sleep in the server meanwhile)\n\n", watchedAfter)
	b.WriteString("| variant | load | hang-ups | resets | noticed | never reached the handler | p50 | p99 | max | watched | p99 | max | server lag |\n")
	b.WriteString("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	b.WriteString(rows.String())
	b.WriteString("\n")
}

// pctList formats percentages of a core, with a sign if signed.
func pctList(xs []float64, signed bool) string {
	f := "%.1f"
	if signed {
		f = "%+.1f"
	}
	parts := make([]string, len(xs))
	for i, x := range xs {
		parts[i] = fmt.Sprintf(f, x)
	}
	return strings.Join(parts, ", ")
}
