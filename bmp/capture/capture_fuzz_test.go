package capture

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/bgpedge/bgpedge/internal/testenv"
)

// FuzzRead feeds packet captures (seeded with the shared pcaps, read at
// fuzz start, never copied): Read must not panic, and every stream it
// returns must start like BMP.
func FuzzRead(f *testing.F) {
	files, _ := filepath.Glob(filepath.Join(testenv.Shared(f, "bmpdata", "pcap"), "*", "*.pcap*"))
	for _, p := range files {
		if b, err := os.ReadFile(p); err == nil && len(b) < 64<<10 {
			f.Add(b)
		}
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		ss, _ := Read(bytes.NewReader(b))
		for _, s := range ss {
			if DetectFormat(b) != FormatRaw && !LooksLikeBMP(s.Data) {
				t.Fatalf("stream %v→%v does not start with a BMP header", s.Src, s.Dst)
			}
		}
	})
}
