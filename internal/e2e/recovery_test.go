package e2e

import (
	"bytes"
	crand "crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/IBM/sarama"

	"github.com/bgpedge/bgpedge/bmp"
	"github.com/bgpedge/bgpedge/bmp/capture"
	"github.com/bgpedge/bgpedge/buffer"
	"github.com/bgpedge/bgpedge/forwarder"
	"github.com/bgpedge/bgpedge/internal/spooltest"
	"github.com/bgpedge/bgpedge/internal/testenv"
)

// The bounds the matrix holds every restart to.
const (
	// readyBound: a restarted agent reports ready, or exactly why it cannot
	// serve, within this, whatever state its predecessor left.
	readyBound = 30 * time.Second
	// stopBound: SIGTERM ends the process within agent.shutdown_timeout
	// (10s below) plus the close grace, whatever state it is in.
	stopBound = 20 * time.Second
	// drainBound: once the sinks are back, everything is delivered within this.
	drainBound = 3 * time.Minute
)

// recoveryCell is one state of the matrix.
type recoveryCell struct {
	name     string
	sessions int // router sessions streaming; default 4
	// buffer is the buffer section's keys besides dir (YAML, two-space indented).
	buffer string
	// tmpfs, when non-zero, puts the spool on a filesystem of this many
	// bytes, most of it taken by a file the restore step deletes.
	tmpfs int64
	// nats adds a JetStream fallback that is down with Kafka.
	nats bool
	// kafkaUp keeps Kafka reachable while the state is reached.
	kafkaUp bool
	// reached reports whether the running agent is in the state.
	reached func(m map[string]float64) bool
	// fleet makes the agent poll a central document server (recoveryEnv.fleet).
	fleet bool
	// after runs once the state is reached, before the stop.
	after func(e *recoveryEnv)
	// stopped changes the stopped agent's files (e.g. damages the spool).
	stopped func(e *recoveryEnv)
	// restarted checks the restarted agent once it answered.
	restarted func(e *recoveryEnv)
	// unready, when set, is what /readyz's start_error must say while the
	// restarted agent cannot serve the state, until restore.
	unready string
	// stopError, when set, lets SIGTERM end the agent with an error status,
	// provided its log says this: what it could not save before its deadline.
	stopError string
}

