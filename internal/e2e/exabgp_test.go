package e2e

import (
	"bufio"
	"bytes"
	crand "crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/IBM/sarama"

	"github.com/bgpedge/bgpedge/forwarder"
	"github.com/bgpedge/bgpedge/internal/spooltest"
	"github.com/bgpedge/bgpedge/internal/testenv"
)

// exaProcess is one run of `bgpedge exabgp`, with the test in exaBGP's
// place: it writes exaBGP's JSON lines to the process's stdin and reads (and
// answers) the commands the process writes to its stdout.
type exaProcess struct {
	t       *testing.T
	cmd     *exec.Cmd
	stdin   io.WriteCloser
	cmds    chan string
	exited  chan struct{}
	waitErr error
	log     string
}

func startExaProcess(t *testing.T, bin, config, log string) *exaProcess {
	t.Helper()
	f, err := os.Create(log)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	p := &exaProcess{t: t, cmds: make(chan string, 64), exited: make(chan struct{}), log: log}
	p.cmd = exec.Command(bin, "exabgp", "--config", config)
	p.cmd.Env = testenv.ChildEnviron()
	p.cmd.Stderr = f
	if p.stdin, err = p.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	out, err := p.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			p.cmds <- sc.Text()
		}
		p.waitErr = p.cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-p.exited:
		default:
			_ = p.cmd.Process.Kill()
			<-p.exited
		}
	})
	return p
}

// write sends exaBGP lines; it fails the test if the process has exited.
func (p *exaProcess) write(lines ...string) {
	p.t.Helper()
	for _, l := range lines {
		if _, err := io.WriteString(p.stdin, l+"\n"); err != nil {
			b, _ := os.ReadFile(p.log)
			p.t.Fatalf("write to bgpedge exabgp: %v\n%s", err, b)
		}
	}
}

// command waits for the next command line the process writes to exaBGP.
func (p *exaProcess) command(within time.Duration) string {
	p.t.Helper()
	select {
	case c := <-p.cmds:
		return c
	case <-time.After(within):
		b, _ := os.ReadFile(p.log)
		p.t.Fatalf("no command from bgpedge exabgp within %v\n%s", within, b)
		return ""
	}
}

