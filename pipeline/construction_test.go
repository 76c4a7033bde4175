package pipeline

import (
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestOneConstruction: outside this package no product code builds a
// forwarder or opens a spool for writing; every command goes through
// OpenSpool and the forwarder constructors here. Opening a spool read-only
// (the buffer CLI, the power-cut guest) and a benchmark harness that spools
// without forwarding are the named exceptions.
func TestOneConstruction(t *testing.T) {
	allowed := map[string]string{
		"agent/cmd_buffer.go":                 "read-only: bgpedge buffer stats|inspect",
		"internal/powercut/guestinit/main.go": "read-only: the power-cut guest's check",
		"bmp/internal/benchstation/main.go":   "benchmark harness: a spool without forwarder",
		"internal/spooltest/spooltest.go":     "test helper: seeds a spool",
	}
	root := ".."
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, path)
		if d.IsDir() {
			switch rel {
			case "pipeline", "buffer", "forwarder", "tools", ".git":
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for _, call := range []string{"buffer.Open(", "forwarder.New("} {
			if strings.Contains(string(b), call) {
				if why, ok := allowed[filepath.ToSlash(rel)]; ok && call == "buffer.Open(" {
					t.Logf("%s: %s (%s)", rel, call, why)
					continue
				}
				t.Errorf("%s calls %s: build spools and forwarders through package pipeline", rel, call)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
