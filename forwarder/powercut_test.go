package forwarder

import (
	"bytes"
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/IBM/sarama"

	"github.com/bgpedge/bgpedge/buffer"
	"github.com/bgpedge/bgpedge/internal/powercut"
	"github.com/bgpedge/bgpedge/internal/testenv"
	"github.com/bgpedge/bgpedge/record"
)

const (
	powercutSessions = 4
	// powercutRate paces the four sessions together (messages per second):
	// about what the emulated machine spools while leaving it time to
	// breathe, so a cut finds a stream in progress, not a backlog.
	powercutRate = 2000
	powercutBMP  = 11019 // the agent's BMP port in the guest
)

// TestPowerCutAgent is acceptance item 4 of issue 15: the whole agent under
// a real kernel and power cuts. `bgpedge run` (static build) runs in a qemu
// machine (package powercut) with its spool, state and BMP journal on an
// ext4 virtual disk and the forwarder off; the host streams the 100k-route
// capture as four BMP sessions into it through qemu's user-mode network
// (one host loopback port forwarded to the guest's BMP port, restrict=on:
// the guest cannot connect out), and cuts the power
// BGPEDGE_POWERCUT_AGENT_CYCLES times (default 10): at a random moment of
// the stream, or (one cycle in five) while the agent starts up and
// recovers. The sessions reconnect after every reboot and start over, as a
// router does. Before the agent starts, the guest opens the spool read-only
// and reports where it ends; while the agent runs it reports what the agent
// has made durable (bgpedge_buffer_appended_records_total).
//
// After the last cut the host recovers the disk image itself (e2fsck
// replays the journal), copies the agent's directory out (debugfs) and
// checks:
//   - every reboot opened the spool with nothing quarantined, and it never
//     ended before what the agent had reported durable (nothing acknowledged
//     lost, no seq handed out twice);
//   - every spooled BMP record is, byte for byte, the message the host sent
//     at that position of that session: each session's records are a prefix
//     of what it sent, in order, nothing invented or corrupted;
//   - `bgpedge run` on the host, on that spool, forwards every BMP record to
//     the test broker: each seq exactly as spooled (key and value).
//
// It reports, per cut, what the host had sent, what the agent had reported
// durable, what survived, and the loss: messages sent but not spooled,
// which must not exceed what was in flight (sent, not yet reported
// durable).
func TestPowerCutAgent(t *testing.T) {
	powercut.Skip(t)
	cycles := powercut.EnvInt(t, "BGPEDGE_POWERCUT_AGENT_CYCLES", 10)
	rate := powercut.EnvInt(t, "BGPEDGE_POWERCUT_RATE", powercutRate)
	brokers := testenv.KafkaBrokers(t)
	capture := testenv.Shared(t, "bmpdata", "raw", "gobgp-3.10-all-dump-100k.bmp.gz")
	msgs, err := loadCapture(capture)
	if err != nil {
		t.Fatal(err)
	}
	k := powercut.FindKernel(t)
	bin := filepath.Join(t.TempDir(), "bgpedge")
	powercut.GoBuild(t, bin, powercut.RepoRoot(), "build", "./cmd/bgpedge")
	const guestConfig = `agent:
  id: powercut
  state_dir: /data/bgpedge/state
  shutdown_timeout: 5s
http:
  listen: 127.0.0.1:9611
log:
  level: info
  format: text
buffer:
  dir: /data/bgpedge/spool
  segment_bytes: 16MiB
  max_bytes: 1GiB
bmp:
  listen: 10.0.2.15:11019
  encoding:
    raw: true
    json: false
    state_dir: /data/bgpedge/bmp
forwarder:
  enabled: false
`
	initrd := powercut.Initramfs(t, k, "agent", []powercut.File{
		{Path: "bin/bgpedge", Src: bin, Mode: 0o755},
		{Path: "etc/bgpedge.yaml", Data: []byte(guestConfig), Mode: 0o644},
	})
	dir := powercut.WorkDir(t)
	disk := filepath.Join(dir, "disk.img")
	powercut.NewDisk(t, disk, 2<<30)
	port := testenv.FreePorts(t, "127.0.0.1", 1)[0]
	m := powercut.Machine{
		Kernel: k, Initramfs: initrd, Disk: disk,
		Env:         []string{"PCMODE=agent", "PCSPOOL=/data/bgpedge/spool"},
		Command:     []string{"/bin/bgpedge", "run", "--config", "/etc/bgpedge.yaml"},
		CPUs:        powercut.EnvInt(t, "BGPEDGE_POWERCUT_CPUS", 1),
		HostForward: port, GuestPort: powercutBMP,
		Dir: dir,
	}
	seed := uint64(time.Now().UnixNano())
	rng := rand.New(rand.NewPCG(seed, 3))
	t.Logf("kernel %s, initramfs %s, seed %d, %d sessions at %d messages/s in all", k.Release, filepath.Base(initrd), seed, powercutSessions, rate)

	snd := newPowercutSender(net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), msgs, float64(rate)/powercutSessions)
	defer snd.close()

	var boots []*agentBoot
	start := time.Now()
	for c := 0; c < cycles; c++ {
		b := &agentBoot{n: c + 1, early: c%5 == 4}
		boots = append(boots, b)
		runAgentBoot(t, m, b, snd, rng)
		t.Logf("cut %2d: %s", b.n, b.summary())
	}
	t.Logf("%d power cuts in %v", cycles, time.Since(start).Round(time.Second))

	// The image as the last cut left it, recovered on the host.
	host := filepath.Join(t.TempDir(), "data")
	fsck := powercut.CopyOut(t, disk, "/bgpedge", host)
	t.Logf("e2fsck of the image after the last cut:\n%s", strings.TrimSpace(fsck))
	spoolDir := filepath.Join(host, "bgpedge", "spool")
	// The test's own reading recovers a copy: `bgpedge run` below recovers
	// the spool itself, as it would on the machine.
	checkDir := filepath.Join(t.TempDir(), "spool")
	if out, err := exec.Command("cp", "-a", spoolDir, checkDir).CombinedOutput(); err != nil {
		t.Fatalf("copy the spool: %v\n%s", err, out)
	}
	sp := readPowercutSpool(t, checkDir)
	// A boot that found no spool (the first) starts where the spool does:
	// a new spool's first seq comes from the clock.
	for _, b := range boots {
		if b.last == 0 {
			b.last = sp.first - 1
		}
	}
	for i := 1; i < len(boots); i++ {
		prev, b := boots[i-1], boots[i]
		if b.last < prev.last+prev.durable {
			t.Errorf("boot %d: the spool ends at seq %d, but boot %d had reported %d records durable after seq %d", b.n, b.last, prev.n, prev.durable, prev.last)
		}
	}
	lastBoot := boots[len(boots)-1]
	if sp.last < lastBoot.last+lastBoot.durable {
		t.Errorf("after the last cut the spool ends at seq %d, but the last boot had reported %d records durable after seq %d", sp.last, lastBoot.durable, lastBoot.last)
	}
	checkPowercutSessions(t, boots, sp, msgs)

	// Forward the recovered spool to Kafka with the real binary, on the host.
	var rb [4]byte
	_, _ = crand.Read(rb[:])
	prefix := "test.TestPowerCutAgent." + hex.EncodeToString(rb[:]) + "."
	topic := prefix + StreamBMPRaw
	t.Cleanup(func() {
		if admin, err := sarama.NewClusterAdmin(brokers, testenv.SaramaConfig(t)); err == nil {
			_ = admin.DeleteTopic(topic)
			_ = admin.Close()
		}
	})
	config := filepath.Join(host, "bgpedge.yaml")
	r := &testenv.AgentRun{T: t, Bin: bin, Args: []string{"run", "--config", config}, Dir: host, HTTP: testenv.LoopbackAddr(t)}
	yaml := fmt.Sprintf(`agent:
  id: powercut
  state_dir: %s
  shutdown_timeout: 20s
http:
  listen: %s
log:
  level: info
  format: text
buffer:
  dir: %s
  segment_bytes: 16MiB
  max_bytes: 1GiB
bmp:
  listen: %s
  encoding:
    raw: true
    json: false
    state_dir: %s
forwarder:
  enabled: true
  shutdown_timeout: 10s
  kafka:
    brokers: [%s]
    partitions: 6
  topics:
    prefix: %s
    ensure: [%s]
`, filepath.Join(host, "bgpedge", "state"), r.HTTP, spoolDir, testenv.LoopbackAddr(t), filepath.Join(host, "bgpedge", "bmp"),
		strings.Join(brokers, ", "), prefix, StreamBMPRaw)
	if err := os.WriteFile(config, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	r.Start()
	var appended uint64
	testenv.Eventually(t, 3*time.Minute, "every spooled record acknowledged by kafka", func() bool {
		mt := r.Metrics()
		appended = uint64(mt["bgpedge_buffer_appended_records_total"])
		return uint64(mt["bgpedge_forwarder_acked_seq"]) == sp.last+appended
	})
	r.Stop()
	t.Logf("bgpedge run on the host forwarded the recovered spool (seqs %d-%d, and %d synthetic peer-downs it appended for the last boot's sessions)", sp.first, sp.last, appended)

	copies := map[uint64]int{}
	var bad int
	total := testenv.ConsumeEach(t, brokers, topic, 3*time.Minute, func(msg *sarama.ConsumerMessage) {
		agent, seq, idx, err := ParseMessageID(headerValue(msg.Headers, HeaderID))
		rec, ok := sp.recs[seq]
		switch {
		case err != nil || agent != "powercut" || idx != 0 || !ok || rec.kind != record.KindBMP:
			if bad < 5 {
				t.Errorf("%s/%d@%d: id %q (%v) is no spooled BMP record", msg.Topic, msg.Partition, msg.Offset, headerValue(msg.Headers, HeaderID), err)
			}
			bad++
			return
		case !bytes.Equal(msg.Value, rec.payload) || string(msg.Key) != rec.key:
			if bad < 5 {
				t.Errorf("%s/%d@%d: seq %d differs from the spooled record", msg.Topic, msg.Partition, msg.Offset, seq)
			}
			bad++
		}
		copies[seq]++
	})
	var missing []uint64
	for seq, rec := range sp.recs {
		if rec.kind == record.KindBMP && copies[seq] == 0 {
			missing = append(missing, seq)
		}
	}
	sort.Slice(missing, func(i, j int) bool { return missing[i] < missing[j] })
	if len(missing) > 0 {
		t.Errorf("%d spooled BMP records missing in kafka, first %v", len(missing), missing[:min(len(missing), 10)])
	}
	t.Logf("kafka: %d messages, %d distinct seqs, %d duplicates, %d missing, %d bad", total, len(copies), total-len(copies), len(missing), bad)

	var sent, durable, stored, lost, inflight int
	for _, b := range boots {
		sent += b.sentTotal()
		durable += int(b.durable)
		stored += b.storedBMP
		lost += b.sentTotal() - b.storedBMP
		inflight += b.sentTotal() - int(b.durableBMP)
	}
	torn := sp.rollbacks
	for _, b := range boots {
		torn += b.torn
	}
	t.Logf("%d power cuts of the agent: every reboot opened the spool, nothing quarantined (%d times a torn last commit, rolled back); sent %d BMP messages, %d reported durable, %d spooled (byte-identical, in order), %d lost in flight (at most %d were in flight), 0 seqs reused",
		cycles, torn, sent, durable, stored, lost, inflight)
}

