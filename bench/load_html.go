package bench

import (
	"fmt"
	"html/template"
	"io"
	"math"
	"strings"
	"time"
)

// WriteHTML writes the report as one self-contained HTML page: the summary,
// the per-track table and inline SVG charts over time (packets/s, loss,
// latency, sessions, join times). Nothing is fetched when it is viewed; it
// has no script.
func (r LoadReport) WriteHTML(w io.Writer) error {
	var text strings.Builder
	_ = r.WriteText(&text)
	var pps, sent, loss, p50, p99, jitter, up, joinOK, joinFail [][2]float64
	for _, s := range r.Series {
		pps = append(pps, [2]float64{s.T, s.PPS})
		sent = append(sent, [2]float64{s.T, s.SentPPS})
		loss = append(loss, [2]float64{s.T, 100 * s.Loss})
		p50 = append(p50, [2]float64{s.T, s.LatencyP50Ms})
		p99 = append(p99, [2]float64{s.T, s.LatencyP99Ms})
		jitter = append(jitter, [2]float64{s.T, s.JitterMs})
		up = append(up, [2]float64{s.T, float64(s.Up)})
	}
	for _, j := range r.Joins {
		if j.Error == "" {
			joinOK = append(joinOK, [2]float64{j.T, j.Ms})
		} else {
			joinFail = append(joinFail, [2]float64{j.T, j.Ms})
		}
	}
	data := struct {
		R      LoadReport
		Text   string
		Charts []template.HTML
	}{R: r, Text: text.String(), Charts: []template.HTML{
		svgChart("Packets per second", "pkt/s", false, svgSeries{"received", "#1f77b4", pps}, svgSeries{"sent", "#aaaaaa", sent}),
		svgChart("Loss", "%", false, svgSeries{"loss", "#d62728", loss}),
		svgChart("One-way latency", "ms", false, svgSeries{"p99", "#ff7f0e", p99}, svgSeries{"p50", "#2ca02c", p50}, svgSeries{"jitter", "#9467bd", jitter}),
		svgChart("Sessions up", "sessions", false, svgSeries{"up", "#17becf", up}),
		svgChart("Join time (offer to first media packet)", "ms", true, svgSeries{"joined", "#1f77b4", joinOK}, svgSeries{"failed", "#d62728", joinFail}),
	}}
	return loadHTML.Execute(w, data)
}

type svgSeries struct {
	name  string
	color string
	pts   [][2]float64
}

// Chart geometry, in SVG user units.
const (
	svgW, svgH                           = 720, 260
	svgLeft, svgRight, svgTop, svgBottom = 64, 16, 28, 36
)

// svgChart draws series against time (seconds): lines, or dots with
// scatter. Axes start at 0 and end at a round step above the data.
func svgChart(title, unit string, scatter bool, series ...svgSeries) template.HTML {
	var xmax, ymax float64
	n := 0
	for _, s := range series {
		for _, p := range s.pts {
			if finite(p[0]) && finite(p[1]) {
				xmax, ymax = max(xmax, p[0]), max(ymax, p[1])
				n++
			}
		}
	}
	xstep, ystep := niceStep(xmax), niceStep(ymax)
	xmax, ymax = xstep*math.Ceil(xmax/xstep+1e-9), ystep*math.Ceil(ymax/ystep+1e-9)
	if xmax == 0 {
		xmax = xstep
	}
	if ymax == 0 {
		ymax = ystep
	}
	pw, ph := float64(svgW-svgLeft-svgRight), float64(svgH-svgTop-svgBottom)
	x := func(v float64) float64 { return svgLeft + v/xmax*pw }
	y := func(v float64) float64 { return svgTop + ph - v/ymax*ph }
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 %d %d" width="%d" height="%d" role="img" data-points="%d">`, svgW, svgH, svgW, svgH, n)
	fmt.Fprintf(&b, `<title>%s</title><text x="%d" y="18" font-weight="bold">%s</text>`, template.HTMLEscapeString(title), svgLeft, template.HTMLEscapeString(title))
	for v := 0.0; v <= ymax+ystep/2; v += ystep {
		fmt.Fprintf(&b, `<line x1="%d" x2="%d" y1="%.1f" y2="%.1f" stroke="#e5e5e5"/><text x="%d" y="%.1f" text-anchor="end" font-size="11">%s</text>`,
			svgLeft, svgW-svgRight, y(v), y(v), svgLeft-6, y(v)+4, fmtTick(v))
	}
	for v := 0.0; v <= xmax+xstep/2; v += xstep {
		fmt.Fprintf(&b, `<text x="%.1f" y="%d" text-anchor="middle" font-size="11">%s</text>`, x(v), svgH-svgBottom+16, fmtTick(v))
	}
	fmt.Fprintf(&b, `<text x="%d" y="%d" font-size="11" text-anchor="end">s</text><text x="8" y="%d" font-size="11">%s</text>`,
		svgW-svgRight, svgH-4, svgTop-8, template.HTMLEscapeString(unit))
	fmt.Fprintf(&b, `<rect x="%d" y="%d" width="%.0f" height="%.0f" fill="none" stroke="#999"/>`, svgLeft, svgTop, pw, ph)
	for i, s := range series {
		fmt.Fprintf(&b, `<g class="series" data-name="%s" stroke="%s" fill="%s">`, template.HTMLEscapeString(s.name), s.color, s.color)
		if scatter {
			for _, p := range s.pts {
				if finite(p[0]) && finite(p[1]) {
					fmt.Fprintf(&b, `<circle cx="%.1f" cy="%.1f" r="2.5" stroke="none"/>`, x(p[0]), y(p[1]))
				}
			}
		} else if len(s.pts) > 0 {
			b.WriteString(`<polyline fill="none" stroke-width="1.6" points="`)
			for _, p := range s.pts {
				if finite(p[0]) && finite(p[1]) {
					fmt.Fprintf(&b, "%.1f,%.1f ", x(p[0]), y(p[1]))
				}
			}
			b.WriteString(`"/>`)
		}
		lx := svgW - svgRight - 110*(len(series)-i)
		fmt.Fprintf(&b, `<rect x="%d" y="8" width="10" height="10" stroke="none"/><text x="%d" y="17" font-size="11" stroke="none" fill="#333">%s</text></g>`,
			lx, lx+14, template.HTMLEscapeString(s.name))
	}
	b.WriteString(`</svg>`)
	return template.HTML(b.String()) // built from escaped text and numbers only
}

