package forwarder

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	mrand "math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/bgpedge/bgpedge/internal/testenv"
	"github.com/bgpedge/bgpedge/record"
)

// fileTestEncoder emits each record's BMP message on bmp.raw (index 0) and
// a JSON event carrying its id on bmp.peer (index 1), as the BMP encoder
// does with raw and JSON both on.
var fileTestEncoder = EncoderFunc(func(rec record.Record, emit func(record.Output)) error {
	emit(record.Output{Stream: StreamBMPRaw, Key: rec.Key, Value: rec.Payload, Index: 0})
	ev := fmt.Sprintf(`{"id":"edge1:%d:1","source":"bmp","type":"peer-up","router":%q,"pad":"%s"}`, rec.Seq, rec.Source, strings.Repeat("x", 40))
	emit(record.Output{Stream: "bmp.peer", Key: rec.Key, Value: []byte(ev), Index: 1})
	return nil
})

// seqRecord is a BMP-framed record of size bytes whose body starts with n,
// so that its content says which record it is.
func seqRecord(n uint64, size int) record.Record {
	r := bmpRecord("192.0.2.1", size)
	binary.BigEndian.PutUint64(r.Payload[bmpHeaderLen:], n)
	return r
}

func fileConfig(t testing.TB, dir string) Config {
	t.Helper()
	cfg := DefaultConfig()
	cfg.AgentID = "edge1"
	cfg.Sinks = []string{SinkFile}
	cfg.File.Dir = dir
	cfg.Topics.Streams = testStreams
	cfg.ReadBatch = 256
	cfg.BackoffMin = 50 * time.Millisecond
	cfg.BackoffMax = 500 * time.Millisecond
	cfg.ShutdownTimeout = 10 * time.Second
	return cfg
}

// streamFile is one file of a stream directory as read back.
type streamFile struct {
	name fileName
	recs [][]byte // lines without the newline, or BMP messages
	tail int      // bytes after the last whole record
}

// readStream reads every file of a stream, in order, decompressing.
func readStream(t testing.TB, dir, stream string) []streamFile {
	t.Helper()
	files, err := listStreamFiles(filepath.Join(dir, streamDir(stream)), false)
	if err != nil {
		t.Fatal(err)
	}
	var out []streamFile
	for _, n := range files {
		f, err := os.Open(n.path)
		if err != nil {
			t.Fatal(err)
		}
		var r io.Reader = f
		if n.gz {
			zr, err := gzip.NewReader(f)
			if err != nil {
				t.Fatalf("%s: %v", n.path, err)
			}
			r = zr
		}
		b, err := io.ReadAll(r)
		_ = f.Close()
		if err != nil {
			t.Fatalf("%s: %v", n.path, err)
		}
		sf := streamFile{name: n}
		for {
			rec, used, ok := nextRecord(b, n.raw)
			if !ok {
				break
			}
			sf.recs = append(sf.recs, rec)
			b = b[used:]
		}
		sf.tail = len(b)
		out = append(out, sf)
	}
	return out
}

// dirBytes is what the files under dir take (their sizes).
func dirBytes(t testing.TB, dir string) int64 {
	t.Helper()
	var total int64
	err := filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		if info, err := d.Info(); err == nil {
			total += info.Size()
		}
		return nil
	})
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	return total
}

// checkRawRuns requires each bmp.raw file to hold consecutive records from
// its first seq, whole; it returns how many times each seq was found.
func checkRawRuns(t testing.TB, files []streamFile, payload func(seq uint64) []byte, last uint64) []int {
	t.Helper()
	copies := make([]int, last+1)
	for _, f := range files {
		if f.tail != 0 {
			t.Errorf("%s: %d bytes after the last whole message", f.name.path, f.tail)
		}
		for i, rec := range f.recs {
			seq := f.name.firstSeq + uint64(i)
			if seq > last || !bytes.Equal(rec, payload(seq)) {
				t.Fatalf("%s: message %d is not record %d", f.name.path, i, seq)
			}
			copies[seq]++
		}
	}
	return copies
}

