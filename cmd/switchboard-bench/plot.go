package main

import (
	"bufio"
	"encoding/xml"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
)

// A small SVG line plot, written with the standard library: panels stacked over one shared
// time axis, each with its own y axis, and vertical marks across all of them (the moments a
// fault was injected). A plotting library would bring a dependency tree for three polylines.

// plotSeries is one line: values v at times t (seconds from the start). NaN and ±Inf values
// are gaps in the line.
type plotSeries struct {
	Name  string
	Color string
	T, V  []float64
}

// plotPanel is one chart of the stack; Refs are horizontal reference lines (a baseline, a
// bound).
type plotPanel struct {
	Title  string
	Series []plotSeries
	Refs   []plotRef
}

// plotRef is a dotted horizontal line at V, labelled at the right end.
type plotRef struct {
	V     float64
	Label string
	Color string
}

// plotMark is a vertical line at T across every panel, labelled at the top.
type plotMark struct {
	T     float64
	Label string
	Color string
}

// plotSpec is a whole figure.
type plotSpec struct {
	Title       string
	Panels      []plotPanel
	Marks       []plotMark
	Width       int // pixels; default 960
	PanelHeight int // pixels per panel; default 200
}

const (
	plotLeft   = 80 // room for the y tick labels
	plotRight  = 24
	plotTop    = 56 // the figure's title
	plotGap    = 46 // between panels: the panel's title and the x tick labels above it
	plotBottom = 40 // the last panel's x tick labels and the axis title
)

