package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"strings"
)

// event is one line of `go test -json` (cmd/test2json), including the build
// events that Go 1.24+ interleaves.
type event struct {
	Action      string
	Package     string
	ImportPath  string
	Test        string
	Output      string
	Elapsed     float64
	FailedBuild string
}

type key struct{ pkg, test string }

type summary struct {
	out                     io.Writer
	output                  map[key][]string // buffered output per test ("" test: package level)
	build                   map[string][]string
	failedTests             map[string]int // failed tests per package
	passed, failed, skipped int
	failedPackages          []string
}

func newSummary(out io.Writer) *summary {
	return &summary{
		out:         out,
		output:      make(map[key][]string),
		build:       make(map[string][]string),
		failedTests: make(map[string]int),
	}
}

func (s *summary) read(r io.Reader) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 1<<20), 64<<20)
	for sc.Scan() {
		line := sc.Bytes()
		var e event
		if len(line) == 0 || line[0] != '{' || json.Unmarshal(line, &e) != nil {
			// Not an event: go vet or the toolchain speaking; pass it through.
			fmt.Fprintln(s.out, string(line))
			continue
		}
		s.handle(e)
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("read go test output: %w", err)
	}
	return nil
}

func (s *summary) handle(e event) {
	k := key{e.Package, e.Test}
	switch e.Action {
	case "build-output":
		s.build[e.ImportPath] = append(s.build[e.ImportPath], e.Output)
	case "build-fail":
		fmt.Fprint(s.out, strings.Join(s.build[e.ImportPath], ""))
		delete(s.build, e.ImportPath)
	case "output":
		s.output[k] = append(s.output[k], e.Output)
	case "pass":
		if e.Test == "" {
			fmt.Fprintf(s.out, "ok   %s %.1fs\n", e.Package, e.Elapsed)
		} else {
			s.passed++
			if !strings.Contains(e.Test, "/") {
				fmt.Fprintf(s.out, "--- PASS: %s (%.2fs)\n", e.Test, e.Elapsed)
			}
		}
		delete(s.output, k)
	case "skip":
		if e.Test == "" {
			fmt.Fprintf(s.out, "?    %s [no test files]\n", e.Package)
		} else {
			s.skipped++
			fmt.Fprintf(s.out, "--- SKIP: %s: %s\n", e.Test, skipReason(s.output[k]))
		}
		delete(s.output, k)
	case "fail":
		if e.Test != "" {
			s.failed++
			s.failedTests[e.Package]++
			fmt.Fprint(s.out, strings.Join(s.output[k], ""))
			delete(s.output, k)
			return
		}
		// A package can fail outside any test: build failure, panic, timeout,
		// TestMain. Show everything it printed and count it once.
		fmt.Fprint(s.out, strings.Join(s.output[k], ""))
		delete(s.output, k)
		if s.failedTests[e.Package] == 0 {
			s.failed++
			for tk, lines := range s.output {
				if tk.pkg == e.Package {
					fmt.Fprint(s.out, strings.Join(lines, ""))
					delete(s.output, tk)
				}
			}
		}
		s.failedPackages = append(s.failedPackages, e.Package)
	}
}

// skipReason is the message a test gave t.Skip: the last output line that is
// not the "--- SKIP" line itself.
func skipReason(lines []string) string {
	for i := len(lines) - 1; i >= 0; i-- {
		l := strings.TrimSpace(lines[i])
		if l != "" && !strings.HasPrefix(l, "--- SKIP") && !strings.HasPrefix(l, "=== ") {
			return l
		}
	}
	return "(no reason given)"
}

func (s *summary) finish() {
	if len(s.failedPackages) > 0 {
		fmt.Fprintf(s.out, "failed packages: %s\n", strings.Join(s.failedPackages, " "))
	}
	fmt.Fprintf(s.out, "tests: %d passed, %d failed, %d skipped\n", s.passed, s.failed, s.skipped)
}