// runExaBGPCell is the exaBGP row of the matrix: `bgpedge exabgp` holds a
// route central injected that exaBGP never acknowledged (pending in its
// journal) and a backlog of exaBGP events while Kafka is down, and is
// stopped. The restarted process must take events again within readyBound
// (its /readyz on exabgp.metrics_listen ready: spool open, forwarder
// running, while Kafka is still down), announce the pending route again when the neighbor comes up,
// and, once Kafka is back, deliver every event its spool acknowledged, in
// the order exaBGP wrote them.
func runExaBGPCell(t *testing.T, bin string, k *testenv.Kafka, how string) {
	gate := k.Gate(t)
	gate.Close()
	t.Cleanup(gate.Open)
	nats := testenv.StartNATS(t)
	dir := t.TempDir()
	stateDir := filepath.Join(dir, "exabgp")
	spoolDir := filepath.Join(stateDir, "spool")
	spooltest.SeedAtOne(t, spoolDir)
	var rb [4]byte
	_, _ = crand.Read(rb[:])
	prefix := "test.recovery-exabgp." + hex.EncodeToString(rb[:]) + "."
	const agentID, neighbor = "exa-recovery", "127.0.0.2"
	metrics := testenv.LoopbackAddr(t)
	config := filepath.Join(dir, "bgpedge.yaml")
	yaml := fmt.Sprintf(`agent:
  id: %s
  shutdown_timeout: 10s
log:
  level: info
  format: text
forwarder:
  enabled: true
  shutdown_timeout: 5s
  kafka:
    brokers: [%s]
    dial_timeout: 2s
  topics:
    prefix: %s
exabgp:
  state_dir: %s
  metrics_listen: %s
  raw_stream: true
  refresh_on_start: false
  commands:
    enabled: true
    ack_timeout: 1s
    nats:
      url: %s
  policy:
    allowed_verbs: [announce-route, withdraw-route]
    allowed_prefixes: ["100.100.0.0/16"]
    max_prefix_length_v4: 28
    allowed_next_hops: ["192.0.2.0/24"]
    allowed_neighbors: ["%s"]
    max_routes: 10
`, agentID, gate.Addr(), prefix, stateDir, metrics, nats.URL(), neighbor)
	if err := os.WriteFile(config, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	scrape := func() map[string]float64 { return testenv.ScrapeMetrics(metrics) }

	// exaBGP's lines: real 4.2.21 output, each made unique by its counter so
	// that the oracle can tell every line apart and check their order.
	counter := regexp.MustCompile(`"counter": \d+`)
	stateUp := counter.ReplaceAllString(readLines(t, testenv.Shared(t, "exabgp", "live-4.2.21", "state_up.json"))[0], `"counter": 0`)
	var sample []string // the capture's events, without the acks exaBGP interleaved
	for _, l := range readLines(t, testenv.Shared(t, "exabgp", "live-4.2.21", "run1_ebgp_events.jsonl")) {
		if strings.HasPrefix(l, "{") && counter.MatchString(l) {
			sample = append(sample, l)
		}
	}
	var written []string
	next := func() string {
		l := counter.ReplaceAllString(sample[len(written)%len(sample)], fmt.Sprintf(`"counter": %d`, len(written)+1))
		written = append(written, l)
		return l
	}

	p := startExaProcess(t, bin, config, filepath.Join(dir, "run-1.log"))
	ready := func() bool {
		st, err := testenv.ReadinessAt(metrics)
		return err == nil && st.Ready && scrape()["bgpedge_exabgp_spool_available"] == 1
	}
	testenv.Eventually(t, 30*time.Second, "first process ready and spooling", ready)
	for range 2000 {
		p.write(next())
	}
	// Central injects a route; exaBGP (the test) never answers: it times
	// out and stays journaled as pending.
	announced := make(chan error, 1)
	go func() {
		out, err := exec.Command(bin, "routes", "announce", "100.100.7.0/24", "--next-hop", "192.0.2.254", "--neighbor", neighbor,
			"--agent", agentID, "--nats", nats.URL(), "--timeout", "20s").CombinedOutput()
		if !strings.Contains(string(out), `"result": "timeout"`) && !strings.Contains(string(out), `"result":"timeout"`) {
			announced <- fmt.Errorf("announce answered %v: %s", err, out)
			return
		}
		announced <- nil
	}()
	if c := p.command(30 * time.Second); !strings.Contains(c, "announce route 100.100.7.0/24") {
		t.Fatalf("command written to exaBGP: %q", c)
	}
	if err := <-announced; err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 30*time.Second, "the route pending in the journal, the lines spooled", func() bool {
		m := scrape()
		return m["bgpedge_exabgp_injected_routes_pending"] == 1 && m["bgpedge_exabgp_spooled_records_total"] >= 2000
	})
	for range 2000 { // more, up to the stop
		p.write(next())
	}
	switch how {
	case "kill":
		_ = p.cmd.Process.Signal(syscall.SIGKILL)
		<-p.exited
	case "term":
		began := time.Now()
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.exited:
		case <-time.After(stopBound):
			t.Fatalf("SIGTERM did not end bgpedge exabgp within %v", stopBound)
		}
		if p.waitErr != nil {
			b, _ := os.ReadFile(p.log)
			t.Fatalf("bgpedge exabgp after SIGTERM: %v\n%s", p.waitErr, b)
		}
		t.Logf("SIGTERM ended bgpedge exabgp in %v", time.Since(began).Round(time.Millisecond))
	}
	before := readStats(t, spoolDir)

	// The restart: events are taken again, and the neighbor coming up
	// brings the pending route back.
	began := time.Now()
	p = startExaProcess(t, bin, config, filepath.Join(dir, "run-2.log"))
	testenv.Eventually(t, readyBound, "the restarted process ready and spooling", ready)
	t.Logf("restart after %s: spooling after %v; spool of the stopped process ends at seq %d", how, time.Since(began).Round(time.Millisecond), before.LastSeq)
	p.write(stateUp)
	if c := p.command(readyBound); !strings.Contains(c, "announce route 100.100.7.0/24") {
		t.Fatalf("replay written to exaBGP: %q", c)
	}
	p.write("done")
	testenv.Eventually(t, 30*time.Second, "the pending route acknowledged by the replay", func() bool {
		m := scrape()
		return m[`bgpedge_exabgp_replayed_routes_total{result="done"}`] >= 1 && m["bgpedge_exabgp_injected_routes_pending"] == 0
	})
	for range 1000 {
		p.write(next())
	}
	gate.Open()
	var last uint64
	testenv.Eventually(t, drainBound, "every event delivered", func() bool {
		m := scrape()
		last = before.LastSeq + uint64(m["bgpedge_exabgp_spooled_records_total"])
		return uint64(m["bgpedge_forwarder_acked_seq"]) == last && m["bgpedge_exabgp_queue_lines"] == 0
	})
	_ = p.stdin.Close() // exaBGP ends: the process exits once everything read is durable
	select {
	case <-p.exited:
	case <-time.After(stopBound):
		t.Fatal("bgpedge exabgp did not exit after stdin closed")
	}

	// Oracle: every spooled line is in Kafka; the spool holds written lines
	// in the order they were written.
	st := readStats(t, spoolDir)
	if st.LastSeq != last || st.AckedThrough != last {
		t.Fatalf("spool after the drain: last seq %d, acked through %d; want %d", st.LastSeq, st.AckedThrough, last)
	}
	index := make(map[string]int, len(written))
	for i, l := range written {
		index[l] = i
	}
	index[stateUp] = -1
	seen := make([]bool, last+1)
	byseq := make([]string, last+1)
	testenv.ConsumeEach(t, k.Brokers(), prefix+"exabgp.raw", 2*time.Minute, func(m *sarama.ConsumerMessage) {
		agent, seq, _, err := forwarder.ParseMessageID(header(m, forwarder.HeaderID))
		if err != nil || agent != agentID || seq == 0 || seq > last {
			t.Errorf("%s/%d@%d: id %q (%v)", m.Topic, m.Partition, m.Offset, header(m, forwarder.HeaderID), err)
			return
		}
		seen[seq], byseq[seq] = true, string(bytes.TrimRight(m.Value, "\n"))
	})
	prev, missing, unknown, disorder := -1, 0, 0, 0
	for seq := uint64(1); seq <= last; seq++ {
		if !seen[seq] {
			missing++
			continue
		}
		i, ok := index[byseq[seq]]
		switch {
		case !ok:
			unknown++
		case i == -1: // the neighbor's state up, written between the runs
		case i <= prev:
			disorder++
		default:
			prev = i
		}
	}
	if missing+unknown+disorder > 0 {
		t.Errorf("of %d spooled events: %d missing in Kafka, %d not a line exaBGP wrote, %d out of order", last, missing, unknown, disorder)
	}
	t.Logf("oracle: %d lines written, %d spooled (%d by the stopped process), all in Kafka in order; %d lost in the stop (%s)",
		len(written)+1, last, before.LastSeq, len(written)+1-int(last), how)
}

func readLines(t *testing.T, path string) []string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		if strings.TrimSpace(l) != "" {
			out = append(out, l)
		}
	}
	return out
}
