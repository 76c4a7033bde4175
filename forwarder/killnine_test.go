package forwarder

import (
	"bytes"
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"fmt"
	"hash/maphash"
	"math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/IBM/sarama"

	"github.com/bgpedge/bgpedge/buffer"
	"github.com/bgpedge/bgpedge/internal/spooltest"
	"github.com/bgpedge/bgpedge/internal/testenv"
	"github.com/bgpedge/bgpedge/record"
)

var _ Source = (*buffer.Spool)(nil)

// The acceptance stream of TestKillNineRun: at least killRunStream BMP
// messages spooled from killRunSessions router sessions, killed killRunKills
// times along the way (-short: a fifth of the stream, 5 kills).
const (
	killRunStream   = 1_000_000
	killRunKills    = 20
	killRunSessions = 4
	// killRunRate paces the replay (messages per second over all sessions)
	// at about what the forwarder drains on a busy two-core machine, so a
	// kill finds both ingest and delivery busy and a backlog in the spool.
	killRunRate = 60_000
	// killRunInFlight is forwarder.max_in_flight: with the drain the
	// forwarder acknowledges in ack_interval plus the spool's
	// buffer.AckPersistInterval, it bounds the duplicates of a crash.
	killRunInFlight = 10_000
	// killRunMaxDrain is above any drain rate of this machine (records/s),
	// for that bound.
	killRunMaxDrain = 250_000
)

// TestKillNineRun is acceptance item 2 of issue 4 with the real binary:
// `bgpedge run` (BMP station, spool, forwarder to the test broker) is killed
// with SIGKILL at random moments, 20 times, while `bgpedge replay
// --reconnect` streams the 100k-route capture as four router sessions, and
// restarted on the same spool each time; the replay reconnects and starts
// its sessions over, as a router does. The stream is at least a million
// spooled messages.
//
// The oracle is at-least-once as BMP over TCP allows it: bytes a router
// wrote that were still in the kernel when bgpedge died were never accepted.
// What bgpedge accepted is what its spool made durable, so:
//   - after every kill the spool (opened read-only) still holds everything
//     the process had reported durable, its last seq never goes backwards,
//     and sampled records keep their content to the end (no seq reused);
//   - at the end every spooled BMP record, seq 1 to the last, is in Kafka
//     exactly as spooled (key and value), and nothing else is;
//   - every router's spooled messages are the capture in order, starting
//     over only where a session started over (nothing corrupted, reordered
//     or invented on the way in).
//
// The spool is the oracle's record of what was accepted, so the run keeps
// every record: one segment large enough for the stream, and keep_acked so
// acknowledged records are not reclaimed (the spool's own crash test covers
// reclaiming under kill -9).
//
// Duplicates (ids read more than once) are counted and reported.
func TestKillNineRun(t *testing.T) {
	t.Parallel()
	brokers := testenv.KafkaBrokers(t)
	var rb [4]byte
	_, _ = crand.Read(rb[:])
	prefix := "test.TestKillNineRun." + hex.EncodeToString(rb[:]) + "."
	topic := prefix + StreamBMPRaw
	t.Cleanup(func() {
		if admin, err := sarama.NewClusterAdmin(brokers, testenv.SaramaConfig(t)); err == nil {
			_ = admin.DeleteTopic(topic)
			_ = admin.Close()
		}
	})
	k := runKillNine(t, fmt.Sprintf(`  kafka:
    brokers: [%s]
    partitions: 6
  topics:
    prefix: %s
    ensure: [%s]
`, strings.Join(brokers, ", "), prefix, StreamBMPRaw))
	r, st, hashes, kinds := k.r, k.st, k.hashes, k.kinds

	// Kafka: every BMP seq, as spooled; count the copies.
	copies := make([]uint8, st.LastSeq+1)
	var bad int
	readStart := time.Now()
	total := testenv.ConsumeEach(t, brokers, topic, 3*time.Minute, func(m *sarama.ConsumerMessage) {
		agent, seq, idx, err := ParseMessageID(headerValue(m.Headers, HeaderID))
		switch {
		case err != nil || agent != killAgentID || idx != 0 || seq == 0 || seq > st.LastSeq:
			if bad < 5 {
				t.Errorf("%s/%d@%d: id %q (%v)", m.Topic, m.Partition, m.Offset, headerValue(m.Headers, HeaderID), err)
			}
			bad++
			return
		case kinds[seq] != record.KindBMP || r.hash(m.Key, m.Value) != hashes[seq]:
			if bad < 5 {
				t.Errorf("%s/%d@%d: seq %d differs from the spooled record", m.Topic, m.Partition, m.Offset, seq)
			}
			bad++
		}
		if copies[seq] < 255 {
			copies[seq]++
		}
	})
	k.check(t, "kafka", copies, total, bad, time.Since(readStart))
}

