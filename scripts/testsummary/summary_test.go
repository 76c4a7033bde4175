package main

import (
	"bytes"
	"strings"
	"testing"
)

func TestSummary(t *testing.T) {
	tests := []struct {
		name                    string
		input                   string
		passed, failed, skipped int
		want, notWant           []string
	}{
		{
			name: "pass skip and subtests",
			input: `{"Action":"run","Package":"p","Test":"TestA"}
{"Action":"output","Package":"p","Test":"TestA","Output":"=== RUN   TestA\n"}
{"Action":"pass","Package":"p","Test":"TestA/sub","Elapsed":0}
{"Action":"output","Package":"p","Test":"TestA","Output":"    a_test.go:3: chatter\n"}
{"Action":"pass","Package":"p","Test":"TestA","Elapsed":1.5}
{"Action":"output","Package":"p","Test":"TestB","Output":"    b_test.go:4: no broker\n"}
{"Action":"output","Package":"p","Test":"TestB","Output":"--- SKIP: TestB (0.00s)\n"}
{"Action":"skip","Package":"p","Test":"TestB","Elapsed":0}
{"Action":"pass","Package":"p","Elapsed":2}
`,
			passed: 2, skipped: 1,
			want:    []string{"--- PASS: TestA (1.50s)", "--- SKIP: TestB: b_test.go:4: no broker", "ok   p 2.0s", "tests: 2 passed, 0 failed, 1 skipped"},
			notWant: []string{"chatter", "TestA/sub"},
		},
		{
			name: "failed test shows its output",
			input: `{"Action":"output","Package":"p","Test":"TestC","Output":"    c_test.go:5: boom\n"}
{"Action":"fail","Package":"p","Test":"TestC","Elapsed":0}
{"Action":"output","Package":"p","Output":"FAIL\tp\t0.1s\n"}
{"Action":"fail","Package":"p","Elapsed":0.1}
`,
			failed: 1,
			want:   []string{"c_test.go:5: boom", "FAIL\tp\t0.1s", "failed packages: p", "tests: 0 passed, 1 failed, 0 skipped"},
		},
		{
			name: "build failure counts once",
			input: `{"ImportPath":"q","Action":"build-output","Output":"q.go:1: undefined: x\n"}
{"ImportPath":"q","Action":"build-fail"}
{"Action":"output","Package":"q","Output":"FAIL\tq [build failed]\n"}
{"Action":"fail","Package":"q","Elapsed":0,"FailedBuild":"q"}
`,
			failed: 1,
			want:   []string{"q.go:1: undefined: x", "FAIL\tq [build failed]", "failed packages: q"},
		},
		{
			name: "panic outside a finished test",
			input: `{"Action":"run","Package":"r","Test":"TestD"}
{"Action":"output","Package":"r","Test":"TestD","Output":"panic: oops\n"}
{"Action":"output","Package":"r","Output":"FAIL\tr\t0.2s\n"}
{"Action":"fail","Package":"r","Elapsed":0.2}
`,
			failed: 1,
			want:   []string{"panic: oops", "failed packages: r"},
		},
		{
			name:   "plain lines pass through",
			input:  "go: downloading example.com/m v1.0.0\n",
			want:   []string{"go: downloading example.com/m v1.0.0", "tests: 0 passed, 0 failed, 0 skipped"},
			passed: 0,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			s := newSummary(&out)
			if err := s.read(strings.NewReader(tc.input)); err != nil {
				t.Fatal(err)
			}
			s.finish()
			if s.passed != tc.passed || s.failed != tc.failed || s.skipped != tc.skipped {
				t.Errorf("counts %d/%d/%d, want %d/%d/%d", s.passed, s.failed, s.skipped, tc.passed, tc.failed, tc.skipped)
			}
			for _, w := range tc.want {
				if !strings.Contains(out.String(), w) {
					t.Errorf("output lacks %q:\n%s", w, out.String())
				}
			}
			for _, w := range tc.notWant {
				if strings.Contains(out.String(), w) {
					t.Errorf("output has %q:\n%s", w, out.String())
				}
			}
		})
	}
}
