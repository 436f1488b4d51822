package serve

import (
	"net/http"
	"slices"
	"strings"
	"testing"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// families is one parsed /metrics page.
type families map[string]*dto.MetricFamily

// scrape GETs /metrics from --http and parses it with the Prometheus text
// parser.
func (n *node) scrape() families { return n.scrapeAt(n.base) }

func (n *node) scrapeAt(base string) families {
	n.t.Helper()
	code, hdr, body := n.do(base, http.MethodGet, "/metrics", "")
	if code != http.StatusOK {
		n.t.Fatalf("GET /metrics: %d %s", code, body)
	}
	if ct := hdr.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
		n.t.Errorf("GET /metrics: Content-Type %q, want the text format", ct)
	}
	p := expfmt.NewTextParser(model.LegacyValidation)
	mfs, err := p.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		n.t.Fatalf("parse /metrics: %v", err)
	}
	return mfs
}

// value returns the value of the one series of family name whose labels
// include the given name, value pairs; it fails the test unless exactly one
// series matches.
func (f families) value(t *testing.T, name string, labels ...string) float64 {
	t.Helper()
	mf, ok := f[name]
	if !ok {
		t.Fatalf("metric %s absent", name)
	}
	var found []*dto.Metric
	for _, m := range mf.GetMetric() {
		if hasLabels(m, labels) {
			found = append(found, m)
		}
	}
	if len(found) != 1 {
		t.Fatalf("metric %s%v: %d series, want 1", name, labels, len(found))
	}
	m := found[0]
	switch {
	case m.GetCounter() != nil:
		return m.GetCounter().GetValue()
	case m.GetGauge() != nil:
		return m.GetGauge().GetValue()
	case m.GetUntyped() != nil:
		return m.GetUntyped().GetValue()
	}
	t.Fatalf("metric %s%v is neither counter nor gauge", name, labels)
	return 0
}

func hasLabels(m *dto.Metric, labels []string) bool {
	for i := 0; i+1 < len(labels); i += 2 {
		if !slices.ContainsFunc(m.GetLabel(), func(lp *dto.LabelPair) bool {
			return lp.GetName() == labels[i] && lp.GetValue() == labels[i+1]
		}) {
			return false
		}
	}
	return true
}

// series names every series of the oneport_ families: family{label=value,...}
// with labels in the order the page gave them.
func (f families) series(prefix string) []string {
	var out []string
	for name, mf := range f {
		if !strings.HasPrefix(name, prefix) {
			continue
		}
		for _, m := range mf.GetMetric() {
			var b strings.Builder
			b.WriteString(name)
			b.WriteByte('{')
			for i, lp := range m.GetLabel() {
				if i > 0 {
					b.WriteByte(',')
				}
				b.WriteString(lp.GetName() + "=" + lp.GetValue())
			}
			b.WriteByte('}')
			out = append(out, b.String())
		}
	}
	slices.Sort(out)
	return out
}
