package powercut

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func TestModulesDependenciesFirst(t *testing.T) {
	dir := t.TempDir()
	dep := `kernel/fs/ext4/ext4.ko.xz: kernel/lib/crc16.ko.xz kernel/fs/mbcache.ko.xz kernel/fs/jbd2/jbd2.ko.xz
kernel/fs/jbd2/jbd2.ko.xz:
kernel/fs/mbcache.ko.xz:
kernel/lib/crc16.ko.xz:
kernel/crypto/crc32c_generic.ko.xz:
kernel/drivers/virtio/virtio.ko.xz:
kernel/drivers/virtio/virtio_ring.ko.xz:
kernel/drivers/virtio/virtio_pci_modern_dev.ko.xz:
kernel/drivers/virtio/virtio_pci_legacy_dev.ko.xz:
kernel/drivers/virtio/virtio_pci.ko.xz: kernel/drivers/virtio/virtio_pci_legacy_dev.ko.xz kernel/drivers/virtio/virtio_pci_modern_dev.ko.xz kernel/drivers/virtio/virtio.ko.xz kernel/drivers/virtio/virtio_ring.ko.xz
kernel/drivers/block/virtio_blk.ko.xz: kernel/drivers/virtio/virtio.ko.xz kernel/drivers/virtio/virtio_ring.ko.xz
kernel/net/core/failover.ko.xz:
kernel/drivers/net/net_failover.ko.xz: kernel/net/core/failover.ko.xz
kernel/drivers/net/virtio_net.ko.xz: kernel/drivers/net/net_failover.ko.xz kernel/net/core/failover.ko.xz kernel/drivers/virtio/virtio.ko.xz kernel/drivers/virtio/virtio_ring.ko.xz
`
	if err := os.WriteFile(filepath.Join(dir, "modules.dep"), []byte(dep), 0o644); err != nil {
		t.Fatal(err)
	}
	mods, err := Kernel{modDir: dir}.Modules()
	if err != nil {
		t.Fatal(err)
	}
	pos := map[string]int{}
	for i, m := range mods {
		pos[modName(m)] = i
	}
	if len(mods) != 14 || len(pos) != 14 {
		t.Fatalf("%d modules, %d distinct: %v", len(mods), len(pos), mods)
	}
	for _, line := range strings.Split(strings.TrimSpace(dep), "\n") {
		mod, deps, _ := strings.Cut(line, ":")
		for _, d := range strings.Fields(deps) {
			if pos[modName(d)] > pos[modName(mod)] {
				t.Errorf("%s loaded after %s, which needs it", modName(d), modName(mod))
			}
		}
	}
}

func TestVersionLess(t *testing.T) {
	for _, c := range []struct {
		a, b string
		less bool
	}{
		{"6.1.0-57-amd64", "6.1.0-58-amd64", true},
		{"6.1.0-9-amd64", "6.1.0-10-amd64", true},
		{"6.12.1-amd64", "6.2.0-amd64", false},
		{"6.1.0-57-amd64", "6.1.0-57-amd64", false},
	} {
		if got := versionLess(c.a, c.b); got != c.less {
			t.Errorf("versionLess(%q, %q) = %v", c.a, c.b, got)
		}
	}
}

// TestCpio checks the initramfs writer against cpio(1), when installed.
func TestCpio(t *testing.T) {
	cpio, err := exec.LookPath("cpio")
	if err != nil {
		missing(t, "cpio", "apt-get install cpio (scripts/deps.sh does)")
	}
	dir := t.TempDir()
	img := filepath.Join(dir, "initramfs.cpio")
	files := []File{
		{Path: "init", Data: []byte("#!/bin/true\n"), Mode: 0o755},
		{Path: "lib/modules/x/kernel/a.ko", Data: bytes.Repeat([]byte{1}, 1001), Mode: 0o644},
		{Path: "etc/modules", Data: []byte("/lib/modules/x/kernel/a.ko\n"), Mode: 0o644},
	}
	if err := writeCpio(img, files); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "out")
	if err := os.Mkdir(out, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(cpio, "-idm", "--quiet", "-F", img)
	cmd.Dir = out
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("cpio: %v\n%s", err, b)
	}
	for _, f := range files {
		b, err := os.ReadFile(filepath.Join(out, f.Path))
		if err != nil || !bytes.Equal(b, f.Data) {
			t.Errorf("%s: %v, %d bytes, want %d", f.Path, err, len(b), len(f.Data))
		}
		if st, err := os.Stat(filepath.Join(out, f.Path)); err == nil && st.Mode().Perm() != f.Mode {
			t.Errorf("%s: mode %v, want %v", f.Path, st.Mode().Perm(), f.Mode)
		}
	}
	for _, d := range []string{"dev", "proc", "sys", "data"} {
		if st, err := os.Stat(filepath.Join(out, d)); err != nil || !st.IsDir() {
			t.Errorf("directory %s missing: %v", d, err)
		}
	}
}