// Rotation by size, gzip of closed files and retention by total bytes keep
// the directory within forwarder.file.max_total_bytes while the forwarder
// writes; what is kept is whole and in order (acceptance: rotation and
// retention keep the directory within its budget).
func TestFileSinkRotationRetention(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	cfg := fileConfig(t, dir)
	cfg.File.MaxFileBytes = 64 << 10
	cfg.File.MaxTotalBytes = 512 << 10
	cfg.File.Gzip = true
	reg := prometheus.NewRegistry()
	src := newMemSource()
	f, err := New(cfg, src, fileTestEncoder, testLogger(t), reg)
	if err != nil {
		t.Fatal(err)
	}
	const n = 20000
	recs := make([]record.Record, n)
	rnd := mrand.New(mrand.NewPCG(1, 2))
	for i := range recs {
		recs[i] = seqRecord(uint64(i+1), 200)
		// Incompressible bodies: retention has to delete whether or not
		// the compressor keeps up (compressed zeros stayed under budget).
		for j := bmpHeaderLen + 8; j < len(recs[i].Payload); j++ {
			recs[i].Payload[j] = byte(rnd.Uint32())
		}
	}
	stop := startForwarder(t, f)
	// Records arrive over time so that files rotate, are compressed and
	// deleted while the forwarder writes; the directory is measured all along.
	var maxSeen int64
	for i := 0; i < n; i += 500 {
		src.Append(recs[i : i+500]...)
		testenv.Eventually(t, 30*time.Second, "batch acked", func() bool { return src.Acked() == uint64(i+500) })
		maxSeen = max(maxSeen, dirBytes(t, dir))
	}
	stop()
	final := dirBytes(t, dir)
	// While writing, a batch in progress and a compression's temporary file
	// can add to the budget before retention runs again.
	if slack := 3 * cfg.File.MaxFileBytes; maxSeen > cfg.File.MaxTotalBytes+slack {
		t.Errorf("directory reached %d bytes while writing, budget %d (+%d slack)", maxSeen, cfg.File.MaxTotalBytes, slack)
	}
	if final > cfg.File.MaxTotalBytes {
		t.Errorf("directory holds %d bytes after the stop, budget %d", final, cfg.File.MaxTotalBytes)
	}
	rotated := testutil.ToFloat64(f.sinks[0].(*FileSink).m.rotations.WithLabelValues("size"))
	deleted := testutil.ToFloat64(f.sinks[0].(*FileSink).m.deleted)
	compressed := testutil.ToFloat64(f.sinks[0].(*FileSink).m.compressed)
	if rotated == 0 || deleted == 0 || compressed == 0 {
		t.Errorf("rotations %v, deletions %v, compressions %v: want all > 0", rotated, deleted, compressed)
	}

	raw := readStream(t, dir, StreamBMPRaw)
	copies := checkRawRuns(t, raw, func(seq uint64) []byte { return recs[seq-1].Payload }, n)
	// One session: the files are one run, the oldest deleted, the newest
	// ending at the last record.
	for i := 1; i < len(raw); i++ {
		if want := raw[i-1].name.firstSeq + uint64(len(raw[i-1].recs)); raw[i].name.firstSeq != want {
			t.Errorf("%s starts at seq %d, want %d", raw[i].name.path, raw[i].name.firstSeq, want)
		}
	}
	if copies[n] != 1 {
		t.Errorf("last record in the raw files %d times", copies[n])
	}
	// The compressor stops with the sink, so the newest closed files may
	// still be plain; the older ones kept are compressed (and read above).
	if len(raw) < 3 {
		t.Errorf("%d raw files kept, want several", len(raw))
	}
	events := readStream(t, dir, "bmp.peer")
	var prev uint64
	for _, f := range events {
		for _, line := range f.recs {
			var ev struct{ ID string }
			if err := json.Unmarshal(line, &ev); err != nil {
				t.Fatalf("%s: %q: %v", f.name.path, line, err)
			}
			_, seq, idx, err := ParseMessageID(ev.ID)
			if err != nil || idx != 1 || (prev != 0 && seq != prev+1) {
				t.Fatalf("%s: id %q after seq %d", f.name.path, ev.ID, prev)
			}
			prev = seq
		}
	}
	if prev != n {
		t.Errorf("last event is seq %d, want %d", prev, n)
	}
	t.Logf("%d records: %d raw files kept (%d rotations, %d deleted, %d compressed), directory at most %d bytes while writing, %d at the end (budget %d)",
		n, len(raw), int(rotated), int(deleted), int(compressed), maxSeen, final, cfg.File.MaxTotalBytes)
}