// agentBoot is one boot of the agent's machine and its cut.
type agentBoot struct {
	n     int
	early bool // cut during start-up

	last     uint64 // the spool's last seq at boot, before the agent recovered it
	torn     int    // segments that did not verify read-only then (a torn last commit, which the agent rolls back)
	ready    time.Duration
	durable  uint64 // records the agent reported durable before the cut
	ran      time.Duration
	streamed time.Duration
	sent     []powercutConn // the host's connections of this boot

	durableBMP uint64 // of durable: BMP records (not synthetic peer-downs)
	storedBMP  int    // BMP records of this boot in the recovered spool
}

func (b *agentBoot) sentTotal() int {
	n := 0
	for _, c := range b.sent {
		n += c.sent
	}
	return n
}

func (b *agentBoot) summary() string {
	if b.early {
		ready := "not ready yet"
		if b.ready > 0 {
			ready = fmt.Sprintf("ready after %.1fs", b.ready.Seconds())
		}
		return fmt.Sprintf("spool at boot: last seq %d; agent %s; cut %.2fs after the spool opened, during start-up; ran %.1fs",
			b.last, ready, b.streamed.Seconds(), b.ran.Seconds())
	}
	return fmt.Sprintf("spool at boot: last seq %d; agent ready after %.1fs; streamed %.1fs, %d messages sent in %d connections, %d records reported durable; ran %.1fs",
		b.last, b.ready.Seconds(), b.streamed.Seconds(), b.sentTotal(), len(b.sent), b.durable, b.ran.Seconds())
}

