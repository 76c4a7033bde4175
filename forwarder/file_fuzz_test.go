package forwarder

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/bgpedge/bgpedge/bmp/capture"
	"github.com/bgpedge/bgpedge/internal/testenv"
)

// FuzzFileRepair: whatever a crash left at the end of a file sink's file
// (raw BMP or JSON lines), the repair at the next connect keeps a prefix of
// it made of whole records only, which the tail reader walks to the end.
// Seeds are the first kilobytes of real router captures, cut anywhere.
func FuzzFileRepair(f *testing.F) {
	for _, file := range testenv.BMPCaptures(f, 8) {
		streams, err := capture.Open(file)
		if err != nil {
			f.Fatalf("%s: %v", file, err)
		}
		for _, s := range streams {
			data := s.Data[:min(len(s.Data), 16<<10)]
			f.Add(data, true)
			f.Add(data[:len(data)*2/3], true)
		}
	}
	f.Add([]byte("{\"id\":\"edge1:1\"}\n{\"id\":\"edge1:2\"}\n{\"id\""), false)
	f.Add([]byte{3, 0, 0, 0, 2, 4, 3, 0, 0, 0, 6, 4}, true)

	f.Fuzz(func(t *testing.T, data []byte, raw bool) {
		path := filepath.Join(t.TempDir(), "f")
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := repairTail(path, raw); err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.HasPrefix(data, got) {
			t.Fatalf("repair kept %d bytes that are not a prefix of the %d written", len(got), len(data))
		}
		for off := 0; off < len(got); {
			_, n, ok := nextRecord(got[off:], raw)
			if !ok || n <= 0 {
				t.Fatalf("repaired file has a partial record at %d of %d", off, len(got))
			}
			off += n
		}
	})
}