// TestRecoveryMatrix is acceptance item 2 of issue 15 (and item 1: the
// full-spool rows). For each state and each way of stopping (SIGKILL,
// SIGTERM) it runs `bgpedge run` with four router sessions replaying the
// 100k-route capture, brings the agent into the state, stops it, restarts
// it on the same directories and requires it ready (or, for a state it
// cannot serve, reporting why) within readyBound; then gives the sinks back,
// stops the routers, and requires the spool drained within drainBound.
//
// The oracle: every seq the spool handed out is in Kafka (a BMP message in
// bmp.raw, a synthetic peer-down in bmp.peer), except seqs the agent
// reported it gave up — segments dropped under drop-oldest (logged with
// their range) and a quarantined segment (up to where the restarted spool
// went on) — and each router's raw messages, in seq order, are the capture
// in order, starting over only where a session started over.
func TestRecoveryMatrix(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: runs the real binary through 14 restarts against a private Kafka broker")
	}
	capturePath := testenv.Shared(t, "bmpdata", "raw", "gobgp-3.10-all-dump-100k.bmp.gz")
	msgs := loadMessages(t, capturePath)
	bin := testenv.BuildBgpedge(t)
	k := testenv.KafkaControlWith(t, testenv.KafkaOptions{Gated: true})

	cells := []recoveryCell{
		{
			name:    "spool full, block",
			buffer:  "  max_bytes: 4MiB\n  policy: block\n",
			reached: func(m map[string]float64) bool { return m["bgpedge_buffer_append_blocked_total"] > 0 },
		},
		{
			name:   "spool full, drop-oldest",
			buffer: "  max_bytes: 4MiB\n  policy: drop-oldest\n",
			reached: func(m map[string]float64) bool {
				return m[`bgpedge_buffer_dropped_records_total{reason="capacity"}`] > 0
			},
		},
		{
			name:    "disk full",
			buffer:  "  max_bytes: 1GiB\n",
			tmpfs:   24 << 20,
			reached: func(m map[string]float64) bool { return m[`bgpedge_buffer_commit_errors_total{reason="full"}`] > 0 },
			unready: "spool disk full",
			// Nothing can be made durable: what sessions had read when
			// stopped is lost (the crash window), and the stop says so.
			stopError: "shutdown deadline passed before the spool accepted",
		},
		{
			name:    "kafka down",
			reached: appendedAtLeast(20_000),
		},
		{
			name:    "kafka and nats down",
			nats:    true,
			reached: appendedAtLeast(20_000),
		},
		{
			name:    "corrupt active segment",
			reached: appendedAtLeast(20_000),
			stopped: corruptActiveSegment,
		},
		{
			name:      "fleet document pending a restart",
			fleet:     true,
			reached:   appendedAtLeast(20_000),
			after:     publishRestartOnlyDocument,
			restarted: pendingDocumentApplied,
		},
		{
			name:     "100 bmp sessions up",
			sessions: 100,
			kafkaUp:  true,
			reached: func(m map[string]float64) bool {
				return m["bgpedge_bmp_sessions_active"] == 100 && m["bgpedge_buffer_appended_records_total"] >= 20_000
			},
		},
	}
	for _, c := range cells {
		for _, how := range []string{"kill", "term"} {
			t.Run(c.name+"/"+how, func(t *testing.T) {
				runRecoveryCell(t, bin, k, msgs, capturePath, c, how)
			})
		}
	}
	for _, how := range []string{"kill", "term"} {
		t.Run("exabgp with a pending journaled route/"+how, func(t *testing.T) {
			runExaBGPCell(t, bin, k, how)
		})
	}
}

func appendedAtLeast(n float64) func(map[string]float64) bool {
	return func(m map[string]float64) bool { return m["bgpedge_buffer_appended_records_total"] >= n }
}

// recoveryEnv is one cell's run.
type recoveryEnv struct {
	t        *testing.T
	dir      string
	spoolDir string
	agent    *testenv.AgentRun
	fleet    *fleetServer
	// lost are seq ranges the agent reported giving up; never handed out
	// again.
	lost []seqRange
}

type seqRange struct{ lo, hi uint64 } // inclusive