// runAgentBoot boots the machine, streams into it once the agent is ready
// and cuts the power.
func runAgentBoot(t *testing.T, m powercut.Machine, b *agentBoot, snd *powercutSender, rng *rand.Rand) {
	t.Helper()
	vm := m.Boot(t, b.n)
	var cut <-chan time.Time
	var cutAt, openedAt time.Time
	deadline := time.After(3 * time.Minute)
	opened, ready := false, false
	fail := func(format string, args ...any) {
		vm.Kill()
		t.Fatalf("boot %d: %s\nconsole:\n%s", b.n, fmt.Sprintf(format, args...), vm.ConsoleTail())
	}
loop:
	for {
		select {
		case line, ok := <-vm.Lines():
			if !ok {
				break loop
			}
			f := strings.Fields(line)
			if len(f) == 0 {
				continue
			}
			switch f[0] {
			case "O":
				if len(f) != 5 {
					fail("bad report %q", line)
				}
				b.last, _ = strconv.ParseUint(f[1], 10, 64)
				if f[3] != "0" {
					fail("%s segments quarantined after the power cut", f[3])
				}
				b.torn, _ = strconv.Atoi(f[4])
				opened, openedAt = true, time.Now()
				if b.early {
					cutAt = time.Now().Add(time.Duration(rng.Int64N(int64(2 * time.Second))))
					cut = time.After(time.Until(cutAt))
				}
			case "Y":
				ready = true
				b.ready = time.Since(vm.Started)
				if !b.early {
					snd.resume()
					cutAt = time.Now().Add(time.Duration(2000+rng.Int64N(6000)) * time.Millisecond)
					cut = time.After(time.Until(cutAt))
				}
			case "D":
				v, err := strconv.ParseUint(f[1], 10, 64)
				if err != nil {
					fail("bad report %q", line)
				}
				// Every line in the report file was written before the cut.
				b.durable = max(b.durable, v)
			case "E", "X":
				fail("guest reported: %s", line)
			}
		case <-cut:
			cut = nil
			if !b.early {
				// Stop the senders first (within 50 ms, connections left
				// open), so every message counted as sent was in the
				// host's kernel before the power went.
				b.sent = snd.pause()
			}
			b.ran = time.Since(vm.Started)
			vm.Kill()
		case <-deadline:
			fail("no power cut within 3 minutes (opened %v, ready %v)", opened, ready)
		}
	}
	if !opened {
		t.Fatalf("boot %d: the guest never reported its spool (qemu: %v)\nconsole:\n%s", b.n, vm.Err(), vm.ConsoleTail())
	}
	if !b.early && !ready {
		t.Fatalf("boot %d: the agent never became ready (qemu: %v)\nconsole:\n%s", b.n, vm.Err(), vm.ConsoleTail())
	}
	if b.early {
		b.streamed = cutAt.Sub(openedAt)
	} else {
		b.streamed = b.ran - b.ready
	}
}

