package agent

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bgpedge/bgpedge/internal/testenv"
)

// TestPackages builds the .deb and .rpm and checks them for real with
// scripts/package-test.sh: reproducible builds, a dpkg install on this
// machine (user, modes, conffile kept on upgrade, remove, purge), the rpm's
// metadata and a scratch-root install, and the unit's verify and security
// score. It installs a package on the host, so it needs root.
func TestPackages(t *testing.T) {
	if testing.Short() {
		t.Skip("builds four packages and installs one: not in -short")
	}
	if os.Geteuid() != 0 {
		testenv.Missing(t, "root", "run the package test as root (it installs the .deb with dpkg and purges it)")
	}
	for _, bin := range []struct{ name, pkg string }{{"dpkg", "dpkg"}, {"rpm", "rpm"}, {"systemd-analyze", "systemd"}} {
		testenv.Binary(t, bin.name, bin.pkg)
	}
	root := testenv.RepoRoot(t)
	ctx, cancel := context.WithTimeout(t.Context(), 15*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(root, "scripts", "package-test.sh"))
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "GOFLAGS=") // the script builds release binaries, not test ones
	out, err := cmd.CombinedOutput()
	t.Logf("%s", out)
	if err != nil {
		t.Fatalf("scripts/package-test.sh: %v", err)
	}
	if !strings.Contains(string(out), "package-test: OK") {
		t.Fatal("package test did not report OK")
	}
}

// TestPackagedUnitMatchesService keeps packaging/bgpedge.service identical
// to the unit `bgpedge service install` writes.
func TestPackagedUnitMatchesService(t *testing.T) {
	got, err := os.ReadFile(filepath.Join(testenv.RepoRoot(t), "packaging", "bgpedge.service"))
	if err != nil {
		t.Fatal(err)
	}
	if want := SystemdUnit(UnitPath, DefaultConfigFile); string(got) != want {
		t.Fatalf("packaging/bgpedge.service differs from SystemdUnit(); regenerate it with\n  go run ./cmd/bgpedge service unit > packaging/bgpedge.service")
	}
}

// TestUnitVerifiesAndIsHardened runs systemd-analyze on the unit with the
// binary path pointing at a real executable (the package test does the
// same on the installed unit).
func TestUnitVerifiesAndIsHardened(t *testing.T) {
	sa := testenv.Binary(t, "systemd-analyze", "systemd")
	bin, err := buildOnce()
	if err != nil {
		t.Fatal(err)
	}
	unit := filepath.Join(t.TempDir(), "bgpedge.service")
	if err := os.WriteFile(unit, []byte(SystemdUnit(bin, DefaultConfigFile)), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(sa, "verify", unit).CombinedOutput(); err != nil {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
	out, err := exec.Command(sa, "security", "--offline=yes", unit).CombinedOutput()
	if err != nil {
		t.Fatalf("systemd-analyze security: %v\n%s", err, out)
	}
	_, after, ok := strings.Cut(string(out), "Overall exposure level for bgpedge.service: ")
	if !ok {
		t.Fatalf("no exposure level in:\n%s", out)
	}
	var score float64
	if _, err := fmt.Sscanf(after, "%f", &score); err != nil {
		t.Fatalf("parse score %q: %v", after, err)
	}
	if score > 2.0 {
		t.Fatalf("exposure %.1f > 2.0:\n%s", score, out)
	}
	t.Logf("systemd-analyze security: exposure %.1f", score)
}
