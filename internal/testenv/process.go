package testenv

import (
	"os"
	"syscall"
	"testing"
	"time"
)

// Terminate sends SIGTERM to p and requires it to exit cleanly within 30 s;
// exited delivers the process's Wait result.
func Terminate(t testing.TB, p *os.Process, exited <-chan error, name string) {
	t.Helper()
	if err := p.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("%s exited with %v after SIGTERM", name, err)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("%s did not exit within 30s of SIGTERM", name)
	}
}
