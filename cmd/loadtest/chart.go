package main

import (
	"fmt"
	"image/color"
	"math"
	"os"
	"path/filepath"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

// palette colours the bar groups.
var palette = []color.Color{
	color.RGBA{R: 0x1f, G: 0x77, B: 0xb4, A: 0xff},
	color.RGBA{R: 0xff, G: 0x7f, B: 0x0e, A: 0xff},
	color.RGBA{R: 0x2c, G: 0xa0, B: 0x2c, A: 0xff},
	color.RGBA{R: 0xd6, G: 0x27, B: 0x28, A: 0xff},
	color.RGBA{R: 0x94, G: 0x67, B: 0xbd, A: 0xff},
}

// writeChart writes a PNG with the panels of every scenario that has
// rows: requests/s per variant and connection count, the storm's and the
// burst's timeout lateness, the overload's goodput against offered load.
func writeChart(path string, rep report) error {
	if !strings.EqualFold(filepath.Ext(path), ".png") {
		return fmt.Errorf("%s: only PNG charts are written (name the file *.png)", path)
	}
	var panels []*plot.Plot
	for _, s := range scenarios {
		more, err := s.charts(rep)
		if err != nil {
			return err
		}
		panels = append(panels, more...)
	}
	if len(panels) == 0 {
		return fmt.Errorf("nothing to chart")
	}
	const width, panelHeight = 22 * vg.Centimeter, 12 * vg.Centimeter
	img := vgimg.New(width, panelHeight*vg.Length(len(panels)))
	dc := draw.New(img)
	tiles := draw.Tiles{Rows: len(panels), Cols: 1, PadY: vg.Centimeter / 2, PadTop: vg.Centimeter / 4}
	grid := make([][]*plot.Plot, len(panels))
	for i, p := range panels {
		grid[i] = []*plot.Plot{p}
	}
	for i, row := range plot.Align(grid, tiles, dc) {
		panels[i].Draw(row[0])
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(f); err != nil {
		_ = f.Close()
		return err
	}
	return f.Close()
}

func throughputChart(rep report) (*plot.Plot, error) {
	var variants []string
	var conns []int
	value := map[string]float64{}
	for _, r := range rep.Throughput {
		if r.Error != "" {
			continue
		}
		if !contains(variants, r.Variant) {
			variants = append(variants, r.Variant)
		}
		if !contains(conns, r.Conns) {
			conns = append(conns, r.Conns)
		}
		value[fmt.Sprint(r.Variant, "/", r.Conns)] = r.ReqPerSec / 1000
	}
	p := plot.New()
	p.Title.Text = "Throughput, trivial handler (" + rep.Machine.String() + ")"
	p.Y.Label.Text = "thousand requests/s"
	p.Y.Min = 0
	p.Legend.Top = true
	if len(variants) == 0 {
		return p, nil // every cell failed
	}
	width := vg.Points(float64(60) / float64(len(conns)))
	for i, n := range conns {
		vals := make(plotter.Values, len(variants))
		for j, v := range variants {
			vals[j] = value[fmt.Sprint(v, "/", n)]
		}
		bars, err := plotter.NewBarChart(vals, width)
		if err != nil {
			return nil, err
		}
		bars.Color = palette[i%len(palette)]
		bars.LineStyle.Width = 0
		bars.Offset = width * vg.Length(float64(i)-float64(len(conns)-1)/2)
		p.Add(bars)
		p.Legend.Add(fmt.Sprintf("%d connections", n), bars)
	}
	p.NominalX(variants...)
	rotateX(p)
	headroom(p, value)
	return p, nil
}

func stormChart(rep report) (*plot.Plot, error) {
	var names []string
	var p50, p99 plotter.Values
	for _, r := range rep.StormRows {
		if r.Error != "" {
			continue // no lateness, not 0 ms
		}
		name := r.Variant
		if name == fasthttpBare {
			name = "floor (fasthttp-bare)"
		}
		names = append(names, name)
		p50, p99 = append(p50, r.LatenessP50Ms), append(p99, r.LatenessP99Ms)
	}
	p := plot.New()
	p.Title.Text = fmt.Sprintf("Timeout storm: %d connections, %d ms handlers, %d ms timeout",
		rep.Storm.Conns, rep.Storm.WorkMs, rep.Storm.TimeoutMs)
	p.Y.Label.Text = "timeout response after deadline (ms)"
	p.Y.Min = 0
	p.Legend.Top = true
	if len(names) == 0 {
		return p, nil
	}
	width := vg.Points(24)
	for i, s := range []struct {
		label string
		vals  plotter.Values
	}{{"p50", p50}, {"p99", p99}} {
		bars, err := plotter.NewBarChart(s.vals, width)
		if err != nil {
			return nil, err
		}
		bars.Color = palette[(i+2)%len(palette)]
		bars.LineStyle.Width = 0
		bars.Offset = width * vg.Length(float64(i)-0.5)
		p.Add(bars)
		p.Legend.Add(s.label, bars)
	}
	p.NominalX(names...)
	rotateX(p)
	headroom(p, map[string]float64{"p50": slicesMax(p50), "p99": slicesMax(p99)})
	return p, nil
}

// burstChart shows the lateness of the burst's timeout answers per variant:
// p50, p99 and max, as the client saw them.
func burstChart(rep report) (*plot.Plot, error) {
	var names []string
	series := []struct {
		label string
		vals  plotter.Values
	}{{"p50", nil}, {"p99", nil}, {"max", nil}}
	for _, r := range rep.BurstRows {
		if r.Error != "" {
			continue
		}
		names = append(names, r.Variant)
		series[0].vals = append(series[0].vals, r.LatenessP50Ms)
		series[1].vals = append(series[1].vals, r.LatenessP99Ms)
		series[2].vals = append(series[2].vals, r.LatenessMaxMs)
	}
	p := plot.New()
	p.Title.Text = fmt.Sprintf("Burst: %d connections at once × %d requests, mixed handlers, %d ms timeout",
		rep.Burst.Conns, rep.Burst.PerConn, rep.Burst.TimeoutMs)
	p.Y.Label.Text = "timeout response after deadline (ms)"
	p.Y.Min = 0
	p.Legend.Top = true
	if len(names) == 0 {
		return p, nil
	}
	width := vg.Points(18)
	top := map[string]float64{}
	for i, s := range series {
		bars, err := plotter.NewBarChart(s.vals, width)
		if err != nil {
			return nil, err
		}
		bars.Color = palette[(i+2)%len(palette)]
		bars.LineStyle.Width = 0
		bars.Offset = width * vg.Length(float64(i)-1)
		p.Add(bars)
		p.Legend.Add(s.label, bars)
		top[s.label] = slicesMax(s.vals)
	}
	p.NominalX(names...)
	rotateX(p)
	headroom(p, top)
	return p, nil
}

// rotateX slants the variant names so that long ones do not overlap.
func rotateX(p *plot.Plot) {
	p.X.Tick.Label.Rotation = math.Pi / 8
	p.X.Tick.Label.XAlign = draw.XRight
	p.X.Tick.Label.YAlign = draw.YCenter
}

// headroom raises the Y axis above the tallest bar, leaving room for the
// legend in the top right corner.
func headroom(p *plot.Plot, values map[string]float64) {
	top := 0.0
	for _, v := range values {
		top = math.Max(top, v)
	}
	p.Y.Max = math.Max(p.Y.Max, top*1.2)
}

func slicesMax(v plotter.Values) float64 {
	m := 0.0
	for _, x := range v {
		m = math.Max(m, x)
	}
	return m
}

func contains[T comparable](s []T, v T) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}
