package agent

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
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

// TestExabgpServesHealthAndHonoursBuffer: `bgpedge exabgp` builds its spool
// through the pipeline from buffer.* (only the directory is its own, and
// buffer.max_bytes is its budget while exabgp.spool_max_bytes is 0), and
// serves /healthz and /readyz beside /metrics on exabgp.metrics_listen. A
// 1 MiB segment size, a 2 MiB budget and drop-oldest must show in the spool
// the process writes: segment files of about 1 MiB, the oldest dropped and
// counted, where the defaults (64 MiB segments, 1 GiB) would hold
// everything in one.
// A spool that cannot open answers 503 saying why, /healthz still 200.
func TestExabgpServesHealthAndHonoursBuffer(t *testing.T) {
	dir := t.TempDir()
	addr := testenv.LoopbackAddr(t)
	runSpool := filepath.Join(dir, "run-spool")
	file := filepath.Join(dir, "bgpedge.yaml")
	writeTestFile(t, file, fmt.Sprintf(`agent:
  id: exa-pipeline
  state_dir: %s
  shutdown_timeout: 10s
log:
  format: text
forwarder:
  enabled: false
buffer:
  dir: %s
  segment_bytes: 1MiB
  max_bytes: 2MiB
  policy: drop-oldest
  batch_records: 64
exabgp:
  state_dir: %s
  metrics_listen: %s
  refresh_on_start: false
`, filepath.Join(dir, "state"), runSpool, filepath.Join(dir, "exabgp"), addr))

	t.Run("ready, buffer settings applied", func(t *testing.T) {
		pr, pw := io.Pipe()
		var stdout, stderr testenv.LogBuffer
		done := make(chan error, 1)
		go func() { done <- runExabgp(context.Background(), file, pr, &stdout, &stderr) }()
		testenv.Eventually(t, 30*time.Second, "/readyz ready", func() bool {
			st, err := testenv.ReadinessAt(addr)
			return err == nil && st.Ready && st.Spool == "open" && st.Sink == "disabled"
		})
		if code := testenv.HTTPStatus(t, addr, "/healthz"); code != http.StatusOK {
			t.Fatalf("/healthz answered %d", code)
		}
		// 6 MiB of exaBGP lines (8 KiB each) into a 2 MiB budget.
		line := `{ "exabgp": "4.0.1", "type": "keepalive", "pad": "` + strings.Repeat("x", 8<<10) + `" }` + "\n"
		for range 768 {
			if _, err := io.WriteString(pw, line); err != nil {
				t.Fatal(err)
			}
		}
		testenv.Eventually(t, 30*time.Second, "every line spooled", func() bool {
			return testenv.ScrapeMetrics(addr)["bgpedge_exabgp_spooled_records_total"] >= 768
		})
		m := testenv.ScrapeMetrics(addr)
		if m[`bgpedge_buffer_dropped_records_total{reason="capacity"}`] == 0 {
			t.Errorf("nothing dropped for capacity: buffer.max_bytes or buffer.policy not applied")
		}
		if b := m["bgpedge_buffer_bytes"]; b > 4<<20 {
			t.Errorf("bgpedge_buffer_bytes = %v, beyond the 2 MiB budget and a segment", b)
		}
		pw.Close()
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("exabgp returned %v; log:\n%s", err, stderr.String())
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("exabgp did not stop after EOF; log:\n%s", stderr.String())
		}
		if _, err := os.Stat(runSpool); !os.IsNotExist(err) {
			t.Errorf("buffer.dir %s used by exabgp (stat: %v): its spool is exabgp.state_dir/spool", runSpool, err)
		}
		// 1 MiB segments: each file closed near 1 MiB (plus one commit of
		// at most 64 records of 8 KiB), where a 64 MiB segment would hold
		// all 6 MiB in one.
		segFiles, _ := filepath.Glob(filepath.Join(dir, "exabgp", "spool", "seg-*.db"))
		if len(segFiles) == 0 {
			t.Errorf("no segment files in exabgp.state_dir/spool")
		}
		for _, f := range segFiles {
			if fi, err := os.Stat(f); err != nil || fi.Size() > 2<<20 {
				t.Errorf("segment %s: %v bytes (%v), want about buffer.segment_bytes (1 MiB)", f, fi.Size(), err)
			}
		}
		for _, l := range strings.Split(strings.TrimSpace(stderr.String()), "\n") {
			if n := strings.Count(l, "component="); n != 1 {
				t.Errorf("log line with %d components: %s", n, l)
			}
		}
	})

	t.Run("spool cannot open", func(t *testing.T) {
		if err := os.RemoveAll(filepath.Join(dir, "exabgp", "spool")); err != nil {
			t.Fatal(err)
		}
		writeTestFile(t, filepath.Join(dir, "exabgp", "spool"), "not a directory")
		pr, pw := io.Pipe()
		defer pw.Close()
		var stdout, stderr testenv.LogBuffer
		done := make(chan error, 1)
		// Stopped by its context (SIGTERM): after EOF a process without a
		// spool keeps retrying it for 30 s.
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		go func() { done <- runExabgp(ctx, file, pr, &stdout, &stderr) }()
		testenv.Eventually(t, 30*time.Second, "/readyz unready saying why", func() bool {
			st, err := testenv.ReadinessAt(addr)
			return err == nil && !st.Ready && strings.Contains(st.StartError, "open spool")
		})
		if code := testenv.HTTPStatus(t, addr, "/healthz"); code != http.StatusOK {
			t.Fatalf("/healthz answered %d", code)
		}
		cancel()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			t.Fatalf("exabgp did not stop after EOF; log:\n%s", stderr.String())
		}
	})
}

func writeTestFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}