// writeSVG renders spec as a standalone SVG document.
func writeSVG(w io.Writer, spec plotSpec) error {
	if spec.Width <= 0 {
		spec.Width = 960
	}
	if spec.PanelHeight <= 0 {
		spec.PanelHeight = 200
	}
	n := len(spec.Panels)
	height := plotTop + n*spec.PanelHeight + max(n-1, 0)*plotGap + plotBottom
	plotW := float64(spec.Width - plotLeft - plotRight)

	tMax := 0.0
	for _, p := range spec.Panels {
		for _, s := range p.Series {
			for _, t := range s.T {
				if finite(t) {
					tMax = math.Max(tMax, t)
				}
			}
		}
	}
	for _, m := range spec.Marks {
		if finite(m.T) {
			tMax = math.Max(tMax, m.T)
		}
	}
	xTicks, xMax := niceTicks(tMax, 8)
	x := func(t float64) float64 { return plotLeft + t/xMax*plotW }

	b := bufio.NewWriter(w)
	fmt.Fprintf(b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">`+"\n",
		spec.Width, height, spec.Width, height)
	fmt.Fprintf(b, `<rect x="0" y="0" width="%d" height="%d" fill="white"/>`+"\n", spec.Width, height)
	fmt.Fprintf(b, `<text x="%d" y="24" font-size="15" font-weight="bold">%s</text>`+"\n", plotLeft, esc(spec.Title))

	for i, p := range spec.Panels {
		top := float64(plotTop + i*(spec.PanelHeight+plotGap))
		h := float64(spec.PanelHeight)
		vMax := 0.0
		for _, s := range p.Series {
			for _, v := range s.V {
				if finite(v) {
					vMax = math.Max(vMax, v)
				}
			}
		}
		for _, r := range p.Refs {
			if finite(r.V) {
				vMax = math.Max(vMax, r.V)
			}
		}
		yTicks, yMax := niceTicks(vMax, 4)
		y := func(v float64) float64 { return top + h - v/yMax*h }

		fmt.Fprintf(b, `<g class="panel">`+"\n")
		fmt.Fprintf(b, `<text x="%d" y="%.1f" font-weight="bold">%s</text>`+"\n", plotLeft, top-8, esc(p.Title))
		fmt.Fprintf(b, `<rect x="%d" y="%.1f" width="%.1f" height="%.1f" fill="none" stroke="#888"/>`+"\n", plotLeft, top, plotW, h)
		for _, v := range yTicks {
			fmt.Fprintf(b, `<line x1="%d" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#e4e4e4"/>`+"\n", plotLeft, y(v), plotLeft+plotW, y(v))
			fmt.Fprintf(b, `<text x="%d" y="%.1f" text-anchor="end">%s</text>`+"\n", plotLeft-6, y(v)+4, tickLabel(v))
		}
		for _, t := range xTicks {
			fmt.Fprintf(b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#e4e4e4"/>`+"\n", x(t), top, x(t), top+h)
			fmt.Fprintf(b, `<text x="%.1f" y="%.1f" text-anchor="middle">%s</text>`+"\n", x(t), top+h+15, tickLabel(t))
		}
		for _, s := range p.Series {
			for _, seg := range segments(s) {
				fmt.Fprintf(b, `<polyline fill="none" stroke="%s" stroke-width="1.5" points="`, esc(colorOr(s.Color, "#1f77b4")))
				for k, pt := range seg {
					if k > 0 {
						b.WriteByte(' ')
					}
					fmt.Fprintf(b, "%.1f,%.1f", x(pt[0]), y(pt[1]))
				}
				b.WriteString(`"/>` + "\n")
			}
		}
		for _, r := range p.Refs {
			if !finite(r.V) {
				continue
			}
			c := esc(colorOr(r.Color, "#555"))
			fmt.Fprintf(b, `<line class="ref" x1="%d" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s" stroke-dasharray="2,3"/>`+"\n",
				plotLeft, y(r.V), plotLeft+plotW, y(r.V), c)
			fmt.Fprintf(b, `<text x="%.1f" y="%.1f" text-anchor="end" font-size="10" fill="%s">%s</text>`+"\n",
				plotLeft+plotW-4, y(r.V)-3, c, esc(r.Label))
		}
		if len(p.Series) > 1 { // a legend, right-aligned above the panel
			lx := float64(spec.Width - plotRight)
			for k := len(p.Series) - 1; k >= 0; k-- {
				s := p.Series[k]
				fmt.Fprintf(b, `<text x="%.1f" y="%.1f" text-anchor="end" fill="%s">%s</text>`+"\n", lx, top-8, esc(colorOr(s.Color, "#1f77b4")), esc(s.Name))
				lx -= float64(8*len(s.Name) + 16)
			}
		}
		for k, m := range spec.Marks {
			if !finite(m.T) {
				continue
			}
			fmt.Fprintf(b, `<line class="mark" x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s" stroke-dasharray="5,3"/>`+"\n",
				x(m.T), top, x(m.T), top+h, esc(colorOr(m.Color, "#d62728")))
			if i == 0 { // labels on three rows, so that marks close together stay readable
				fmt.Fprintf(b, `<text x="%.1f" y="%.1f" font-size="10" fill="%s">%s</text>`+"\n",
					x(m.T)+3, top+12+float64(k%3)*12, esc(colorOr(m.Color, "#d62728")), esc(m.Label))
			}
		}
		b.WriteString("</g>\n")
	}
	fmt.Fprintf(b, `<text x="%.1f" y="%d" text-anchor="middle">seconds from the start of the run</text>`+"\n", plotLeft+plotW/2, height-8)
	b.WriteString("</svg>\n")
	return b.Flush()
}

// segments splits a series into runs of finite points (a NaN breaks the line).
func segments(s plotSeries) [][][2]float64 {
	var out [][][2]float64
	var cur [][2]float64
	for i := range min(len(s.T), len(s.V)) {
		if !finite(s.T[i]) || !finite(s.V[i]) {
			if len(cur) > 0 {
				out = append(out, cur)
			}
			cur = nil
			continue
		}
		cur = append(cur, [2]float64{s.T[i], s.V[i]})
	}
	if len(cur) > 0 {
		out = append(out, cur)
	}
	return out
}

// niceTicks returns ticks 0, step, 2·step… covering [0, hi] with steps of 1, 2 or 5 × 10^k,
// about n of them, and the axis maximum (the last tick; 1 for an empty range).
func niceTicks(hi float64, n int) ([]float64, float64) {
	if !finite(hi) || hi <= 0 {
		return []float64{0, 1}, 1
	}
	raw := hi / float64(max(n, 1))
	mag := math.Pow(10, math.Floor(math.Log10(raw)))
	step := 10 * mag
	for _, m := range []float64{1, 2, 5} {
		if raw <= m*mag {
			step = m * mag
			break
		}
	}
	var ticks []float64
	for k := 0; ; k++ {
		v := float64(k) * step
		ticks = append(ticks, v)
		if v >= hi || k > 100 {
			return ticks, v
		}
	}
}

// tickLabel prints a tick value without float noise (0.30000000000000004).
func tickLabel(v float64) string {
	if math.Abs(v) >= 1e6 {
		return strconv.FormatFloat(v/1e6, 'g', 4, 64) + "M"
	}
	if math.Abs(v) >= 1e4 {
		return strconv.FormatFloat(v/1e3, 'g', 4, 64) + "k"
	}
	return strconv.FormatFloat(v, 'g', 6, 64)
}

func finite(v float64) bool { return !math.IsNaN(v) && !math.IsInf(v, 0) }

func colorOr(c, def string) string {
	if c == "" {
		return def
	}
	return c
}

// esc escapes text for an SVG text node or attribute.
func esc(s string) string {
	var sb strings.Builder
	_ = xml.EscapeText(&sb, []byte(s))
	return sb.String()
}