// bgpedge tail --file --follow reads a stream while it is written, across
// rotations and compressions, every event once and in order.
func TestFileTailFollow(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	cfg := fileConfig(t, dir)
	cfg.File.MaxFileBytes = 16 << 10
	cfg.File.Gzip = true
	src := newMemSource()
	f, err := New(cfg, src, fileTestEncoder, testLogger(t), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	startForwarder(t, f)
	const n = 3000
	var out bytes.Buffer
	done := make(chan error, 1)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	src.Append(seqRecord(1, 100)) // the stream directory exists before the tail starts
	testenv.Eventually(t, 10*time.Second, "first record acked", func() bool { return src.Acked() == 1 })
	go func() {
		done <- Tail(ctx, TailOptions{File: dir, Stream: "bmp.peer", Follow: true, JSON: true, Limit: n, Out: &out})
	}()
	for i := uint64(2); i <= n; i++ {
		src.Append(seqRecord(i, 100))
		if i%100 == 0 {
			testenv.Eventually(t, 10*time.Second, "batch acked", func() bool { return src.Acked() == i })
		}
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(&out)
	var seq uint64
	files := map[string]bool{}
	for sc.Scan() {
		var m TailedMessage
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatal(err)
		}
		_, s, _, err := ParseMessageID(m.ID)
		if err != nil || s != seq+1 {
			t.Fatalf("tail printed id %q after seq %d", m.ID, seq)
		}
		seq = s
		files[m.File] = true
	}
	if seq != n {
		t.Fatalf("tail printed %d events, want %d", seq, n)
	}
	if len(files) < 5 {
		t.Errorf("events came from %d files; the test wants rotations", len(files))
	}
	t.Logf("followed %d events across %d files", n, len(files))
}

// mountTmpfs mounts a tmpfs of size bytes at dir until the test ends: a
// small filesystem the test can fill. It needs root; without it the test
// skips, or fails under CI.
func mountTmpfs(t *testing.T, dir string, size int64) {
	t.Helper()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size="+strconv.FormatInt(size, 10)); err != nil {
		testenv.Missing(t, "a small filesystem for the full-disk test", "run as root, which may mount a tmpfs ("+err.Error()+")")
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(dir, syscall.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
}

// A full disk stops the acknowledgements without losing or corrupting
// anything, and the backlog drains once space returns (acceptance: full
// disk).
func TestFileSinkFullDisk(t *testing.T) {
	t.Parallel()
	mnt := t.TempDir()
	mountTmpfs(t, mnt, 2<<20)
	// A filler takes most of the filesystem; removing it gives the space back.
	filler := filepath.Join(mnt, "filler")
	if err := os.WriteFile(filler, make([]byte, 1200<<10), 0o600); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(mnt, "out")
	cfg := fileConfig(t, dir)
	cfg.File.MaxFileBytes = 256 << 10
	cfg.File.MaxTotalBytes = 64 << 20 // retention is not what frees space here
	reg := prometheus.NewRegistry()
	src := newMemSource()
	f, err := New(cfg, src, fileTestEncoder, testLogger(t), reg)
	if err != nil {
		t.Fatal(err)
	}
	startForwarder(t, f)
	const n = 6000 // about 1.9 MB of files: more than the space left
	recs := make([]record.Record, n)
	for i := range recs {
		recs[i] = seqRecord(uint64(i+1), 200)
	}
	src.Append(recs...)
	sink := f.sinks[0].(*FileSink)
	testenv.Eventually(t, 30*time.Second, "writes fail for lack of space", func() bool {
		return testutil.ToFloat64(sink.m.errors.WithLabelValues("no_space")) >= 3
	})
	stuck := src.Acked()
	if stuck == 0 || stuck >= n {
		t.Fatalf("acked %d of %d records with a full disk", stuck, n)
	}
	testenv.Eventually(t, 10*time.Second, "no sink active while the disk is full", func() bool { return f.ActiveSink() == SinkNone })
	// What the files hold while the disk is full: whole messages, every
	// acknowledged record, nothing that was not a record.
	checkFull := func(last uint64) []int {
		copies := checkRawRuns(t, readStream(t, dir, StreamBMPRaw), func(seq uint64) []byte { return recs[seq-1].Payload }, n)
		for seq := uint64(1); seq <= last; seq++ {
			if copies[seq] == 0 {
				t.Fatalf("acknowledged record %d is not in the files", seq)
			}
		}
		for _, fl := range readStream(t, dir, "bmp.peer") {
			if fl.tail != 0 {
				t.Errorf("%s: %d bytes after the last whole line", fl.name.path, fl.tail)
			}
			for _, line := range fl.recs {
				if !json.Valid(line) {
					t.Fatalf("%s: not JSON: %q", fl.name.path, line)
				}
			}
		}
		return copies
	}
	checkFull(stuck)
	if a := src.Acked(); a != stuck {
		t.Fatalf("acked moved from %d to %d with the disk full", stuck, a)
	}
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 30*time.Second, "backlog drained once space returned", func() bool { return src.Acked() == n })
	copies := checkFull(n)
	dups := 0
	for _, c := range copies[1:] {
		dups += max(c-1, 0)
	}
	t.Logf("disk full at record %d of %d (%v no_space errors); drained after space returned, %d duplicates",
		stuck, n, testutil.ToFloat64(sink.m.errors.WithLabelValues("no_space")), dups)
}

// A crash within a write leaves a partial last message; the next Connect
// cuts it off, and the files hold whole messages only.
func TestFileSinkRepairsPartialTail(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	cfg := fileConfig(t, dir)
	src := newMemSource()
	for i := uint64(1); i <= 10; i++ {
		src.Append(seqRecord(i, 100))
	}
	f, err := New(cfg, src, fileTestEncoder, testLogger(t), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	stop := startForwarder(t, f)
	testenv.Eventually(t, 10*time.Second, "acked", func() bool { return src.Acked() == 10 })
	stop()
	for _, stream := range []string{StreamBMPRaw, "bmp.peer"} {
		files := readStream(t, dir, stream)
		fh, err := os.OpenFile(files[len(files)-1].name.path, os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = fh.Write([]byte{3, 0, 0, 0, 100, 0, '{', '"'}) // half a message, half a line
		_ = fh.Close()
	}
	src.Append(seqRecord(11, 100))
	f2, err := New(cfg, src, fileTestEncoder, testLogger(t), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	stop2 := startForwarder(t, f2)
	testenv.Eventually(t, 10*time.Second, "acked", func() bool { return src.Acked() == 11 })
	stop2()
	raw := readStream(t, dir, StreamBMPRaw)
	copies := checkRawRuns(t, raw, func(seq uint64) []byte { return src.recs[seq-1].Payload }, 11)
	if len(raw) != 2 || copies[11] != 1 {
		t.Errorf("%d raw files, record 11 found %d times", len(raw), copies[11])
	}
	for _, fl := range readStream(t, dir, "bmp.peer") {
		if fl.tail != 0 {
			t.Errorf("%s: %d bytes after the last line", fl.name.path, fl.tail)
		}
	}
}

func TestFileConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		name   string
		change func(c *Config)
		want   string
	}{
		{"unknown sink", func(c *Config) { c.Sinks = []string{"kafka", "s3"} }, "forwarder.sinks[1]"},
		{"twice", func(c *Config) { c.Sinks = []string{"file", "file"} }, "forwarder.sinks[1]: file is listed twice"},
		{"nats enabled outside the list", func(c *Config) { c.Sinks = []string{"kafka", "file"}; c.NATS.Enabled = true }, "forwarder.nats.enabled"},
		{"no dir", func(c *Config) { c.Sinks = []string{"file"}; c.File.Dir = "" }, "forwarder.file.dir"},
		{"tiny files", func(c *Config) { c.Sinks = []string{"file"}; c.File.MaxFileBytes = 10 }, "forwarder.file.max_file_bytes"},
		{"small budget", func(c *Config) { c.Sinks = []string{"file"}; c.File.MaxTotalBytes = c.File.MaxFileBytes }, "forwarder.file.max_total_bytes"},
		{"age", func(c *Config) { c.Sinks = []string{"file"}; c.File.MaxFileAge = 0 }, "forwarder.file.max_file_age"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := DefaultConfig()
			c.AgentID = "a1"
			tc.change(&c)
			err := c.Validate()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Validate() = %v, want an error naming %s", err, tc.want)
			}
		})
	}
	c := DefaultConfig()
	c.AgentID = "a1"
	if got := c.SinkOrder(); len(got) != 1 || got[0] != SinkKafka {
		t.Errorf("default order %v", got)
	}
	c.NATS.Enabled = true
	if got := c.SinkOrder(); len(got) != 2 || got[1] != SinkNATS {
		t.Errorf("order with nats.enabled %v", got)
	}
	c.Sinks = []string{SinkFile, SinkNATS}
	if err := c.Validate(); err != nil {
		t.Errorf("file then nats: %v", err)
	}
	// A sink left out of the list is not validated by Validate; a command
	// that uses it anyway (the bridge) asks for it.
	c.Sinks, c.NATS.Enabled = []string{SinkFile}, false
	c.Kafka.Brokers = nil
	if err := c.Validate(); err != nil {
		t.Errorf("kafka settings checked with sinks [file]: %v", err)
	}
	if err := c.ValidateSinks(SinkKafka); err == nil || !strings.Contains(err.Error(), "forwarder.kafka.brokers") {
		t.Errorf("ValidateSinks(kafka) = %v, want an error naming forwarder.kafka.brokers", err)
	}
}

