package main

import (
	"bytes"
	"encoding/xml"
	"io"
	"math"
	"strings"
	"testing"
)

// svgCounts parses an SVG document and counts its elements by name; it fails on XML that does
// not parse.
func svgCounts(t *testing.T, doc []byte) map[string]int {
	t.Helper()
	dec := xml.NewDecoder(bytes.NewReader(doc))
	counts := map[string]int{}
	for {
		tok, err := dec.Token()
		if err == io.EOF {
			return counts
		}
		if err != nil {
			t.Fatalf("the SVG does not parse: %v\n%s", err, doc)
		}
		if se, ok := tok.(xml.StartElement); ok {
			counts[se.Name.Local]++
			if se.Name.Local == "polyline" {
				for _, a := range se.Attr {
					if a.Name.Local == "points" && strings.Contains(a.Value, "NaN") {
						t.Fatalf("a polyline has NaN points: %s", a.Value)
					}
				}
			}
		}
	}
}

func TestWriteSVG(t *testing.T) {
	nan := math.NaN()
	spec := plotSpec{
		Title: `stress <run> & "quotes"`,
		Panels: []plotPanel{
			{Title: "RSS (MiB)", Series: []plotSeries{{Name: "rss", T: []float64{0, 1, 2, 3}, V: []float64{30, 32, 31, 30}}}},
			{Title: "goroutines", Series: []plotSeries{{Name: "g", T: []float64{0, 1, 2, 3}, V: []float64{40, nan, 90, 41}}},
				Refs: []plotRef{{V: 40, Label: "baseline"}, {V: 62, Label: "bound"}, {V: nan, Label: "skipped"}}},
			{Title: "deliveries/s", Series: []plotSeries{
				{Name: "delivered", Color: "#2ca02c", T: []float64{0, 1, 2, 3}, V: []float64{0, 900, 0, 1200}},
				{Name: "requests", Color: "#9467bd", T: []float64{0, 1, 2, 3}, V: []float64{0, 50, 40, 45}},
			}},
		},
		Marks: []plotMark{{T: 1.5, Label: "redis kill -9"}, {T: 2.5, Label: "redis back <empty>", Color: "#2ca02c"}},
	}
	var buf bytes.Buffer
	if err := writeSVG(&buf, spec); err != nil {
		t.Fatal(err)
	}
	c := svgCounts(t, buf.Bytes())
	// rss: 1 line; goroutines: 2 (the NaN splits it); deliveries: 2 series.
	if c["polyline"] != 5 {
		t.Fatalf("%d polylines, want 5", c["polyline"])
	}
	if c["g"] != 3 {
		t.Fatalf("%d panels, want 3", c["g"])
	}
	marks := strings.Count(buf.String(), `class="mark"`)
	if marks != 6 { // two marks across three panels
		t.Fatalf("%d mark lines, want 6", marks)
	}
	if refs := strings.Count(buf.String(), `class="ref"`); refs != 2 {
		t.Fatalf("%d reference lines, want 2", refs)
	}
	for _, want := range []string{"stress &lt;run&gt; &amp;", "redis back &lt;empty&gt;", "seconds from the start"} {
		if !strings.Contains(buf.String(), want) {
			t.Fatalf("the SVG lacks %q", want)
		}
	}
}

func TestWriteSVGEmpty(t *testing.T) {
	var buf bytes.Buffer
	spec := plotSpec{Title: "nothing yet", Panels: []plotPanel{{Title: "empty"}, {Title: "one point",
		Series: []plotSeries{{Name: "x", T: []float64{0}, V: []float64{0}}}}}}
	if err := writeSVG(&buf, spec); err != nil {
		t.Fatal(err)
	}
	c := svgCounts(t, buf.Bytes())
	if c["svg"] != 1 || c["polyline"] != 1 {
		t.Fatalf("counts %v", c)
	}
}

func TestNiceTicks(t *testing.T) {
	cases := []struct {
		hi      float64
		n       int
		wantMax float64
	}{
		{0, 4, 1},
		{7, 4, 8},
		{100, 4, 100},
		{93.5, 4, 100},
		{0.3, 4, 0.3},
		{61, 8, 70},
	}
	for _, c := range cases {
		ticks, hi := niceTicks(c.hi, c.n)
		if len(ticks) < 2 || math.Abs(hi-c.wantMax) > 1e-9 {
			t.Errorf("niceTicks(%v, %d) = %v, max %v, want max %v", c.hi, c.n, ticks, hi, c.wantMax)
		}
		if hi < c.hi {
			t.Errorf("niceTicks(%v) max %v below the data", c.hi, hi)
		}
	}
	if got := tickLabel(0.1 + 0.2); got != "0.3" {
		t.Errorf("tickLabel(0.1+0.2) = %q", got)
	}
	if got := tickLabel(120000); got != "120k" {
		t.Errorf("tickLabel(120000) = %q", got)
	}
}
