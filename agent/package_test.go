package agent

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
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
	runPackageScript(t, "package-test.sh", "it installs the .deb with dpkg and purges it",
		[][2]string{{"dpkg", "dpkg"}, {"rpm", "rpm"}, {"systemd-analyze", "systemd"}})
}

// TestPackageUnderSystemd installs the .deb into a Debian bookworm booted
// with systemd-nspawn (scripts/nspawn-test.sh): the unit is enabled and not
// started by the install, starts (READY=1) and serves /readyz with the
// shipped configuration, reloads, stops cleanly, is restarted by a reinstall
// and stopped by dpkg -r; then `bgpedge service install|start|status|stop|
// uninstall` under the same systemd. The container's root is debootstrapped
// once (a minute or two) and cached in $BGPEDGE_CACHE; later runs take
// seconds.
func TestPackageUnderSystemd(t *testing.T) {
	runPackageScript(t, "nspawn-test.sh", "it mounts an overlay and boots a container",
		[][2]string{{"systemd-nspawn", "systemd-container"}, {"debootstrap", "debootstrap"}, {"nsenter", "util-linux"}, {"dpkg-deb", "dpkg"}})
}

// runPackageScript runs scripts/<script> as root and expects its last word
// to be "<script name>: OK". needs lists the binaries (and their Debian
// packages) the script uses.
func runPackageScript(t *testing.T, script, whyRoot string, needs [][2]string) {
	if testing.Short() {
		t.Skip("builds packages and installs them: not in -short")
	}
	if os.Geteuid() != 0 {
		testenv.Missing(t, "root", "run "+script+" as root ("+whyRoot+")")
	}
	for _, n := range needs {
		testenv.Binary(t, n[0], n[1])
	}
	root := testenv.RepoRoot(t)
	ctx, cancel := context.WithTimeout(t.Context(), 15*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(root, "scripts", script))
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "GOFLAGS=") // the scripts build release binaries, not test ones
	// SIGTERM, not SIGKILL: the scripts' traps purge the package or power the
	// container off and unmount its root.
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = time.Minute
	start := time.Now()
	out, err := cmd.CombinedOutput()
	t.Logf("%s", out)
	if err != nil {
		t.Fatalf("scripts/%s: %v", script, err)
	}
	if marker := strings.TrimSuffix(script, ".sh") + ": OK"; !strings.Contains(string(out), marker) {
		t.Fatalf("scripts/%s did not report %q", script, marker)
	}
	t.Logf("took %s", time.Since(start).Round(time.Millisecond))
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
