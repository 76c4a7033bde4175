package testenv

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// BuildBgpedge compiles cmd/bgpedge into a temporary directory, without the
// race detector: end-to-end tests exercise the product as it ships, and each
// package's own tests cover races.
func BuildBgpedge(t testing.TB) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "bgpedge")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/bgpedge")
	cmd.Dir = RepoRoot(t)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/bgpedge: %v\n%s", err, out)
	}
	return bin
}

// ChildEnviron is the environment without BGPEDGE_* variables, which would
// set configuration keys of a bgpedge child process.
func ChildEnviron() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "BGPEDGE_") {
			env = append(env, kv)
		}
	}
	return env
}

// LoopbackAddr is a free 127.0.0.1 address for a server the test starts as
// a separate process (see FreePorts).
func LoopbackAddr(t testing.TB) string {
	t.Helper()
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(FreePorts(t, "127.0.0.1", 1)[0]))
}

// AgentRun runs bgpedge processes one after another with the same
// arguments, as a service manager restarts an agent on the same directories:
// each Start begins the next run, with its own log file in Dir.
type AgentRun struct {
	T    testing.TB
	Bin  string
	Args []string // e.g. run --config FILE
	Dir  string   // run-NN.log files
	HTTP string   // the agent's http.listen address

	runs    int
	cmd     *exec.Cmd
	exited  chan struct{} // closed once cmd has been waited for
	waitErr error         // cmd.Wait's result, set before exited closes
	started time.Time
	log     string
}

// Readiness is what /readyz answers.
type Readiness struct {
	Ready      bool   `json:"ready"`
	Spool      string `json:"spool"`
	BMP        string `json:"bmp"`
	Sink       string `json:"sink"`
	Config     string `json:"config"`
	StartError string `json:"start_error"`
}

// Start begins the next run and waits until it reports ready.
func (r *AgentRun) Start() {
	r.T.Helper()
	r.StartProcess()
	Eventually(r.T, time.Minute, fmt.Sprintf("bgpedge run %d ready", r.runs), func() bool {
		st, err := r.Readiness()
		return err == nil && st.Ready
	})
}

// StartProcess begins the next run and returns at once.
func (r *AgentRun) StartProcess() {
	t := r.T
	t.Helper()
	r.runs++
	r.log = filepath.Join(r.Dir, fmt.Sprintf("run-%02d.log", r.runs))
	f, err := os.Create(r.log)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cmd := exec.Command(r.Bin, r.Args...)
	cmd.Env = ChildEnviron()
	cmd.SysProcAttr = childAttr()
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	r.cmd, r.exited, r.started = cmd, exited, time.Now()
	go func() {
		r.waitErr = cmd.Wait()
		close(exited)
	}()
	t.Cleanup(func() {
		select {
		case <-exited:
		default:
			_ = cmd.Process.Kill()
			<-exited
		}
	})
}

// Readiness asks the running process's /readyz; it fails the test with the
// run's log if the process has exited.
func (r *AgentRun) Readiness() (Readiness, error) {
	r.T.Helper()
	r.Alive()
	return ReadinessAt(r.HTTP)
}

// HTTPStatus is the status code of a GET of path on addr; an error fails
// the test.
func HTTPStatus(t testing.TB, addr, path string) int {
	t.Helper()
	resp, err := http.Get("http://" + addr + path)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// ReadinessAt asks the /readyz of any bgpedge process serving HTTP on addr
// (`run`, `exabgp`). A 503 is not an error: its body says why not ready.
func ReadinessAt(addr string) (Readiness, error) {
	var st Readiness
	resp, err := http.Get("http://" + addr + "/readyz")
	if err != nil {
		return st, err
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return st, err
	}
	if st.Ready != (resp.StatusCode == http.StatusOK) {
		return st, fmt.Errorf("readyz: status %d with ready=%v", resp.StatusCode, st.Ready)
	}
	return st, nil
}

// Alive fails the test with the run's log if the process has exited.
func (r *AgentRun) Alive() {
	r.T.Helper()
	select {
	case <-r.exited:
		b, _ := os.ReadFile(r.log)
		r.T.Fatalf("bgpedge run %d exited by itself: %v\n%s", r.runs, r.waitErr, b)
	default:
	}
}

// Kill sends SIGKILL and reaps the process; it returns how long it ran.
func (r *AgentRun) Kill() time.Duration {
	r.T.Helper()
	r.Alive()
	if err := r.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		r.T.Fatalf("kill -9: %v", err)
	}
	<-r.exited
	return time.Since(r.started)
}