func runRecoveryCell(t *testing.T, bin string, k *testenv.Kafka, msgs [][]byte, capturePath string, c recoveryCell, how string) {
	gate := k.Gate(t)
	if c.kafkaUp {
		gate.Open()
	} else {
		gate.Close()
	}
	t.Cleanup(gate.Open)
	sessions := c.sessions
	if sessions == 0 {
		sessions = 4
	}
	e := &recoveryEnv{t: t, dir: t.TempDir()}
	e.spoolDir = filepath.Join(e.dir, "spool")
	var filler string
	if c.tmpfs > 0 {
		e.spoolDir = mountTmpfs(t, filepath.Join(e.dir, "small-disk"), c.tmpfs)
		filler = filepath.Join(filepath.Dir(e.spoolDir), "filler")
		if err := os.WriteFile(filler, make([]byte, c.tmpfs-8<<20), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	spooltest.SeedAtOne(t, e.spoolDir) // seqs from 1: the oracle indexes by seq
	var nats *testenv.NATS
	natsYAML := ""
	if c.nats {
		nats = testenv.StartNATS(t)
		natsYAML = fmt.Sprintf("  failover_after: 2s\n  nats:\n    enabled: true\n    url: %s\n    stream: RECOVERY\n    create_stream: true\n", nats.URL())
		nats.Stop(t)
	}
	fleetYAML := ""
	if c.fleet {
		e.fleet = newFleetServer(t)
		fleetYAML = fmt.Sprintf("fleet:\n  enabled: true\n  http_url: %s\n  poll_interval: 1s\n", e.fleet.srv.URL)
	}
	var rb [4]byte
	_, _ = crand.Read(rb[:])
	prefix := "test.recovery." + hex.EncodeToString(rb[:]) + "."
	const agentID = "recovery"
	bmpAddr := testenv.LoopbackAddr(t)
	config := filepath.Join(e.dir, "bgpedge.yaml")
	e.agent = &testenv.AgentRun{T: t, Bin: bin, Args: []string{"run", "--config", config}, Dir: e.dir, HTTP: testenv.LoopbackAddr(t)}
	yaml := fmt.Sprintf(`agent:
  id: %s
  state_dir: %s
  shutdown_timeout: 10s
http:
  listen: %s
log:
  level: info
  format: text
buffer:
  dir: %s
  segment_bytes: 1MiB
%sbmp:
  listen: %s
  encoding:
    raw: true
    json: true
    state_dir: %s
forwarder:
  enabled: true
  shutdown_timeout: 5s
%s  kafka:
    brokers: [%s]
    dial_timeout: 2s
  topics:
    prefix: %s
%s`, agentID, filepath.Join(e.dir, "state"), e.agent.HTTP, e.spoolDir, c.buffer, bmpAddr, filepath.Join(e.dir, "bmpstate"),
		natsYAML, gate.Addr(), prefix, fleetYAML)
	if err := os.WriteFile(config, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	e.agent.Start()

	replay := testenv.StartReplay(t, bin, "--file", capturePath, "--to", bmpAddr,
		"--sessions", strconv.Itoa(sessions), "--loop", "1000", "--rate", "30000", "--drain", "0", "--reconnect", "50ms")

	testenv.Eventually(t, 2*time.Minute, "the agent reaches the state", func() bool { return c.reached(e.agent.Metrics()) })
	if c.after != nil {
		c.after(e)
	}
	e.collectDrops()
	switch how {
	case "kill":
		e.agent.Kill()
	case "term":
		d, err := e.agent.Terminate()
		if err != nil && (c.stopError == "" || !strings.Contains(e.agent.Log(), c.stopError)) {
			t.Fatalf("SIGTERM: %v\n%s", err, e.agent.Log())
		}
		if d > stopBound {
			t.Errorf("SIGTERM took %v to end the agent, want within %v", d.Round(time.Millisecond), stopBound)
		}
	}
	e.collectDrops()
	if c.stopped != nil {
		c.stopped(e)
	}

	// The restart, with the state still there and the routers reconnecting.
	began := time.Now()
	e.agent.StartProcess()
	var st testenv.Readiness
	testenv.Eventually(t, readyBound+5*time.Second, "the restarted agent ready or saying why not", func() bool {
		var err error
		st, err = e.agent.Readiness()
		return err == nil && (st.Ready || c.unready != "" && strings.Contains(st.StartError, c.unready))
	})
	d := time.Since(began)
	switch {
	case d > readyBound:
		t.Errorf("restart answered %+v after %v, want within %v", st, d.Round(time.Millisecond), readyBound)
	case !st.Ready:
		t.Logf("restart after %s: not ready after %v, as expected: %s", how, d.Round(time.Millisecond), st.StartError)
	default:
		t.Logf("restart after %s: ready after %v", how, d.Round(time.Millisecond))
	}
	if c.restarted != nil {
		c.restarted(e)
	}

	// The routers stop, the sinks and the disk come back, everything drains.
	replay.Stop()
	if filler != "" {
		if err := os.Remove(filler); err != nil {
			t.Fatal(err)
		}
	}
	gate.Open()
	if nats != nil {
		nats.Start(t)
	}
	testenv.Eventually(t, drainBound, "routers gone and the spool drained", func() bool {
		st, err := e.agent.Readiness()
		m := e.agent.Metrics()
		return err == nil && st.Ready && m["bgpedge_bmp_sessions_active"] == 0 && m["bgpedge_buffer_records"] == 0
	})
	e.collectDrops()
	e.agent.Stop()
	e.collectDrops()
	e.check(k.Brokers(), prefix, agentID, msgs, sessions)
}

// collectDrops reads the ranges that drop-oldest reported in every run's log.
func (e *recoveryEnv) collectDrops() {
	re := regexp.MustCompile(`spool dropped unacknowledged records.*first_seq=(\d+) last_seq=(\d+)`)
	logs, _ := filepath.Glob(filepath.Join(e.dir, "run-*.log"))
	seen := map[seqRange]bool{}
	for _, r := range e.lost {
		seen[r] = true
	}
	for _, l := range logs {
		b, _ := os.ReadFile(l)
		for _, m := range re.FindAllStringSubmatch(string(b), -1) {
			lo, _ := strconv.ParseUint(m[1], 10, 64)
			hi, _ := strconv.ParseUint(m[2], 10, 64)
			if r := (seqRange{lo, hi}); !seen[r] {
				seen[r] = true
				e.lost = append(e.lost, r)
			}
		}
	}
}

// corruptActiveSegment damages the newest segment in the middle of its
// blocks, so that neither it nor its previous commit verifies: the restart
// must quarantine it, go on above every seq it could have held, and serve.
func corruptActiveSegment(e *recoveryEnv) {
	t := e.t
	st := readStats(t, e.spoolDir)
	segs, _ := filepath.Glob(filepath.Join(e.spoolDir, "*.db"))
	if len(segs) == 0 {
		t.Fatal("no segment to damage")
	}
	newest := segs[len(segs)-1] // names sort by first seq
	first, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimPrefix(filepath.Base(newest), "seg-"), ".db"), 10, 64)
	if err != nil {
		t.Fatalf("segment name %s: %v", newest, err)
	}
	b, err := os.ReadFile(newest)
	if err != nil {
		t.Fatal(err)
	}
	// Zero whole pages from a quarter of the file on: block pages, not the
	// meta pages at its start.
	page := 4096
	from := (len(b) / 4 / page) * page
	if from < 2*page {
		from = 2 * page
	}
	if from >= len(b) {
		t.Fatalf("segment %s too small to damage (%d bytes)", newest, len(b))
	}
	clear(b[from:min(len(b), from+16*page)])
	if err := os.WriteFile(newest, b, 0o640); err != nil {
		t.Fatal(err)
	}
	e.agent.StartProcess()
	var next uint64
	testenv.Eventually(t, readyBound, "the restart reports where the spool goes on", func() bool {
		m := regexp.MustCompile(`msg="spool opened" .* next_seq=(\d+)`).FindStringSubmatch(e.agent.Log())
		if m == nil {
			return false
		}
		next, _ = strconv.ParseUint(m[1], 10, 64)
		return true
	})
	testenv.Eventually(t, readyBound, "quarantine counted", func() bool {
		return e.agent.Metrics()["bgpedge_buffer_quarantined_segments_total"] == 1
	})
	if next <= st.LastSeq {
		t.Fatalf("after quarantining segment %d..%d the spool goes on at seq %d: seqs reused", first, st.LastSeq, next)
	}
	e.lost = append(e.lost, seqRange{first, next - 1})
	t.Logf("segment from seq %d (last seq %d) quarantined; the spool goes on at %d", first, st.LastSeq, next)
	// The cell's own restart follows: this run is stopped as the cell stops.
	e.agent.Kill()
}

// check is the oracle over the spool and Kafka.
func (e *recoveryEnv) check(brokers []string, prefix, agentID string, msgs [][]byte, sessions int) {
	t := e.t
	st := readStats(t, e.spoolDir)
	if st.AckedThrough != st.LastSeq {
		t.Fatalf("after the drain: acked through %d, last seq %d", st.AckedThrough, st.LastSeq)
	}
	lost := func(seq uint64) bool {
		for _, r := range e.lost {
			if seq >= r.lo && seq <= r.hi {
				return true
			}
		}
		return false
	}
	type rawMsg struct{ router, value []byte }
	raws := make([]*rawMsg, st.LastSeq+1)
	seen := make([]bool, st.LastSeq+1)
	var bad int
	consume := func(stream string) int {
		return testenv.ConsumeEach(t, brokers, prefix+stream, 2*time.Minute, func(m *sarama.ConsumerMessage) {
			agent, seq, _, err := forwarder.ParseMessageID(header(m, forwarder.HeaderID))
			if err != nil || agent != agentID || seq == 0 || seq > st.LastSeq {
				if bad < 5 {
					t.Errorf("%s/%d@%d: id %q (%v)", m.Topic, m.Partition, m.Offset, header(m, forwarder.HeaderID), err)
				}
				bad++
				return
			}
			seen[seq] = true
			if stream == bmp.StreamRaw {
				raws[seq] = &rawMsg{router: m.Key, value: m.Value}
			}
		})
	}
	raw, peer := consume(bmp.StreamRaw), consume("bmp.peer")
	var missing []uint64
	var given uint64
	next := map[string]int{}
	outOfOrder := 0
	// After seqs given up, each router goes on from wherever its next
	// message is in the capture (whose messages are all distinct).
	var at map[string]int
	if len(e.lost) > 0 {
		at = make(map[string]int, len(msgs))
		for i, m := range msgs {
			at[string(m)] = i
		}
	}
	losses := 0                  // ranges given up so far, in seq order
	resynced := map[string]int{} // router → losses when it last resynced
	for seq := uint64(1); seq <= st.LastSeq; seq++ {
		if lost(seq) {
			given++
			if !lost(seq - 1) {
				losses++
			}
			continue
		}
		if !seen[seq] {
			missing = append(missing, seq)
		}
		m := raws[seq]
		if m == nil {
			continue
		}
		router := string(m.router)
		if resynced[router] < losses {
			resynced[router] = losses
			if i, ok := at[string(m.value)]; ok {
				next[router] = i
			}
		}
		n := next[router]
		switch {
		case bytes.Equal(m.value, msgs[n]):
			next[router] = (n + 1) % len(msgs)
		case bytes.Equal(m.value, msgs[0]):
			next[router] = 1
		default:
			if outOfOrder < 5 {
				t.Errorf("seq %d from %s is not capture message %d nor a new session's first message", seq, m.router, n)
			}
			outOfOrder++
		}
	}
	if len(missing) > 0 {
		t.Errorf("%d of %d seqs missing in Kafka, first %v", len(missing), st.LastSeq, missing[:min(len(missing), 20)])
	}
	if len(next) != sessions {
		t.Errorf("raw messages from %d routers, want %d", len(next), sessions)
	}
	t.Logf("oracle: %d seqs, %d given up as reported or never handed out (%v), %d raw and %d peer messages in Kafka, %d missing, %d out of order",
		st.LastSeq, given, e.lost, raw, peer, len(missing), outOfOrder)
}

func header(m *sarama.ConsumerMessage, key string) string {
	for _, h := range m.Headers {
		if string(h.Key) == key {
			return string(h.Value)
		}
	}
	return ""
}

// readStats opens a stopped agent's spool read-only, as `bgpedge buffer
// stats` does.
func readStats(t *testing.T, dir string) buffer.Stats {
	t.Helper()
	sp, err := buffer.Open(buffer.Options{Dir: dir, ReadOnly: true})
	if err != nil {
		t.Fatalf("open the spool read-only: %v", err)
	}
	defer sp.Close()
	return sp.Stats()
}

// loadMessages splits a raw capture into its BMP messages.
func loadMessages(t *testing.T, path string) [][]byte {
	t.Helper()
	streams, err := capture.Open(path)
	if err != nil || len(streams) != 1 {
		t.Fatalf("capture %s: %d streams, %v", path, len(streams), err)
	}
	var msgs [][]byte
	for data := streams[0].Data; len(data) >= 6; {
		n := int(binary.BigEndian.Uint32(data[1:5]))
		if n < 6 || n > len(data) {
			t.Fatalf("%s: bad BMP length %d at message %d", path, n, len(msgs))
		}
		msgs = append(msgs, data[:n:n])
		data = data[n:]
	}
	return msgs
}

// mountTmpfs mounts a tmpfs of size bytes at dir for the test, and returns
// the spool directory inside it.
func mountTmpfs(t *testing.T, dir string, size int64) string {
	t.Helper()
	if err := os.MkdirAll(dir, 0o750); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size="+strconv.FormatInt(size, 10)); err != nil {
		testenv.Missing(t, "a small filesystem for the full-disk state", "run as root, which may mount a tmpfs ("+err.Error()+")")
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(dir, syscall.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
	return filepath.Join(dir, "spool")
}

// fleetServer serves this agent's central document over HTTP, as
// fleet.http_url expects, and records the status the agent reports.
type fleetServer struct {
	srv *httptest.Server

	mu     sync.Mutex
	doc    []byte
	status []map[string]any
}

func newFleetServer(t *testing.T) *fleetServer {
	f := &fleetServer{}
	f.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		defer f.mu.Unlock()
		switch {
		case r.Method == http.MethodGet && r.URL.Path == "/agent/recovery.yaml" && f.doc != nil:
			sum := sha256.Sum256(f.doc)
			etag := `"` + hex.EncodeToString(sum[:]) + `"`
			if r.Header.Get("If-None-Match") == etag {
				w.WriteHeader(http.StatusNotModified)
				return
			}
			w.Header().Set("ETag", etag)
			w.Header().Set("X-Bgpedge-Revision", "1")
			_, _ = w.Write(f.doc)
		case r.Method == http.MethodPut && r.URL.Path == "/status/recovery.json":
			var st map[string]any
			if err := json.NewDecoder(r.Body).Decode(&st); err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			f.status = append(f.status, st)
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fleetServer) publish(doc []byte) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.doc = doc
}

// reported is the last status the agent reported: its state and the
// document's sha256.
func (f *fleetServer) reported() (state, sha string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.status) == 0 {
		return "", ""
	}
	last := f.status[len(f.status)-1]
	state, _ = last["state"].(string)
	sha, _ = last["sha256"].(string)
	return state, sha
}

// restartOnlyDocument changes a key only a restart applies (buffer.max_bytes).
var restartOnlyDocument = []byte("buffer:\n  max_bytes: 2GiB\n")

// publishRestartOnlyDocument publishes it: the running agent keeps its
// configuration and saves the document pending the next start.
func publishRestartOnlyDocument(e *recoveryEnv) {
	e.fleet.publish(restartOnlyDocument)
	testenv.Eventually(e.t, 30*time.Second, "the document reported pending a restart", func() bool {
		state, _ := e.fleet.reported()
		return state == "pending-restart"
	})
	if _, err := os.Stat(filepath.Join(e.dir, "state", "fleet-pending.yaml")); err != nil {
		e.t.Fatalf("pending document not saved: %v", err)
	}
}

// pendingDocumentApplied: the restart runs the pending document and, ready
// with it, reports it applied and keeps it as the last-good document.
func pendingDocumentApplied(e *recoveryEnv) {
	sum := sha256.Sum256(restartOnlyDocument)
	want := hex.EncodeToString(sum[:])
	testenv.Eventually(e.t, readyBound, "the pending document reported applied after the restart", func() bool {
		state, sha := e.fleet.reported()
		return state == "applied" && sha == want
	})
	for name, exists := range map[string]bool{"fleet-pending.yaml": false, "fleet-last-good.yaml": true} {
		if _, err := os.Stat(filepath.Join(e.dir, "state", name)); (err == nil) != exists {
			e.t.Errorf("%s: exists %v, want %v", name, err == nil, exists)
		}
	}
}
