// Package testenv gives tests the real components they need — a Kafka broker,
// a NATS server, external binaries, the shared captures — and fails (under CI)
// or skips with instructions (elsewhere) when one is missing.
package testenv

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

// InCI reports whether the tests run under CI, where a missing component fails.
func InCI() bool { return os.Getenv("CI") != "" }

// Missing fails the test under CI and skips it elsewhere, with how to provide the component.
func Missing(t testing.TB, what, how string) {
	t.Helper()
	if InCI() {
		t.Fatalf("%s is required under CI and was not found: %s", what, how)
	}
	t.Skipf("%s not available (%s)", what, how)
}

// KafkaBrokers returns the addresses of the real Kafka broker started by
// scripts/kafka.sh, from BGPEDGE_TEST_KAFKA (comma-separated host:port).
func KafkaBrokers(t testing.TB) []string {
	t.Helper()
	v := os.Getenv("BGPEDGE_TEST_KAFKA")
	if v == "" {
		Missing(t, "Kafka broker", "run the tests with `make test`, or start one with `scripts/kafka.sh start` and set BGPEDGE_TEST_KAFKA=127.0.0.1:9092")
	}
	return strings.Split(v, ",")
}

// Binary returns the path of an external program (exabgp, gobgpd, tshark, …).
func Binary(t testing.TB, name, debianPackage string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		for _, dir := range []string{"/usr/sbin", "/usr/lib/frr"} {
			if c := filepath.Join(dir, name); fileExists(c) {
				return c
			}
		}
		Missing(t, name, "install it with `apt-get install "+debianPackage+"` (scripts/deps.sh does)")
	}
	return p
}

// RepoRoot is the checkout's top directory.
func RepoRoot(t testing.TB) string {
	t.Helper()
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		t.Fatal("cannot locate testenv source file")
	}
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

// Shared returns a path under ../shared (captures, exaBGP samples, lab configs),
// or BGPEDGE_SHARED if set.
func Shared(t testing.TB, elem ...string) string {
	t.Helper()
	base := os.Getenv("BGPEDGE_SHARED")
	if base == "" {
		base = filepath.Join(RepoRoot(t), "..", "shared")
	}
	p := filepath.Join(append([]string{base}, elem...)...)
	if _, err := os.Stat(p); err != nil {
		Missing(t, "shared test data "+p, "put the test-data checkout (bmpdata/, exabgp/) at ../shared beside this repository, or set BGPEDGE_SHARED to it")
	}
	return p
}

// BMPCaptures lists every capture of the shared BMP data: the raw streams
// and the pcap/pcapng files, at least min of them (fewer means the data is
// incomplete, which fails the test).
func BMPCaptures(t testing.TB, min int) []string {
	t.Helper()
	dir := Shared(t, "bmpdata")
	var files []string
	for _, pattern := range []string{"raw/*", "pcap/*/*"} {
		m, err := filepath.Glob(filepath.Join(dir, pattern))
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, m...)
	}
	if len(files) < min {
		t.Fatalf("found only %d captures under %s", len(files), dir)
	}
	return files
}

// Eventually polls cond every few milliseconds until it returns true or the
// timeout passes, then fails the test with msg. Tests poll; they never sleep and hope.
func Eventually(t testing.TB, timeout time.Duration, msg string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	wait := time.Millisecond
	for {
		if cond() {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v: %s", timeout, msg)
		}
		time.Sleep(wait) // poll interval, not a synchronisation point
		if wait < 100*time.Millisecond {
			wait *= 2
		}
	}
}

// Poll calls cond every 100 ms until it reports done or timeout passes, and
// returns whether it did and cond's last state: for a caller whose failure
// should say what it saw last, and which decides whether that is fatal.
func Poll(timeout time.Duration, cond func() (done bool, state string)) (bool, string) {
	for deadline := time.Now().Add(timeout); ; {
		done, state := cond()
		if done || time.Now().After(deadline) {
			return done, state
		}
		time.Sleep(100 * time.Millisecond) // poll interval, not a synchronisation point
	}
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// ExaBGP5 returns the exaBGP 5 that scripts/deps.sh installs from PyPI into
// a cached virtualenv (Debian ships 4.2), named by BGPEDGE_EXABGP5.
func ExaBGP5(t testing.TB) string {
	t.Helper()
	p := os.Getenv("BGPEDGE_EXABGP5")
	if p == "" || !fileExists(p) {
		Missing(t, "exaBGP 5", "scripts/deps.sh installs it into .cache/ from PyPI and scripts/test.sh sets BGPEDGE_EXABGP5 to it")
	}
	return p
}