func finite(v float64) bool { return !math.IsNaN(v) && !math.IsInf(v, 0) }

// niceStep is a 1, 2 or 5 × 10^k step giving about 5 ticks up to v.
func niceStep(v float64) float64 {
	if v <= 0 || !finite(v) {
		return 1
	}
	raw := v / 5
	p := math.Pow(10, math.Floor(math.Log10(raw)))
	for _, m := range []float64{1, 2, 5, 10} {
		if raw <= m*p {
			return m * p
		}
	}
	return 10 * p
}

func fmtTick(v float64) string {
	switch {
	case v == 0:
		return "0"
	case math.Abs(v) >= 1e6:
		return fmt.Sprintf("%gM", v/1e6)
	case math.Abs(v) >= 1e4:
		return fmt.Sprintf("%gk", v/1e3)
	default:
		return fmt.Sprintf("%g", math.Round(v*1000)/1000)
	}
}

var loadHTML = template.Must(template.New("load").Funcs(template.FuncMap{
	"pct":  func(f float64) string { return fmt.Sprintf("%.3f%%", 100*f) },
	"f2":   func(f float64) string { return fmt.Sprintf("%.2f", f) },
	"date": func(t time.Time) string { return t.Format(time.RFC3339) },
}).Parse(`<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>oneport bench load {{date .R.Started}}</title>
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;max-width:1100px}
table{border-collapse:collapse;margin:12px 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}
pre{background:#f8f8f8;padding:12px;overflow:auto;font-size:12px}
svg{display:block;margin:16px 0;font-family:system-ui,sans-serif}
</style></head><body>
<h1>oneport bench load</h1>
<p>{{date .R.Started}} against <code>{{.R.URL}}</code> on {{.R.CPUModel}} ({{.R.Host.CPUs}} CPUs).
{{.R.Sessions.Joined}} of {{.R.Sessions.Planned}} sessions joined, {{.R.Sessions.Failed}} failed;
steady loss {{pct .R.Steady.Loss}}, latency p99 {{f2 .R.Steady.LatencyP99Ms}} ms.</p>
{{range .Charts}}{{.}}
{{end}}
<h2>Tracks</h2>
<table><tr><th>track</th><th>codec</th><th>sent</th><th>subscribers</th><th>received</th><th>loss</th><th>pkt/s per sub</th><th>Mbit/s per sub</th><th>jitter ms</th><th>p50 ms</th><th>p99 ms</th></tr>
{{range .R.Tracks}}<tr><td>{{.Name}}</td><td>{{.Codec}}</td><td>{{.Sent}}</td><td>{{.Subscribers}}</td><td>{{.Received}}</td><td>{{pct .LossRatio}}</td><td>{{f2 .PPS}}</td><td>{{f2 .Mbps}}</td><td>{{f2 .JitterMs}}</td><td>{{f2 .LatencyP50Ms}}</td><td>{{f2 .LatencyP99Ms}}</td></tr>
{{end}}</table>
<h2>Summary</h2>
<pre>{{.Text}}</pre>
</body></html>
`))
