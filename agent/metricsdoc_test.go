package agent

import (
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/bgpedge/bgpedge/internal/testenv"
)

// TestMetricsDocumented keeps docs/metrics.md and the code in step: every
// metric name the code defines (all are string literals) has a row there,
// and every row names a metric the code still defines.
func TestMetricsDocumented(t *testing.T) {
	root := testenv.RepoRoot(t)
	literal := regexp.MustCompile(`"(bgpedge_[a-z0-9_]+)"`)
	inCode := map[string]string{}
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (strings.HasPrefix(d.Name(), ".") || d.Name() == "testdata") && path != root {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for _, m := range literal.FindAllSubmatch(b, -1) {
			inCode[string(m[1])], _ = filepath.Rel(root, path)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	doc, err := os.ReadFile(filepath.Join(root, "docs", "metrics.md"))
	if err != nil {
		t.Fatal(err)
	}
	row := regexp.MustCompile("(?m)^\\| `(bgpedge_[a-z0-9_]+)` \\| (counter|gauge|histogram) \\|[^|]*\\| ([^|]+) \\|$")
	inDoc := map[string]bool{}
	for _, m := range row.FindAllSubmatch(doc, -1) {
		name := string(m[1])
		if inDoc[name] {
			t.Errorf("docs/metrics.md lists %s twice", name)
		}
		inDoc[name] = true
		if (m[2][0] == 'c') != strings.HasSuffix(name, "_total") {
			t.Errorf("docs/metrics.md: %s is listed as a %s", name, m[2])
		}
	}
	if len(inCode) < 50 {
		t.Fatalf("found only %d metric names in the code; is the scan broken?", len(inCode))
	}
	var missing, stale []string
	for name, file := range inCode {
		if !inDoc[name] {
			missing = append(missing, name+" ("+file+")")
		}
	}
	for name := range inDoc {
		if _, ok := inCode[name]; !ok {
			stale = append(stale, name)
		}
	}
	slices.Sort(missing)
	slices.Sort(stale)
	for _, m := range missing {
		t.Errorf("metric %s has no row in docs/metrics.md", m)
	}
	for _, s := range stale {
		t.Errorf("docs/metrics.md lists %s, which the code no longer defines", s)
	}
}
