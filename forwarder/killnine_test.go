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
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/bgpedge/bgpedge/buffer"
	"github.com/bgpedge/bgpedge/internal/testenv"
	"github.com/bgpedge/bgpedge/record"
)

var _ Source = (*buffer.Spool)(nil)

const childEnv = "BGPEDGE_FORWARDER_KILL_CHILD"

// killChildSpec is what the parent hands the child process (as JSON in childEnv).
type killChildSpec struct {
	SpoolDir string
	Capture  string
	Sessions int    // the capture is replayed as this many router sessions
	Target   uint64 // records to spool in total
	Drain    bool   // exit 0 once everything is spooled and acked
	Config   Config
}

// loadCapture splits a (gzip'd) raw BMP capture into messages.
func loadCapture(path string) ([][]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var r io.Reader = f
	if strings.HasSuffix(path, ".gz") {
		gz, err := gzip.NewReader(f)
		if err != nil {
			return nil, err
		}
		r = gz
	}
	data, err := io.ReadAll(r)
	if err != nil {
		return nil, err
	}
	var msgs [][]byte
	for len(data) >= 6 {
		n := int(binary.BigEndian.Uint32(data[1:5]))
		if n < 6 || n > len(data) {
			return nil, fmt.Errorf("%s: bad BMP length %d at message %d", path, n, len(msgs))
		}
		msgs = append(msgs, data[:n:n])
		data = data[n:]
	}
	return msgs, nil
}

// killRecord is the deterministic content of spool seq s: the capture
// replayed Sessions times, each as a different router.
func killRecord(msgs [][]byte, sessions int, seq uint64) record.Record {
	i := (seq - 1) % uint64(len(msgs))
	router := fmt.Sprintf("10.0.%d.1", ((seq-1)/uint64(len(msgs)))%uint64(sessions))
	return record.Record{Kind: record.KindBMP, Key: []byte(router), Source: router, Time: time.Unix(0, 0), Payload: msgs[i]}
}

