package e2e

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bgpedge/bgpedge/forwarder"
	"github.com/bgpedge/bgpedge/internal/testenv"
)

// localAgent is `bgpedge run` started in its own working directory, so the
// relative paths of configs/local.yaml (./.cache/...) land there, with the
// listen addresses moved to free ports through the environment.
type localAgent struct {
	t         *testing.T
	bin, dir  string
	http, bmp string
	cmd       *exec.Cmd
	log       bytes.Buffer
	exited    chan struct{}
}

func startLocalAgent(t *testing.T, bin, dir, config string, env ...string) *localAgent {
	t.Helper()
	a := &localAgent{t: t, bin: bin, dir: dir, http: testenv.LoopbackAddr(t), bmp: testenv.LoopbackAddr(t), exited: make(chan struct{})}
	a.cmd = exec.Command(bin, "run", "--config", config)
	a.cmd.Dir = dir
	a.cmd.Env = append(testenv.ChildEnviron(), append([]string{"BGPEDGE_HTTP_LISTEN=" + a.http, "BGPEDGE_BMP_LISTEN=" + a.bmp}, env...)...)
	a.cmd.Stdout, a.cmd.Stderr = &a.log, &a.log
	if err := a.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		_ = a.cmd.Wait()
		close(a.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-a.exited:
		default:
			_ = a.cmd.Process.Kill()
			<-a.exited
		}
	})
	testenv.Eventually(t, time.Minute, "bgpedge run ready", func() bool {
		a.alive()
		resp, err := http.Get("http://" + a.http + "/readyz")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		var st testenv.Readiness
		return json.NewDecoder(resp.Body).Decode(&st) == nil && st.Ready && st.Sink == forwarder.SinkFile
	})
	return a
}

func (a *localAgent) alive() {
	a.t.Helper()
	select {
	case <-a.exited:
		a.t.Fatalf("bgpedge run exited:\n%s", a.log.String())
	default:
	}
}

// stop ends the agent with SIGTERM and requires a clean exit.
func (a *localAgent) stop() {
	a.t.Helper()
	a.alive()
	_ = a.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-a.exited:
	case <-time.After(stopBound):
		a.t.Fatalf("bgpedge run did not stop on SIGTERM:\n%s", a.log.String())
	}
	if !a.cmd.ProcessState.Success() {
		a.t.Fatalf("bgpedge run: %v\n%s", a.cmd.ProcessState, a.log.String())
	}
}

// replay sends a capture to the agent as one router session, to the end.
func (a *localAgent) replay(file string) {
	a.t.Helper()
	out, err := exec.Command(a.bin, "replay", "--file", file, "--to", a.bmp, "--drain", "30s").CombinedOutput()
	if err != nil {
		a.t.Fatalf("replay %s: %v\n%s", file, err, out)
	}
}

// rawBytes is the bmp.raw stream of a file sink directory, its files
// concatenated in order.
func rawBytes(t *testing.T, dir string) []byte {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(dir, "bmp.raw", "*.bmp"))
	if err != nil {
		t.Fatal(err)
	}
	var b []byte
	for _, f := range files { // Glob sorts; the names start with the file counter
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		b = append(b, data...)
	}
	return b
}

