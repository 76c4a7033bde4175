package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bgpedge/bgpedge/buffer"
	"github.com/bgpedge/bgpedge/record"
)

func runCLI(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	var out, errOut bytes.Buffer
	code := Main(context.Background(), args, strings.NewReader(""), &out, &errOut)
	return out.String(), errOut.String(), code
}

func TestBufferCommands(t *testing.T) {
	dir := t.TempDir()
	s, err := buffer.Open(buffer.Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	received := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	var recs []record.Record
	for i := 0; i < 5; i++ {
		recs = append(recs, record.Record{Kind: record.KindBMP, Key: []byte{192, 0, 2, byte(i)}, Time: received, Source: "192.0.2.1", Payload: make([]byte, 100+i)})
	}
	recs = append(recs, record.Record{Kind: record.KindExaBGP, Key: []byte("10.0.0.1"), Time: received, Payload: []byte(`{"type":"update"}`)})
	if _, err := s.Append(context.Background(), recs...); err != nil {
		t.Fatal(err)
	}
	if err := s.AckThrough(2); err != nil {
		t.Fatal(err)
	}

	// While the agent holds the spool the CLI says so instead of waiting.
	if _, stderr, code := runCLI(t, "buffer", "stats", "--dir", dir); code == 0 || !strings.Contains(stderr, "in use") {
		t.Fatalf("stats on an open spool: code %d, stderr %q", code, stderr)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	st := statsJSON(t, dir)
	if st.Records != 4 || st.FirstSeq != 3 || st.LastSeq != 6 || st.AckedThrough != 2 || st.Segments != 1 || st.Bytes == 0 ||
		st.OldestTime == nil || !st.OldestTime.Equal(received) || st.OldestAgeSec <= 0 {
		t.Fatalf("stats %+v", st)
	}

	out, stderr, code := runCLI(t, "buffer", "stats", "--dir", dir)
	if code != 0 || !strings.Contains(out, "records") || !strings.Contains(out, "oldest_age") {
		t.Fatalf("stats: %d %q %s", code, out, stderr)
	}

	out, stderr, code = runCLI(t, "buffer", "inspect", "--dir", dir)
	if code != 0 {
		t.Fatalf("inspect: %d %s", code, stderr)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 5 || !strings.HasPrefix(lines[0], "SEQ") {
		t.Fatalf("inspect from first unacked:\n%s", out)
	}
	for _, want := range []string{"3    bmp", "192.0.2.2", "102", "2026-01-02T03:04:05Z", "exabgp", "10.0.0.1", "17"} {
		if !strings.Contains(out, want) {
			t.Fatalf("inspect output lacks %q:\n%s", want, out)
		}
	}
	out, _, code = runCLI(t, "buffer", "inspect", "--dir", dir, "--from", "1", "--limit", "2")
	if lines := strings.Split(strings.TrimSpace(out), "\n"); code != 0 || len(lines) != 3 || !strings.HasPrefix(lines[1], "1 ") {
		t.Fatalf("inspect --from 1 --limit 2:\n%s", out)
	}
	out, _, code = runCLI(t, "buffer", "inspect", "--dir", dir, "--from", "100")
	if lines := strings.Split(strings.TrimSpace(out), "\n"); code != 0 || len(lines) != 1 {
		t.Fatalf("inspect past the end:\n%s", out)
	}
	if _, stderr, code := runCLI(t, "buffer", "stats", "--dir", dir+"/missing"); code == 0 || stderr == "" {
		t.Fatal("stats on a missing dir succeeded")
	}
}

// TestBufferStatsTornLastCommit: stats on a spool whose last commit a crash
// left torn counts the records as of the commit before (what `bgpedge run`
// rolls back to) and names the segment, instead of leaving it out silently.
func TestBufferStatsTornLastCommit(t *testing.T) {
	dir := t.TempDir()
	s, err := buffer.Open(buffer.Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	var last []byte
	for i := 0; i < 3; i++ {
		var recs []record.Record
		for j := 0; j < 10; j++ {
			p := bytes.Repeat([]byte{byte('a' + i), byte(j)}, 200)
			recs = append(recs, record.Record{Kind: record.KindBMP, Key: []byte{192, 0, 2, 1}, Payload: p})
			last = p
		}
		if _, err := s.Append(context.Background(), recs...); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	segs, _ := filepath.Glob(filepath.Join(dir, "*.db"))
	if len(segs) != 1 {
		t.Fatalf("segments %v", segs)
	}
	b, err := os.ReadFile(segs[0])
	if err != nil {
		t.Fatal(err)
	}
	i := bytes.Index(b, last) // a record of the last commit
	if i < 0 {
		t.Fatal("payload not found in the segment")
	}
	copy(b[i:], make([]byte, 200))
	if err := os.WriteFile(segs[0], b, 0o640); err != nil {
		t.Fatal(err)
	}

	st := statsJSON(t, dir)
	if st.Records != 20 || st.LastSeq != st.FirstSeq+19 || len(st.Torn) != 1 || filepath.Base(segs[0]) != st.Torn[0] {
		t.Fatalf("stats of a torn last commit: %+v; want 20 records and the segment named as torn", st)
	}
	out, _, code := runCLI(t, "buffer", "stats", "--dir", dir)
	if code != 0 || !strings.Contains(out, "torn_last_commit") || !strings.Contains(out, filepath.Base(segs[0])) {
		t.Fatalf("stats:\n%s", out)
	}
}

// statsJSON runs `bgpedge buffer stats --json` on dir.
func statsJSON(t *testing.T, dir string) bufferStats {
	t.Helper()
	out, stderr, code := runCLI(t, "buffer", "stats", "--dir", dir, "--json")
	if code != 0 {
		t.Fatalf("stats --json: %d %s", code, stderr)
	}
	var st bufferStats
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("stats --json output %q: %v", out, err)
	}
	return st
}