// runKillChild is the forwarding process: spool + forwarder, with an
// appender replaying the capture into the spool until Target records exist.
func runKillChild() int {
	var spec killChildSpec
	if err := json.Unmarshal([]byte(os.Getenv(childEnv)), &spec); err != nil {
		fmt.Fprintln(os.Stderr, "child spec:", err)
		return 2
	}
	msgs, err := loadCapture(spec.Capture)
	if err != nil {
		fmt.Fprintln(os.Stderr, "capture:", err)
		return 2
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	sp, err := buffer.Open(buffer.Options{Dir: spec.SpoolDir, Logger: logger})
	if err != nil {
		fmt.Fprintln(os.Stderr, "spool:", err)
		return 2
	}
	f, err := New(spec.Config, sp, Raw{}, logger, prometheus.NewRegistry())
	if err != nil {
		fmt.Fprintln(os.Stderr, "forwarder:", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	runDone := make(chan error, 1)
	go func() { runDone <- f.Run(ctx) }()
	appendDone := make(chan error, 1)
	go func() {
		for {
			last := sp.Stats().LastSeq
			if last >= spec.Target {
				appendDone <- nil
				return
			}
			n := min(500, spec.Target-last)
			recs := make([]record.Record, n)
			for i := range recs {
				recs[i] = killRecord(msgs, spec.Sessions, last+1+uint64(i))
			}
			first, err := sp.Append(ctx, recs...)
			if err != nil {
				appendDone <- err
				return
			}
			if first != last+1 {
				appendDone <- fmt.Errorf("append got seq %d, want %d", first, last+1)
				return
			}
		}
	}()
	out := bufio.NewWriter(os.Stdout)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	appended := false
	for {
		select {
		case err := <-appendDone:
			if err != nil {
				fmt.Fprintln(os.Stderr, "append:", err)
				return 2
			}
			appended = true
		case err := <-runDone:
			fmt.Fprintln(os.Stderr, "forwarder stopped:", err)
			return 2
		case <-tick.C:
		}
		st := sp.Stats()
		acked := sp.FirstUnacked() - 1
		fmt.Fprintf(out, "progress %d %d\n", acked, st.LastSeq)
		_ = out.Flush()
		if spec.Drain && appended && acked >= spec.Target {
			stop()
			if err := <-runDone; err != nil {
				fmt.Fprintln(os.Stderr, "forwarder:", err)
				return 2
			}
			if err := sp.Close(); err != nil {
				fmt.Fprintln(os.Stderr, "spool close:", err)
				return 2
			}
			fmt.Fprintf(out, "done %d\n", acked)
			_ = out.Flush()
			return 0
		}
	}
}

// The forwarding process is killed with SIGKILL 20 times while it drains a
// stream of over a million BMP messages (the 100k-route capture replayed as
// four sessions) to Kafka: afterwards every spooled record is in Kafka with
// the right content; duplicates are counted (acceptance 2).
func TestKillNineDuringStream(t *testing.T) {
	t.Parallel()
	brokers := testenv.KafkaBrokers(t)
	capture := testenv.Shared(t, "bmpdata", "raw", "gobgp-3.10-all-dump-100k.bmp.gz")
	msgs, err := loadCapture(capture)
	if err != nil {
		t.Fatal(err)
	}
	sessions, kills := 4, 20
	if testing.Short() {
		sessions, kills = 1, 5
	}
	target := uint64(len(msgs) * sessions)
	cfg := testConfig(t, brokers)
	cfg.Kafka.Partitions = 6
	cfg.Topics.Ensure = []string{StreamBMPRaw}
	deleteTopicsAtEnd(t, brokers, cfg, StreamBMPRaw)
	spec := killChildSpec{SpoolDir: t.TempDir(), Capture: capture, Sessions: sessions, Target: target, Config: cfg}

	start := time.Now()
	for i := range kills {
		// Kill at evenly spread points of the drain, with jitter, so every
		// kill lands mid-stream with work in flight.
		at := target * uint64(i+1) / uint64(kills+2)
		runChild(t, spec, func(acked, last uint64) bool { return acked >= at })
	}
	t.Logf("%d kills in %v", kills, time.Since(start).Round(time.Second))
	spec.Drain = true
	runChild(t, spec, nil)
	t.Logf("stream of %d records spooled and drained in %v", target, time.Since(start).Round(time.Second))

	seen := make([]uint8, target+1)
	var mu sync.Mutex
	var total, bad int
	o := &checkOracle{check: func(m *sarama.ConsumerMessage) {
		_, seq, _, err := ParseMessageID(headerValue(m.Headers, HeaderID))
		mu.Lock()
		defer mu.Unlock()
		total++
		if err != nil || seq == 0 || seq > target {
			bad++
			return
		}
		want := killRecord(msgs, sessions, seq)
		if !bytes.Equal(m.Value, want.Payload) || string(m.Key) != string(want.Key) {
			bad++
		}
		if seen[seq] < 255 {
			seen[seq]++
		}
	}}
	consumeChecked(t, brokers, o, cfg.Topics.Topic(StreamBMPRaw))
	distinct := func() (n uint64) {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range seen[1:] {
			if c > 0 {
				n++
			}
		}
		return n
	}
	testenv.Eventually(t, 5*time.Minute, "every record in kafka", func() bool { return distinct() == target })
	mu.Lock()
	defer mu.Unlock()
	if bad > 0 {
		t.Errorf("%d messages with a wrong id, key or value", bad)
	}
	t.Logf("%d records, %d kill -9, 0 missing, %d duplicates (%.2f%%)", target, kills, total-int(target), 100*float64(total-int(target))/float64(target))
}

// runChild starts the forwarding process and SIGKILLs it once killWhen
// reports true (plus up to 100 ms jitter); with killWhen nil it waits for
// the child to finish draining.
func runChild(t *testing.T, spec killChildSpec, killWhen func(acked, last uint64) bool) {
	t.Helper()
	js, err := json.Marshal(spec)
	if err != nil {
		t.Fatal(err)
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+string(js))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(stdout)
	killed, done := false, false
	deadline := time.AfterFunc(10*time.Minute, func() { _ = cmd.Process.Kill() })
	defer deadline.Stop()
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 2 && f[0] == "done" {
			done = true
			continue
		}
		if len(f) != 3 || f[0] != "progress" || killWhen == nil || killed {
			continue
		}
		acked, _ := strconv.ParseUint(f[1], 10, 64)
		last, _ := strconv.ParseUint(f[2], 10, 64)
		if killWhen(acked, last) {
			jitter := time.NewTimer(time.Duration(rand.N(100)) * time.Millisecond)
			<-jitter.C // kill moment, not a synchronisation point
			if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
				t.Fatalf("kill -9: %v", err)
			}
			killed = true
		}
	}
	err = cmd.Wait()
	switch {
	case killWhen != nil && !killed:
		t.Fatalf("forwarding process ended before it was killed: %v\n%s", err, stderr.String())
	case killWhen == nil && (err != nil || !done):
		t.Fatalf("draining process: %v\n%s", err, stderr.String())
	}
}

// checkOracle hands every consumed message to check.
type checkOracle struct{ check func(*sarama.ConsumerMessage) }

// consumeChecked consumes topic from the oldest offsets into o until the test ends.
func consumeChecked(t testing.TB, brokers []string, o *checkOracle, topic string) {
	t.Helper()
	cfg := testenv.SaramaConfig(t)
	cfg.Consumer.Return.Errors = true
	cfg.Consumer.Fetch.Default = 4 << 20
	consumer, err := sarama.NewConsumer(brokers, cfg)
	if err != nil {
		t.Fatalf("kafka consumer: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() {
		cancel()
		wg.Wait()
		_ = consumer.Close()
	})
	parts, err := consumer.Partitions(topic)
	if err != nil {
		t.Fatalf("partitions of %s: %v", topic, err)
	}
	for _, p := range parts {
		pc, err := consumer.ConsumePartition(topic, p, sarama.OffsetOldest)
		if err != nil {
			t.Fatalf("consume %s/%d: %v", topic, p, err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer pc.AsyncClose()
			for {
				select {
				case m := <-pc.Messages():
					o.check(m)
				case <-pc.Errors():
				case <-ctx.Done():
					return
				}
			}
		}()
	}
}