// powercutConn is one connection of one session: what was sent on it.
type powercutConn struct {
	session int
	port    int // the host's local port, which the guest sees as the source port
	sent    int // messages written whole to the socket
}

// powercutSender streams the capture as powercutSessions BMP sessions.
// Between pause and resume it holds every session (connections left open,
// as a power cut leaves them); resume makes every session drop its old
// connection, connect again and start the capture over.
type powercutSender struct {
	addr string
	msgs [][]byte
	rate float64 // messages per second per session

	mu      sync.Mutex
	cond    *sync.Cond
	gen     int // incremented by resume
	running bool
	parked  int
	conns   []*powercutConn
	done    bool
	wg      sync.WaitGroup
}

func newPowercutSender(addr string, msgs [][]byte, rate float64) *powercutSender {
	s := &powercutSender{addr: addr, msgs: msgs, rate: rate}
	s.cond = sync.NewCond(&s.mu)
	for i := 0; i < powercutSessions; i++ {
		s.wg.Add(1)
		go s.session(i)
	}
	return s
}

func (s *powercutSender) resume() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.gen++
	s.running = true
	s.conns = nil
	s.cond.Broadcast()
}

// pause holds every session and returns what this generation sent.
func (s *powercutSender) pause() []powercutConn {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.running = false
	for s.parked < powercutSessions {
		s.cond.Wait()
	}
	out := make([]powercutConn, len(s.conns))
	for i, c := range s.conns {
		out[i] = *c
	}
	return out
}

