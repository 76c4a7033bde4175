package buffer

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/bgpedge/bgpedge/internal/testenv"
	"github.com/bgpedge/bgpedge/record"
)

// payload builds a self-checking payload: random bytes followed by their CRC.
func payload(rng *rand.Rand, size int) []byte {
	size = max(size, 8)
	p := make([]byte, size)
	for i := 0; i+8 <= size-4; i += 8 {
		binary.LittleEndian.PutUint64(p[i:], rng.Uint64())
	}
	binary.BigEndian.PutUint32(p[size-4:], crc32.ChecksumIEEE(p[:size-4]))
	return p
}

func payloadOK(p []byte) bool {
	return len(p) >= 8 && crc32.ChecksumIEEE(p[:len(p)-4]) == binary.BigEndian.Uint32(p[len(p)-4:])
}

func testRecords(rng *rand.Rand, n, size int) []record.Record {
	recs := make([]record.Record, n)
	for i := range recs {
		recs[i] = record.Record{
			Kind:    record.KindBMP,
			Key:     []byte{192, 0, 2, byte(rng.IntN(4))},
			Time:    time.Unix(1_700_000_000, int64(rng.IntN(1e9))),
			Source:  "192.0.2.1:179",
			Payload: payload(rng, size),
		}
	}
	return recs
}

type testSpool struct {
	*Spool
	reg  *prometheus.Registry
	logs *testenv.LogBuffer
}

// openTest opens a spool with a private registry and a captured log.
func openTest(t testing.TB, opts Options) testSpool {
	t.Helper()
	ts := testSpool{reg: prometheus.NewRegistry(), logs: &testenv.LogBuffer{}}
	if opts.Dir == "" {
		opts.Dir = t.TempDir()
	}
	opts.Registerer = ts.reg
	opts.Logger = slog.New(slog.NewTextHandler(ts.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	s, err := Open(opts)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	ts.Spool = s
	t.Cleanup(func() { _ = s.Close() })
	return ts
}

// dirBytes is the apparent size of all files in dir.
func dirBytes(t testing.TB, dir string) int64 {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var n int64
	for _, e := range ents {
		if fi, err := os.Stat(filepath.Join(dir, e.Name())); err == nil {
			n += fi.Size()
		}
	}
	return n
}

func errf(format string, args ...any) error { return fmt.Errorf(format, args...) }

func testenvEventually(t testing.TB, msg string, cond func() bool) {
	t.Helper()
	testenv.Eventually(t, 10*time.Second, msg, cond)
}

// TestMain turns the test binary into a crash, power-cut or full-disk child
// when the parent test sets the matching variable, so the children are not
// tests.
func TestMain(m *testing.M) {
	if dir := os.Getenv(crashDirEnv); dir != "" {
		crashChild(dir)
		os.Exit(0)
	}
	if dir := os.Getenv(powercutDirEnv); dir != "" {
		powercutChild(dir)
		os.Exit(0)
	}
	if dir := os.Getenv(fullDiskDirEnv); dir != "" {
		fullDiskChild(dir)
		os.Exit(0)
	}
	os.Exit(m.Run())
}