// killAgentID is agent.id of the kill -9 runs.
const killAgentID = "killnine"

// killResult is what a kill -9 scenario spooled: per seq the content hash
// (key and payload, and payload alone) and kind.
type killResult struct {
	r                           *killRun
	st                          buffer.Stats
	hashes, valueHashes         []uint64
	kinds                       []record.Kind
	kills, reconnects           int
	sent, bmpRecords, synthetic uint64
	drained                     time.Duration
}

// runKillNine is the scenario of TestKillNineRun with forwarderYAML (the
// lines of the forwarder: section after enabled, shutdown_timeout and
// max_in_flight) as the destination: it kills and restarts `bgpedge run`,
// lets the last run drain, checks the spool and returns what it holds.
func runKillNine(t *testing.T, forwarderYAML string) *killResult {
	t.Helper()
	capture := testenv.Shared(t, "bmpdata", "raw", "gobgp-3.10-all-dump-100k.bmp.gz")
	msgs, err := loadCapture(capture)
	if err != nil {
		t.Fatal(err)
	}
	stream, kills := uint64(killRunStream), killRunKills
	if testing.Short() {
		stream, kills = killRunStream/5, 5
	}
	began := time.Now()
	bin := testenv.BuildBgpedge(t)
	t.Logf("bgpedge built in %v", time.Since(began).Round(time.Second))

	dir := t.TempDir()
	spoolDir := filepath.Join(dir, "spool")
	spooltest.SeedAtOne(t, spoolDir) // kill points are counted in seqs from 1
	const agentID = killAgentID
	bmpAddr := testenv.LoopbackAddr(t)
	config := filepath.Join(dir, "bgpedge.yaml")
	r := &killRun{t: t, seed: maphash.MakeSeed(), AgentRun: &testenv.AgentRun{
		T: t, Bin: bin, Args: []string{"run", "--config", config}, Dir: dir, HTTP: testenv.LoopbackAddr(t)}}
	// One segment holds the whole stream (about 150 MB), so no record is
	// deleted once acknowledged and the spool read at the end sees every seq.
	yaml := fmt.Sprintf(`agent:
  id: %s
  state_dir: %s
  shutdown_timeout: 20s
http:
  listen: %s
log:
  level: info
  format: text
buffer:
  dir: %s
  segment_bytes: 1GiB
  max_bytes: 4GiB
  keep_acked: true
bmp:
  listen: %s
  encoding:
    raw: true
    json: false
    state_dir: %s
forwarder:
  enabled: true
  shutdown_timeout: 10s
  max_in_flight: %d
%s`, agentID, filepath.Join(dir, "state"), r.HTTP, spoolDir, bmpAddr, filepath.Join(dir, "bmpstate"),
		killRunInFlight, forwarderYAML)
	if err := os.WriteFile(config, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}

	r.Start()
	replay := testenv.StartReplay(t, bin, "--file", capture, "--to", bmpAddr,
		"--sessions", strconv.Itoa(killRunSessions), "--loop", "1000", "--rate", strconv.Itoa(killRunRate),
		"--drain", "0", "--reconnect", "50ms")

	// Kill at random moments spread over the stream: kill k at a random
	// point of the k-th of `kills` equal slices of it. A point the spool has already
	// passed (the run before went further) kills the next run as soon as it
	// is ready, in start-up, recovery and the forwarder's reconnect.
	samples := map[uint64]uint64{} // seq → content hash, taken after kills
	var prev killSnapshot
	slice := stream / uint64(kills)
	killPhase := time.Now()
	for k := 1; k <= kills; k++ {
		at := uint64(k-1)*slice + rand.N(slice)
		var appended uint64 // what the process reported durable: must survive
		testenv.Eventually(t, 2*time.Minute, fmt.Sprintf("spool reaches seq %d", at), func() bool {
			replay.Alive()
			appended = uint64(r.Metrics()["bgpedge_buffer_appended_records_total"])
			return prev.last+appended >= at
		})
		ran := r.Kill()
		snap := r.snapshot(spoolDir, samples)
		if snap.last < prev.last+appended {
			t.Fatalf("kill %d: spool ends at seq %d, but the process had reported %d records durable after seq %d", k, snap.last, appended, prev.last)
		}
		if snap.acked > snap.last || snap.acked < prev.acked {
			t.Fatalf("kill %d: acked through %d (before: %d), last seq %d", k, snap.acked, prev.acked, snap.last)
		}
		t.Logf("kill %2d after %5.2fs: spool last seq %7d, acked through %7d (%6d unacknowledged), %6d appended by this run",
			k, ran.Seconds(), snap.last, snap.acked, snap.last-snap.acked, snap.last-prev.last)
		prev = snap
		r.Start()
	}
	t.Logf("%d kills in %v", kills, time.Since(killPhase).Round(time.Second))

	// Let the last run carry the stream past its size, then stop the replay
	// (as a router operator would: the sessions close) and let the
	// forwarder drain.
	testenv.Eventually(t, 2*time.Minute, fmt.Sprintf("a stream of %d spooled messages", stream), func() bool {
		replay.Alive()
		return prev.last+uint64(r.Metrics()["bgpedge_buffer_appended_records_total"]) >= stream
	})
	replayOut := replay.Stop()
	sm := regexp.MustCompile(`sent (\d+) messages .* (\d+) reconnects`).FindStringSubmatch(replayOut)
	if sm == nil {
		t.Fatalf("replay summary: %q", replayOut)
	}
	sent, _ := strconv.ParseUint(sm[1], 10, 64)
	reconnects, _ := strconv.Atoi(sm[2])
	var last uint64
	testenv.Eventually(t, 3*time.Minute, "sessions closed and every record acknowledged", func() bool {
		m := r.Metrics()
		last = prev.last + uint64(m["bgpedge_buffer_appended_records_total"])
		return m["bgpedge_bmp_sessions_active"] == 0 && uint64(m["bgpedge_forwarder_acked_seq"]) == last
	})
	r.Stop()
	drained := time.Since(began)

	// The spool as the last process left it: every seq, with its content.
	spoolStart := time.Now()
	sp, err := buffer.Open(buffer.Options{Dir: spoolDir, ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	st := sp.Stats()
	if st.LastSeq != last || st.AckedThrough != last {
		t.Errorf("spool after a clean stop: last seq %d, acked through %d; want both %d", st.LastSeq, st.AckedThrough, last)
	}
	if q, err := buffer.Quarantined(spoolDir); err != nil || len(q) > 0 {
		t.Errorf("quarantined segments %v (%v)", q, err)
	}
	hashes := make([]uint64, st.LastSeq+1)
	valueHashes := make([]uint64, st.LastSeq+1)
	kinds := make([]record.Kind, st.LastSeq+1)
	next := map[string]int{}     // router → index in the capture of its next message
	restarts := map[string]int{} // router → sessions started over
	var bmpRecords, synthetic, outOfOrder uint64
	for from := uint64(1); from <= st.LastSeq; {
		recs, err := sp.Read(context.Background(), from, 8192)
		if err != nil {
			t.Fatal(err)
		}
		if len(recs) == 0 || recs[0].Seq != from {
			t.Fatalf("spool read from seq %d: got %d records starting at %d; every record must still be in the spool", from, len(recs), firstSeq(recs))
		}
		for i, rec := range recs {
			if rec.Seq != from+uint64(i) {
				t.Fatalf("spool read: seq %d after %d", rec.Seq, from+uint64(i)-1)
			}
			hashes[rec.Seq] = r.hash(rec.Key, rec.Payload)
			valueHashes[rec.Seq] = r.hash(nil, rec.Payload)
			kinds[rec.Seq] = rec.Kind
			switch rec.Kind {
			case record.KindBMP:
				bmpRecords++
				router := string(rec.Key)
				n := next[router]
				switch {
				case bytes.Equal(rec.Payload, msgs[n]):
					next[router] = (n + 1) % len(msgs)
				case bytes.Equal(rec.Payload, msgs[0]):
					next[router] = 1
					restarts[router]++
				default:
					if outOfOrder < 5 {
						t.Errorf("seq %d from %s is not capture message %d nor a new session's first message", rec.Seq, router, n)
					}
					outOfOrder++
				}
			case record.KindBMPSyntheticPeerDown:
				synthetic++
			default:
				t.Errorf("seq %d: unexpected kind %v", rec.Seq, rec.Kind)
			}
		}
		from += uint64(len(recs))
	}
	if err := sp.Close(); err != nil {
		t.Fatal(err)
	}
	t.Logf("spool of %d records read in %v", st.LastSeq, time.Since(spoolStart).Round(time.Second))
	if outOfOrder > 0 {
		t.Errorf("%d spooled messages out of their session's order", outOfOrder)
	}
	if len(next) != killRunSessions {
		t.Errorf("records from %d routers, want %d", len(next), killRunSessions)
	}
	for router, n := range restarts {
		if n > reconnects {
			t.Errorf("%s: %d sessions started over, but replay reconnected only %d times", router, n, reconnects)
		}
	}
	for seq, h := range samples {
		if hashes[seq] != h {
			t.Errorf("seq %d changed content after a kill (reused?)", seq)
		}
	}
	if bmpRecords < stream {
		t.Errorf("%d BMP records spooled, want at least %d", bmpRecords, stream)
	}

	return &killResult{r: r, st: st, hashes: hashes, valueHashes: valueHashes, kinds: kinds, kills: kills,
		reconnects: reconnects, sent: sent, bmpRecords: bmpRecords, synthetic: synthetic, drained: drained}
}

// check requires every spooled BMP record among what the destination holds
// (copies per seq, total messages read, bad ones) and bounds the duplicates.
func (k *killResult) check(t *testing.T, dest string, copies []uint8, total, bad int, readTime time.Duration) {
	t.Helper()
	st, kinds, kills := k.st, k.kinds, k.kills
	var missing []uint64
	var distinct int
	for seq := uint64(1); seq <= st.LastSeq; seq++ {
		switch {
		case copies[seq] > 0:
			distinct++
		case kinds[seq] == record.KindBMP:
			missing = append(missing, seq)
		}
	}
	if len(missing) > 0 {
		t.Errorf("%d spooled records missing in %s, first %v", len(missing), dest, missing[:min(len(missing), 20)])
	}
	dups := total - distinct
	// Replay counts whole writes only, so a write cut short by a kill is
	// not counted: the difference is about what died in socket buffers.
	t.Logf("replay sent %d messages over %d reconnects; %d BMP records (+%d synthetic peer-downs) spooled by %d runs with %d kill -9; about %d sent but never accepted (in flight when killed)",
		k.sent, k.reconnects, k.bmpRecords, k.synthetic, kills+1, kills, int64(k.sent)-int64(k.bmpRecords))
	t.Logf("%s: %d messages read in %v, %d distinct ids, missing=%d, duplicates=%d (%.2f%%), bad=%d; stream drained in %v",
		dest, total, readTime.Round(time.Second), distinct, len(missing), dups, 100*float64(dups)/float64(max(distinct, 1)), bad, k.drained.Round(time.Second))
	// The README's bound: a crash re-delivers at most what was in flight
	// and what was acknowledged in the last ack_interval + AckPersistInterval.
	window := DefaultConfig().AckInterval + buffer.AckPersistInterval
	perKill := killRunInFlight + int(window.Seconds()*killRunMaxDrain)
	t.Logf("duplicates per kill: %d on average, bound %d (max_in_flight %d + %v of drain at %d records/s)",
		dups/kills, perKill, killRunInFlight, window, killRunMaxDrain)
	if dups > kills*perKill {
		t.Errorf("%d duplicates over %d kills, more than the bound of %d per kill", dups, kills, perKill)
	}
}

// TestKillNineRunFile is TestKillNineRun with the file sink as the only
// sink (acceptance of issue 17: the file sink at least once): every spooled
// BMP record is in the bmp.raw files exactly as spooled, each file holds
// consecutive records from the first seq its name gives, whole, and the
// duplicates stay within the bound of a crash.
func TestKillNineRunFile(t *testing.T) {
	t.Parallel()
	out := filepath.Join(t.TempDir(), "out")
	k := runKillNine(t, fmt.Sprintf(`  sinks: [file]
  file:
    dir: %s
    max_file_bytes: 32MiB
    max_total_bytes: 64GiB
`, out))
	st, kinds := k.st, k.kinds
	readStart := time.Now()
	copies := make([]uint8, st.LastSeq+1)
	var total, bad, files int
	err := forEachRawFile(filepath.Join(out, StreamBMPRaw), func(name fileName, msgs [][]byte, tail int) {
		files++
		if tail != 0 {
			t.Errorf("%s: %d bytes after the last whole message", name.path, tail)
			bad++
		}
		seq := name.firstSeq
		for i, m := range msgs {
			for seq <= st.LastSeq && kinds[seq] != record.KindBMP {
				seq++ // records without a bmp.raw message
			}
			total++
			if seq > st.LastSeq || k.r.hash(nil, m) != k.valueHashes[seq] {
				if bad < 5 {
					t.Errorf("%s: message %d (seq %d) differs from the spooled record", name.path, i, seq)
				}
				bad++
				return
			}
			if copies[seq] < 255 {
				copies[seq]++
			}
			seq++
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d bmp.raw files", files)
	k.check(t, "files", copies, total, bad, time.Since(readStart))
}

// forEachRawFile reads a bmp.raw stream directory file by file, in order,
// without holding more than one file in memory.
func forEachRawFile(dir string, fn func(name fileName, msgs [][]byte, tail int)) error {
	files, err := listStreamFiles(dir, false)
	if err != nil {
		return err
	}
	for _, n := range files {
		b, err := os.ReadFile(n.path)
		if err != nil {
			return err
		}
		var msgs [][]byte
		for {
			m, used, ok := nextRecord(b, true)
			if !ok {
				break
			}
			msgs = append(msgs, m)
			b = b[used:]
		}
		fn(n, msgs, len(b))
	}
	return nil
}

// killRun runs `bgpedge run` processes one after another on one spool.
type killRun struct {
	*testenv.AgentRun
	t    *testing.T
	seed maphash.Seed // keys hash: content comparisons within the test
}

// killSnapshot is the spool as a killed process left it.
type killSnapshot struct{ last, acked uint64 }

// snapshot opens the spool read-only, as `bgpedge buffer stats` does, and
// samples the content of the last record and a few random new ones.
func (r *killRun) snapshot(dir string, samples map[uint64]uint64) killSnapshot {
	r.t.Helper()
	sp, err := buffer.Open(buffer.Options{Dir: dir, ReadOnly: true})
	if err != nil {
		r.t.Fatalf("open the spool after kill -9: %v", err)
	}
	defer sp.Close()
	st := sp.Stats()
	if st.LastSeq > 0 {
		seqs := []uint64{st.LastSeq}
		for range 8 {
			seqs = append(seqs, 1+rand.N(st.LastSeq))
		}
		for _, seq := range seqs {
			recs, err := sp.Read(context.Background(), seq, 1)
			if err != nil || len(recs) != 1 || recs[0].Seq != seq {
				r.t.Fatalf("read seq %d of %d after kill -9: %v (%d records, first %d)", seq, st.LastSeq, err, len(recs), firstSeq(recs))
			}
			h := r.hash(recs[0].Key, recs[0].Payload)
			if old, ok := samples[seq]; ok && old != h {
				r.t.Fatalf("seq %d changed content between kills", seq)
			}
			samples[seq] = h
		}
	}
	return killSnapshot{last: st.LastSeq, acked: st.AckedThrough}
}

func firstSeq(recs []record.Record) uint64 {
	if len(recs) == 0 {
		return 0
	}
	return recs[0].Seq
}

// hash is a fingerprint of a record's key and payload, or of a Kafka
// message's key and value.
func (r *killRun) hash(key, value []byte) uint64 {
	var h maphash.Hash
	h.SetSeed(r.seed)
	_, _ = h.Write(key)
	_ = h.WriteByte(0)
	_, _ = h.Write(value)
	return h.Sum64()
}