func (s *powercutSender) close() {
	s.mu.Lock()
	s.done = true
	s.running = false
	s.cond.Broadcast()
	s.mu.Unlock()
	s.wg.Wait()
}

// park waits while paused; it returns the generation to send in, or -1 when closed.
func (s *powercutSender) park() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.parked++
	s.cond.Broadcast()
	for !s.running && !s.done {
		s.cond.Wait()
	}
	s.parked--
	if s.done {
		return -1
	}
	return s.gen
}

func (s *powercutSender) session(i int) {
	defer s.wg.Done()
	var conn net.Conn
	var cc *powercutConn
	gen := -2
	const chunk = 20
	var pending []byte
	var ends []int // end offsets in pending of its messages
	var pos int    // next capture message of this connection
	var written int
	var next time.Time
	reset := func() {
		if conn != nil {
			_ = conn.Close()
		}
		conn, cc, pending, ends, pos, written = nil, nil, nil, nil, 0, 0
	}
	defer reset()
	for {
		s.mu.Lock()
		running, g := s.running, s.gen
		s.mu.Unlock()
		if !running {
			if g = s.park(); g < 0 {
				return
			}
		}
		if g != gen { // a new boot: the old connection died with the machine
			reset()
			gen = g
		}
		if conn == nil {
			c, err := net.DialTimeout("tcp4", s.addr, 2*time.Second)
			if err != nil {
				time.Sleep(100 * time.Millisecond)
				continue
			}
			conn = c
			cc = &powercutConn{session: i, port: c.LocalAddr().(*net.TCPAddr).Port}
			s.mu.Lock()
			if s.gen == gen {
				s.conns = append(s.conns, cc)
			}
			s.mu.Unlock()
			next = time.Now()
		}
		if len(pending) == 0 {
			if d := time.Until(next); d > 0 {
				time.Sleep(min(d, 20*time.Millisecond))
				continue
			}
			next = next.Add(time.Duration(float64(chunk) / s.rate * float64(time.Second)))
			pending, ends, written = pending[:0], ends[:0], 0
			for j := 0; j < chunk; j++ {
				pending = append(pending, s.msgs[pos%len(s.msgs)]...)
				ends = append(ends, len(pending))
				pos++
			}
		}
		_ = conn.SetWriteDeadline(time.Now().Add(50 * time.Millisecond))
		n, err := conn.Write(pending[written:])
		written += n
		var whole int
		for len(ends) > 0 && ends[0] <= written {
			ends = ends[1:]
			whole++
		}
		if whole > 0 {
			s.mu.Lock()
			cc.sent += whole
			s.mu.Unlock()
		}
		if written == len(pending) {
			pending = pending[:0]
		}
		var ne net.Error
		if err != nil && !(errors.As(err, &ne) && ne.Timeout()) {
			// The agent closed the session, or the machine is gone: a
			// router connects again and starts over.
			reset()
			time.Sleep(100 * time.Millisecond)
		}
	}
}

