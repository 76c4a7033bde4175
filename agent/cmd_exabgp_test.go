package agent

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bgpedge/bgpedge/internal/testenv"
)

// TestExabgpCommandDegraded: with a broken configuration the process does not
// exit while exaBGP is still writing (exaBGP would count it as a crash and
// give up after 6 starts); it reads until EOF and logs why it is degraded.
func TestExabgpCommandDegraded(t *testing.T) {
	tests := []struct {
		name, file, yaml, log string
	}{
		{"missing file", filepath.Join(t.TempDir(), "nope.yaml"), "", "configuration file not found"},
		{"invalid value", "", "exabgp:\n  queue_policy: spill\n", "exabgp.queue_policy"},
		{"unknown key", "", "exabgp:\n  no_such_key: 1\n", "no_such_key"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			file := tt.file
			if file == "" {
				file = filepath.Join(t.TempDir(), "bgpedge.yaml")
				writeTestFile(t, file, tt.yaml)
			}
			pr, pw := io.Pipe()
			var stdout, stderr bytes.Buffer
			done := make(chan error, 1)
			go func() { done <- runExabgp(context.Background(), file, pr, &stdout, &stderr) }()
			for range 100 {
				if _, err := io.WriteString(pw, `{ "exabgp": "4.0.1", "type": "keepalive" }`+"\n"); err != nil {
					t.Fatal(err)
				}
			}
			select {
			case err := <-done:
				t.Fatalf("exited while exaBGP was still writing: %v", err)
			default:
			}
			pw.Close()
			testenv.Eventually(t, 10*time.Second, "exit after EOF", func() bool {
				select {
				case err := <-done:
					if err != nil {
						t.Errorf("degraded run returned %v", err)
					}
					return true
				default:
					return false
				}
			})
			if !strings.Contains(stderr.String(), tt.log) || stdout.Len() != 0 {
				t.Fatalf("stderr %q, stdout %q", stderr.String(), stdout.String())
			}
		})
	}
}

func writeTestFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}