// Stop ends the run with SIGTERM and requires exit status 0; it returns how
// long the process took to exit.
func (r *AgentRun) Stop() time.Duration {
	r.T.Helper()
	d, err := r.Terminate()
	if err != nil {
		r.T.Fatalf("bgpedge run %d after SIGTERM: %v\n%s", r.runs, err, r.Log())
	}
	return d
}

// Terminate ends the run with SIGTERM and returns how long the process took
// to exit and its exit error.
func (r *AgentRun) Terminate() (time.Duration, error) {
	r.T.Helper()
	r.Alive()
	began := time.Now()
	if err := r.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		r.T.Fatal(err)
	}
	<-r.exited
	return time.Since(began), r.waitErr
}

// Started is when the current run began.
func (r *AgentRun) Started() time.Time { return r.started }

// Log is the current run's output so far.
func (r *AgentRun) Log() string {
	b, _ := os.ReadFile(r.log)
	return string(b)
}

// Metrics scrapes the running process's samples. Labelled samples are keyed
// as exposed, e.g. `name{label="v"}`.
func (r *AgentRun) Metrics() map[string]float64 {
	r.T.Helper()
	r.Alive()
	return ScrapeMetrics(r.HTTP)
}

// ScrapeMetrics reads the samples of the /metrics endpoint at addr, keyed as
// exposed (`name` or `name{label="v"}`); empty when it does not answer.
func ScrapeMetrics(addr string) map[string]float64 {
	out := map[string]float64{}
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		return out
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		if f, err := strconv.ParseFloat(line[i+1:], 64); err == nil {
			out[line[:i]] = f
		}
	}
	return out
}

// Replay is `bgpedge replay` streaming to an agent as routers do, until
// Stop.
type Replay struct {
	t       testing.TB
	cmd     *exec.Cmd
	out     bytes.Buffer
	exited  chan struct{}
	waitErr error
}

// StartReplay starts `bgpedge replay` with args; it is killed when the test
// ends if still running.
func StartReplay(t testing.TB, bin string, args ...string) *Replay {
	t.Helper()
	r := &Replay{t: t, exited: make(chan struct{})}
	r.cmd = exec.Command(bin, append([]string{"replay"}, args...)...)
	r.cmd.Env = ChildEnviron()
	r.cmd.SysProcAttr = childAttr()
	r.cmd.Stdout, r.cmd.Stderr = &r.out, &r.out
	if err := r.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		r.waitErr = r.cmd.Wait()
		close(r.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-r.exited:
		default:
			_ = r.cmd.Process.Kill()
			<-r.exited
		}
	})
	return r
}

// Alive fails the test if the replay has ended by itself.
func (r *Replay) Alive() {
	r.t.Helper()
	select {
	case <-r.exited:
		r.t.Fatalf("replay ended before it was stopped: %v\n%s", r.waitErr, r.out.String())
	default:
	}
}

// Stop ends the replay with SIGTERM, as routers closing their sessions,
// requires a clean exit within 30 s and returns its output.
func (r *Replay) Stop() string {
	r.t.Helper()
	r.Alive()
	if err := r.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		r.t.Fatal(err)
	}
	select {
	case <-r.exited:
	case <-time.After(30 * time.Second):
		r.t.Fatal("replay did not stop on SIGTERM")
	}
	if r.waitErr != nil {
		r.t.Fatalf("replay: %v\n%s", r.waitErr, r.out.String())
	}
	return r.out.String()
}