// powercutRec is one record of the recovered spool.
type powercutRec struct {
	kind    record.Kind
	key     string
	source  string
	payload []byte
}

type powercutSpool struct {
	first, last uint64
	recs        map[uint64]powercutRec
	order       []uint64
	gaps        int // seq ranges skipped (after a rolled-back torn commit)
	rollbacks   int // torn commits the recovery rolled back
}

// readPowercutSpool recovers the spool (Open: a torn last commit is rolled
// back), closes it, and reads it whole read-only.
func readPowercutSpool(t *testing.T, dir string) powercutSpool {
	t.Helper()
	var logs testenv.LogBuffer
	s, err := buffer.Open(buffer.Options{Dir: dir, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatalf("open the recovered spool: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if q, err := buffer.Quarantined(dir); err != nil || len(q) > 0 {
		t.Fatalf("quarantined segments in the recovered spool: %v (%v)\n%s", q, err, logs.String())
	}
	sp := powercutSpool{recs: map[uint64]powercutRec{}, rollbacks: strings.Count(logs.String(), "rolled back")}
	s, err = buffer.Open(buffer.Options{Dir: dir, ReadOnly: true})
	if err != nil {
		t.Fatalf("open the recovered spool read-only: %v", err)
	}
	defer s.Close()
	st := s.Stats()
	sp.first, sp.last = st.FirstSeq, st.LastSeq
	for from := st.FirstSeq; from != 0; {
		recs, err := s.Read(context.Background(), from, 4096)
		if err != nil {
			t.Fatalf("read the recovered spool from seq %d: %v", from, err)
		}
		if len(recs) == 0 {
			break
		}
		for _, r := range recs {
			if r.Seq < from {
				t.Fatalf("recovered spool: seq %d after %d", r.Seq, from-1)
			}
			if r.Seq > from && len(sp.order) > 0 {
				sp.gaps++
			}
			sp.recs[r.Seq] = powercutRec{kind: r.Kind, key: string(r.Key), source: r.Source, payload: append([]byte(nil), r.Payload...)}
			sp.order = append(sp.order, r.Seq)
			from = r.Seq + 1
		}
	}
	return sp
}

// checkPowercutSessions splits the recovered spool into boots (by the seq
// each boot started from) and sessions (by source address), checks every
// session's records are the capture from its start, in order, and counts
// what survived of each boot.
func checkPowercutSessions(t *testing.T, boots []*agentBoot, sp powercutSpool, msgs [][]byte) {
	t.Helper()
	bootOf := func(seq uint64) int {
		i := sort.Search(len(boots), func(i int) bool { return boots[i].last >= seq })
		return i - 1 // boots[i-1].last < seq ≤ boots[i].last
	}
	// A boot's records follow the spool's last seq at boot, except after a
	// torn last commit: the agent's read-write open rolls it back and, as
	// the rolled-back seqs might have been delivered, starts above the
	// whole segment (buffer: never reuse a seq), where the read-only look
	// at boot cannot see. There the boot's records start at its first seq
	// in the recovered spool.
	base := make([]uint64, len(boots))
	for i, b := range boots {
		base[i] = b.last
	}
	for _, seq := range sp.order {
		if b := bootOf(seq); b >= 0 && boots[b].torn > 0 && base[b] == boots[b].last {
			base[b] = seq - 1
		}
	}
	type sessKey struct {
		boot   int
		source string
	}
	count := map[sessKey]int{}
	var bad int
	for _, seq := range sp.order {
		rec := sp.recs[seq]
		b := bootOf(seq)
		if b < 0 {
			t.Fatalf("seq %d is below the first boot's spool", seq)
		}
		if seq <= base[b]+boots[b].durable && rec.kind == record.KindBMP {
			boots[b].durableBMP++
		}
		if rec.kind != record.KindBMP {
			continue
		}
		boots[b].storedBMP++
		k := sessKey{b, rec.source}
		n := count[k]
		if !bytes.Equal(rec.payload, msgs[n%len(msgs)]) {
			if bad < 5 {
				t.Errorf("seq %d (boot %d, session %s): record %d of its session is not capture message %d", seq, b+1, rec.source, n, n%len(msgs))
			}
			bad++
		}
		count[k] = n + 1
	}
	if bad > 0 {
		t.Errorf("%d spooled records are not what their session sent at that position", bad)
	}
	// Nothing the agent reported durable may be missing.
	for i, b := range boots {
		var missing int
		for seq := base[i] + 1; seq <= base[i]+b.durable; seq++ {
			if _, ok := sp.recs[seq]; !ok {
				if missing == 0 {
					t.Errorf("boot %d: seq %d missing, but the agent had reported %d records after seq %d durable", b.n, seq, b.durable, base[i])
				}
				missing++
			}
		}
		if missing > 0 {
			t.Errorf("boot %d: %d records reported durable are missing", b.n, missing)
		}
	}
	// Match the host's connections to the spooled sessions by port, when
	// the guest saw the host's source ports (qemu's user network keeps them).
	for i, b := range boots {
		var parts []string
		matched := true
		for _, c := range b.sent {
			var got int
			var found bool
			for k, n := range count {
				if k.boot == i && strings.HasSuffix(k.source, ":"+strconv.Itoa(c.port)) {
					got, found = n, true
				}
			}
			if !found {
				matched = false
			}
			if got > c.sent {
				t.Errorf("boot %d, session %d (port %d): %d records spooled, but the host sent only %d", b.n, c.session, c.port, got, c.sent)
			}
			parts = append(parts, fmt.Sprintf("%d/%d", got, c.sent))
		}
		if b.storedBMP > b.sentTotal() {
			t.Errorf("boot %d: %d BMP records spooled, but the host sent only %d", b.n, b.storedBMP, b.sentTotal())
		}
		lost := b.sentTotal() - b.storedBMP
		inflight := b.sentTotal() - int(b.durableBMP)
		if lost > inflight {
			t.Errorf("boot %d: %d messages lost, more than the %d in flight", b.n, lost, inflight)
		}
		perSession := ""
		if matched && len(parts) > 0 {
			perSession = ", per session spooled/sent " + strings.Join(parts, " ")
		}
		torn := sp.rollbacks // the last cut: found by the host's recovery
		if i+1 < len(boots) {
			torn = boots[i+1].torn
		}
		t.Logf("cut %2d: sent %5d, reported durable %5d, spooled %5d, lost %4d (in flight at the cut: %4d), torn last commit found after it: %d%s",
			b.n, b.sentTotal(), b.durable, b.storedBMP, lost, inflight, torn, perSession)
	}
}