// The README's first steps (acceptance 5 of issue 17): `bgpedge run --config
// configs/local.yaml` with nothing else running, a shared capture replayed
// into it, and `bgpedge tail --file .cache/out --stream bmp.route.loc-rib`
// printing the decoded loc-rib routes.
func TestNewcomerPath(t *testing.T) {
	t.Parallel()
	bin := testenv.BuildBgpedge(t)
	capture := testenv.Shared(t, "bmpdata", "raw", "gobgp-3.10.0-loopback.bmp")
	want, err := os.ReadFile(capture)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	a := startLocalAgent(t, bin, dir, filepath.Join(testenv.RepoRoot(t), "configs", "local.yaml"))
	a.replay(capture)
	out := filepath.Join(dir, ".cache", "out")
	// The raw stream is written in the same fsync'd batches as the events:
	// once it holds the whole capture, so do the event streams.
	testenv.Eventually(t, 30*time.Second, "the capture in .cache/out/bmp.raw", func() bool {
		a.alive()
		return len(rawBytes(t, out)) >= len(want)
	})
	if got := rawBytes(t, out); !bytes.Equal(got, want) {
		t.Errorf("bmp.raw holds %d bytes that differ from the %d of the capture", len(got), len(want))
	}

	tail := exec.Command(bin, "tail", "--file", ".cache/out", "--stream", "bmp.route.loc-rib")
	tail.Dir = dir
	human, err := tail.CombinedOutput()
	if err != nil {
		t.Fatalf("tail: %v\n%s", err, human)
	}
	tail = exec.Command(bin, "tail", "--file", ".cache/out", "--stream", "bmp.route.loc-rib", "--json")
	tail.Dir = dir
	js, err := tail.Output()
	if err != nil {
		t.Fatalf("tail --json: %v", err)
	}
	ids := map[string]bool{}
	sc := bufio.NewScanner(bytes.NewReader(js))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var m struct {
			ID    string `json:"id"`
			Event struct {
				Type string `json:"type"`
				Peer struct {
					Type string `json:"type"`
				} `json:"peer"`
				Route struct {
					Prefix string `json:"prefix"`
					Action string `json:"action"`
				} `json:"route"`
			} `json:"event"`
		}
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("tail --json line %q: %v", sc.Text(), err)
		}
		if m.Event.Type != "route" || m.Event.Peer.Type != "loc-rib" || (m.Event.Route.Prefix == "" && m.Event.Route.Action != "end-of-rib") {
			t.Errorf("not a decoded loc-rib route: %s", sc.Text())
		}
		if ids[m.ID] {
			t.Errorf("id %s twice", m.ID)
		}
		ids[m.ID] = true
	}
	lines := strings.Split(strings.TrimSpace(string(human)), "\n")
	if len(ids) < 3 || len(lines) != len(ids) {
		t.Fatalf("tail printed %d routes (%d in --json); want the capture's loc-rib routes:\n%s", len(lines), len(ids), human)
	}
	if !strings.Contains(lines[0], "announce") || !strings.Contains(lines[0], "bmp.route.loc-rib/") {
		t.Errorf("first line %q: want where it is and the route", lines[0])
	}
	a.stop()
	t.Logf("%d loc-rib routes read back with bgpedge tail --file, e.g.\n%s", len(ids), lines[0])
}

// A raw file of the file sink replays with `bgpedge replay` into a second
// `bgpedge run`, whose raw file is then the same bytes (acceptance 2 of
// issue 17: a raw file replayed yields the same raw bytes).
func TestFileSinkRawReplays(t *testing.T) {
	t.Parallel()
	bin := testenv.BuildBgpedge(t)
	capture := testenv.Shared(t, "bmpdata", "raw", "frr-8.0.1-6wind__daisy-58.bmp")
	want, err := os.ReadFile(capture)
	if err != nil {
		t.Fatal(err)
	}
	config := filepath.Join(testenv.RepoRoot(t), "configs", "local.yaml")
	var raws [2][]byte
	source := capture
	for i := range raws {
		dir := t.TempDir()
		a := startLocalAgent(t, bin, dir, config)
		a.replay(source)
		out := filepath.Join(dir, ".cache", "out")
		testenv.Eventually(t, 30*time.Second, fmt.Sprintf("run %d: the replay in bmp.raw", i+1), func() bool {
			a.alive()
			return len(rawBytes(t, out)) >= len(want)
		})
		a.stop()
		raws[i] = rawBytes(t, out)
		files, _ := filepath.Glob(filepath.Join(out, "bmp.raw", "*.bmp"))
		if len(files) != 1 {
			t.Fatalf("run %d: %d raw files, want one", i+1, len(files))
		}
		source = files[0] // the next run replays this run's file
	}
	if !bytes.Equal(raws[0], want) {
		t.Errorf("first run's raw file (%d bytes) is not the capture (%d bytes)", len(raws[0]), len(want))
	}
	if !bytes.Equal(raws[1], raws[0]) {
		t.Errorf("the raw file replayed into a second bgpedge run gave %d bytes that differ from its own %d", len(raws[1]), len(raws[0]))
	}
	t.Logf("%d bytes: capture → run 1's bmp.raw file → replay → run 2's bmp.raw file, identical", len(raws[1]))
}