// A value that is not a JSON object (a dead letter's raw record) is kept in
// an envelope with its key and headers; a JSON event spread over lines is
// written on one. tail gives both back.
func TestFileSinkEnvelopeAndCompaction(t *testing.T) {
	dir := t.TempDir()
	fc := DefaultFileConfig()
	fc.Dir = dir
	s, err := NewFileSink(fc, testStreams, testLogger(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	if err := s.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	dl := &Outgoing{Seq: 5, Index: -1, ID: "a1:5", Stream: StreamDLQ, Key: []byte("192.0.2.1"), Value: []byte{0, 1, '\n', 0xff},
		Headers: []Header{{HeaderID, "a1:5"}, {HeaderError, "decode: bad length"}}}
	ev := &Outgoing{Seq: 6, Index: -1, ID: "a1:6", Stream: StreamDLQ, Value: []byte("{\n  \"id\": \"a1:6\",\n  \"type\": \"route\"\n}")}
	// A tombstone (bmp.rib's, on a withdraw): its key is all it says.
	tomb := &Outgoing{Seq: 7, Index: 2, ID: "a1:7:2", Stream: StreamDLQ, Key: []byte("192.0.2.1|route")}
	var acked int
	if err := s.Write(ctx, []*Outgoing{dl, ev, tomb}, func(_ *Outgoing, err error) {
		if err != nil {
			t.Errorf("ack: %v", err)
		}
		acked++
	}); err != nil || acked != 3 {
		t.Fatalf("write: %v, %d acked", err, acked)
	}
	if err := s.Close(ctx); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := Tail(ctx, TailOptions{File: dir, Stream: StreamDLQ, JSON: true, Out: &out}); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 3 {
		t.Fatalf("tail printed %d lines: %q", len(lines), out.String())
	}
	var first, second, third TailedMessage
	if err := json.Unmarshal([]byte(lines[2]), &third); err != nil {
		t.Fatal(err)
	}
	if third.ID != "a1:7:2" || third.Key != "192.0.2.1|route" || third.Bytes != 0 || third.Event != nil || third.Summary != "tombstone" {
		t.Errorf("tombstone read back as %+v", third)
	}
	if err := json.Unmarshal([]byte(lines[0]), &first); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal([]byte(lines[1]), &second); err != nil {
		t.Fatal(err)
	}
	if first.ID != "a1:5" || first.Key != "192.0.2.1" || first.Headers[HeaderError] != "decode: bad length" || first.Bytes != 4 {
		t.Errorf("dead letter read back as %+v", first)
	}
	if second.ID != "a1:6" || !bytes.Equal(second.Event, []byte(`{"id":"a1:6","type":"route"}`)) {
		t.Errorf("event read back as %+v (%s)", second, second.Event)
	}
}
