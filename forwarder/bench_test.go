package forwarder

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime/debug"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/bgpedge/bgpedge/bmp"
	"github.com/bgpedge/bgpedge/buffer"
	"github.com/bgpedge/bgpedge/internal/gctune"
	"github.com/bgpedge/bgpedge/internal/testenv"
	"github.com/bgpedge/bgpedge/record"
)

// benchRecords is the number of spooled records the drain benchmarks use
// (BGPEDGE_BENCH_RECORDS, default 5,000,000).
func benchRecords(b *testing.B) int {
	n := 5_000_000
	if v := os.Getenv("BGPEDGE_BENCH_RECORDS"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil || n < 1000 {
			b.Fatalf("BGPEDGE_BENCH_RECORDS=%q: want a number ≥ 1000", v)
		}
	}
	return n
}

// fillSpool opens a spool in a temporary directory and appends n records of
// size bytes (payload) from the given routers.
func fillSpool(b *testing.B, n, size int) *buffer.Spool {
	b.Helper()
	sp, err := buffer.Open(buffer.Options{Dir: b.TempDir(), SegmentBytes: 256 << 20})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = sp.Close() })
	batch := make([]record.Record, 0, 1000)
	routers := []string{"192.0.2.1", "192.0.2.2", "198.51.100.7", "203.0.113.9"}
	if v := os.Getenv("BGPEDGE_BENCH_ROUTERS"); v != "" {
		// More routers spread the keyed records over more partitions.
		r, err := strconv.Atoi(v)
		if err != nil || r < 1 || r > 250 {
			b.Fatalf("BGPEDGE_BENCH_ROUTERS=%q: want 1..250", v)
		}
		routers = routers[:0]
		for i := range r {
			routers = append(routers, "192.0.2."+strconv.Itoa(i+1))
		}
	}
	for i := 0; i < n; {
		batch = batch[:0]
		for j := 0; j < 1000 && i < n; j, i = j+1, i+1 {
			batch = append(batch, bmpRecord(routers[i%len(routers)], size))
		}
		if _, err := sp.Append(context.Background(), batch...); err != nil {
			b.Fatal(err)
		}
	}
	return sp
}

// drain runs f until the spool is fully acked and returns the elapsed time.
func drain(b *testing.B, f *Forwarder, sp *buffer.Spool, last uint64) time.Duration {
	b.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	stopProfile := benchCPUProfile(b)
	start := time.Now()
	go func() { done <- f.Run(ctx) }()
	t := time.NewTicker(5 * time.Millisecond)
	defer t.Stop()
	progress := os.Getenv("BGPEDGE_BENCH_PROGRESS") != ""
	lastAt, lastSeq := start, sp.FirstUnacked()
	for sp.FirstUnacked() <= last {
		select {
		case err := <-done:
			b.Fatalf("forwarder stopped: %v", err)
		case now := <-t.C:
			if progress && now.Sub(lastAt) >= time.Second {
				seq := sp.FirstUnacked()
				fmt.Printf("progress t=%.0fs acked=%d rate=%.0f/s\n", now.Sub(start).Seconds(), seq-1,
					float64(seq-lastSeq)/now.Sub(lastAt).Seconds())
				lastAt, lastSeq = now, seq
			}
		}
	}
	d := time.Since(start)
	stopProfile()
	cancel()
	if err := <-done; err != nil {
		b.Fatal(err)
	}
	return d
}

// benchCPUProfile profiles the drain alone (not the spool fill) into the file
// named by BGPEDGE_BENCH_CPUPROFILE; the returned func stops it.
func benchCPUProfile(b *testing.B) func() {
	path := os.Getenv("BGPEDGE_BENCH_CPUPROFILE")
	if path == "" {
		return func() {}
	}
	fh, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	if err := pprof.StartCPUProfile(fh); err != nil {
		b.Fatal(err)
	}
	return func() {
		pprof.StopCPUProfile()
		_ = fh.Close()
	}
}

// processCPU is the user+system CPU time this process has used.
func processCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

var perfRate = regexp.MustCompile(`(\d+) records sent, ([\d.]+) records/sec`)

// perfProps are the reference producer's settings besides bootstrap.servers:
// the guarantees the forwarder gives (acks=all, idempotence, whose limit of
// five requests in flight is the Java default) and otherwise the Java
// producer's defaults (batch.size 16384, linger.ms 5, no compression).
// ProducerPerformance sends no key and no headers: its records spread over
// every partition (sticky partitioner); the forwarder's are keyed by router.
func perfProps() []string {
	return []string{"acks=all", "enable.idempotence=true", "max.in.flight.requests.per.connection=5"}
}

// producerPerformance runs Kafka's own ProducerPerformance with the same
// record count and size, acks=all and idempotence, and returns records/s.
func producerPerformance(b *testing.B, brokers []string, topic string, n, size int) float64 {
	b.Helper()
	script := os.Getenv("BGPEDGE_KAFKA_SH")
	if script == "" {
		script = filepath.Join(testenv.RepoRoot(b), "scripts", "kafka.sh")
	}
	args := []string{script, "perf", "--topic", topic, "--num-records", strconv.Itoa(n),
		"--record-size", strconv.Itoa(size), "--throughput", "-1",
		"--producer-props", "bootstrap.servers=" + brokers[0]}
	cmd := exec.Command("bash", append(args, perfProps()...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		b.Fatalf("ProducerPerformance: %v\n%s", err, out)
	}
	m := perfRate.FindAllSubmatch(out, -1)
	if len(m) == 0 {
		b.Fatalf("ProducerPerformance output not understood:\n%s", out)
	}
	rate, _ := strconv.ParseFloat(string(m[len(m)-1][2]), 64)
	return rate
}

func createTopic(b *testing.B, brokers []string, topic string, partitions int32) {
	b.Helper()
	admin, err := sarama.NewClusterAdmin(brokers, testenv.SaramaConfig(b))
	if err != nil {
		b.Fatal(err)
	}
	defer admin.Close()
	if err := admin.CreateTopic(topic, &sarama.TopicDetail{NumPartitions: partitions, ReplicationFactor: 1}, false); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		a, err := sarama.NewClusterAdmin(brokers, testenv.SaramaConfig(b))
		if err == nil {
			_ = a.DeleteTopic(topic)
			_ = a.Close()
		}
	})
}

// BenchmarkDrainKafka drains spooled ~200 B records to Kafka and compares the
// rate with Kafka's ProducerPerformance run just before and just after the
// drain (same size, acks=all, idempotence, same partition count): the
// machine is shared, so the reference brackets the measurement. Run once:
// -benchtime=1x. BGPEDGE_BENCH_NO_REF=1 skips the reference (tuning runs).
func BenchmarkDrainKafka(b *testing.B) {
	gcAsAgent(b)
	brokers := testenv.KafkaBrokers(b)
	n, size := benchRecords(b), 200
	sp := fillSpool(b, n, size)
	cfg := testConfig(b, brokers)
	cfg.Topics.Ensure = []string{StreamBMPRaw}
	cfg.Kafka.Partitions = 6
	benchKafkaOverrides(b, &cfg)
	deleteTopicsAtEnd(b, brokers, cfg, StreamBMPRaw)
	f, err := New(cfg, sp, rawBMP, nil, prometheus.NewRegistry())
	if err != nil {
		b.Fatal(err)
	}
	withRef := os.Getenv("BGPEDGE_BENCH_NO_REF") == ""
	reference := func(name string) float64 {
		topic := cfg.Topics.Prefix + name
		createTopic(b, brokers, topic, cfg.Kafka.Partitions)
		return producerPerformance(b, brokers, topic, n, size)
	}
	var refBefore float64
	if withRef {
		b.StopTimer()
		refBefore = reference("perf-before")
		b.StartTimer()
	}

	b.ResetTimer()
	cpu0 := processCPU(b)
	d := drain(b, f, sp, uint64(n))
	cpu := processCPU(b) - cpu0
	b.StopTimer()
	ours := float64(n) / d.Seconds()
	b.ReportMetric(ours, "records/s")
	// CPU per record is what the forwarder controls; the rate also depends
	// on what else the shared machine runs.
	b.ReportMetric(float64(cpu.Microseconds())/float64(n), "cpu-µs/record")
	fmt.Printf("drain-kafka records=%d size=%d forwarder=%.0f/s (%.1f MB/s) cpu=%.1fs (%.2f µs/record, %.0f%% of one core)\n",
		n, size, ours, ours*float64(size)/1e6, cpu.Seconds(), float64(cpu.Microseconds())/float64(n), 100*cpu.Seconds()/d.Seconds())
	if !withRef {
		return
	}
	refAfter := reference("perf-after")
	ref := (refBefore + refAfter) / 2
	b.ReportMetric(ref, "ref-records/s")
	b.ReportMetric(ours/ref, "ratio")
	fmt.Printf("drain-kafka producer-performance before=%.0f/s after=%.0f/s mean=%.0f/s ratio=%.2f (props: %s)\n",
		refBefore, refAfter, ref, ours/ref, strings.Join(perfProps(), " "))
}

// BenchmarkDrainJetStream drains spooled ~200 B records to an embedded
// JetStream server (Kafka unreachable, failover after 1 ms).
func BenchmarkDrainJetStream(b *testing.B) {
	gcAsAgent(b)
	n, size := benchRecords(b)/5, 200
	sp := fillSpool(b, n, size)
	ns := testenv.StartNATS(b)
	cfg := testConfig(b, []string{"127.0.0.1:1"})
	cfg.FailoverAfter = time.Millisecond
	cfg.FailbackAfter = time.Hour
	cfg.NATS.Enabled = true
	cfg.NATS.URL = ns.URL()
	f, err := New(cfg, sp, rawBMP, nil, prometheus.NewRegistry())
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	d := drain(b, f, sp, uint64(n))
	b.StopTimer()
	rate := float64(n) / d.Seconds()
	b.ReportMetric(rate, "records/s")
	fmt.Printf("drain-jetstream records=%d size=%d forwarder=%.0f/s (%.1f MB/s)\n", n, size, rate, rate*float64(size)/1e6)
}

// BenchmarkDrainBMPJSON drains the 100k-route capture through the bmp
// encoder (raw message plus one JSON event per route) and reports route
// events per second delivered to Kafka.
func BenchmarkDrainBMPJSON(b *testing.B) {
	gcAsAgent(b)
	brokers := testenv.KafkaBrokers(b)
	msgs, err := loadCapture(testenv.Shared(b, "bmpdata", "raw", "gobgp-3.10-all-dump-100k.bmp.gz"))
	if err != nil {
		b.Fatal(err)
	}
	sp, err := buffer.Open(buffer.Options{Dir: b.TempDir(), SegmentBytes: 256 << 20})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = sp.Close() })
	for i := 0; i < len(msgs); i += 1000 {
		recs := make([]record.Record, 0, 1000)
		for j := i; j < min(i+1000, len(msgs)); j++ {
			recs = append(recs, killRecord(msgs, 1, uint64(j+1)))
		}
		if _, err := sp.Append(context.Background(), recs...); err != nil {
			b.Fatal(err)
		}
	}
	cfg := testConfig(b, brokers)
	cfg.Kafka.Partitions = 6
	cfg.Topics.Streams = append(bmp.Streams(), Streams()...)
	cfg.Topics.Ensure = []string{"bmp.raw", "bmp.route.pre-policy", "bmp.route.post-policy", "bmp.route.loc-rib", "bmp.peer", "bmp.stats", "bmp.router", "bmp.errors", StreamDLQ}
	deleteTopicsAtEnd(b, brokers, cfg, cfg.Topics.Ensure...)
	enc := bmpEncoder(b, cfg.AgentID)
	var routes int
	counting := EncoderFunc(func(rec record.Record, emit func(record.Output)) error {
		return enc.Encode(rec, func(m record.Output) {
			if len(m.Stream) > 10 && m.Stream[:10] == "bmp.route." {
				routes++
			}
			emit(m)
		})
	})
	f, err := New(cfg, sp, counting, nil, prometheus.NewRegistry())
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	d := drain(b, f, sp, uint64(len(msgs)))
	b.StopTimer()
	b.ReportMetric(float64(routes)/d.Seconds(), "route-events/s")
	fmt.Printf("drain-bmp-json bmp-messages=%d route-events=%d (raw messages too) in %v: %.0f route events/s, %.0f BMP messages/s\n",
		len(msgs), routes, d.Round(time.Millisecond), float64(routes)/d.Seconds(), float64(len(msgs))/d.Seconds())
}

// BenchmarkSpoolReadAck is the forwarder's source side alone: Read of
// read_batch records and AckThrough, as the drain does, with no sink. It
// bounds what any sink can reach.
func BenchmarkSpoolReadAck(b *testing.B) {
	n, size := benchRecords(b), 200
	sp := fillSpool(b, n, size)
	batch := DefaultConfig().ReadBatch
	b.ResetTimer()
	start := time.Now()
	from := sp.FirstUnacked()
	for from <= uint64(n) {
		recs, err := sp.Read(context.Background(), from, batch)
		if err != nil {
			b.Fatal(err)
		}
		from = recs[len(recs)-1].Seq + 1
		if err := sp.AckThrough(from - 1); err != nil {
			b.Fatal(err)
		}
	}
	rate := float64(n) / time.Since(start).Seconds()
	b.ReportMetric(rate, "records/s")
	fmt.Printf("spool-read-ack records=%d size=%d %.0f/s\n", n, size, rate)
}

// benchKafkaOverrides applies BGPEDGE_BENCH_FLUSH (a duration) and
// BGPEDGE_BENCH_FLUSH_BYTES, to compare producer batching settings.
func benchKafkaOverrides(b *testing.B, cfg *Config) {
	if v := os.Getenv("BGPEDGE_BENCH_FLUSH"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			b.Fatal(err)
		}
		cfg.Kafka.FlushFrequency = d
	}
	if v := os.Getenv("BGPEDGE_BENCH_PRODUCERS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			b.Fatal(err)
		}
		cfg.Kafka.Producers = n
	}
	if v := os.Getenv("BGPEDGE_BENCH_MAX_MESSAGE_BYTES"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			b.Fatal(err)
		}
		cfg.Kafka.MaxMessageBytes = n
	}
	if v := os.Getenv("BGPEDGE_BENCH_FLUSH_BYTES"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			b.Fatal(err)
		}
		cfg.Kafka.FlushBytes = n
	}
	b.Logf("flush_frequency %v flush_bytes %d max_message_bytes %d producers %d", cfg.Kafka.FlushFrequency, cfg.Kafka.FlushBytes, cfg.Kafka.MaxMessageBytes, cfg.Kafka.Producers)
}

// gcAsAgent gives the benchmark the garbage-collector settings the bgpedge
// binary runs with (internal/gctune), for the benchmark's duration.
func gcAsAgent(b *testing.B) {
	percent, limit := debug.SetGCPercent(-1), debug.SetMemoryLimit(-1)
	debug.SetGCPercent(percent)
	gc := gctune.Apply(os.Getenv)
	b.Logf("GC percent %d, soft memory limit %d MiB", gc.Percent, gc.MemoryLimit>>20)
	b.Cleanup(func() {
		debug.SetGCPercent(percent)
		debug.SetMemoryLimit(limit)
	})
}

// floorSetup is what both floor benchmarks start from: the agent's GC
// settings, a fresh 6-partition topic for stream "floor", n records of size
// bytes (BGPEDGE_BENCH_RECORDS, BGPEDGE_BENCH_SIZE, default 496).
func floorSetup(b *testing.B) (brokers []string, cfg Config, n, size int) {
	gcAsAgent(b)
	brokers = testenv.KafkaBrokers(b)
	n, size = benchRecords(b), 496
	if v := os.Getenv("BGPEDGE_BENCH_SIZE"); v != "" {
		var err error
		if size, err = strconv.Atoi(v); err != nil || size < 1 {
			b.Fatalf("BGPEDGE_BENCH_SIZE=%q", v)
		}
	}
	cfg = testConfig(b, brokers)
	cfg.Kafka.Partitions = 6
	benchKafkaOverrides(b, &cfg)
	createTopic(b, brokers, cfg.Topics.Topic("floor"), cfg.Kafka.Partitions)
	return brokers, cfg, n, size
}

// BenchmarkSaramaFloor is what sarama's producer alone costs per message,
// with nothing of the forwarder around it: no spool, no encoding, no
// tracker. Messages shaped like the JSON route events of the 100k dump
// (key of 40 B, value of BGPEDGE_BENCH_SIZE, default 496 B, the five
// bgpedge headers) go to forwarder.kafka.producers idempotent producers
// configured by SaramaConfig (the shipped defaults), each owning the
// partitions hashed to it as KafkaSink does; the successes are counted.
// CPU per message is the floor under the forwarder's own
// (docs/BENCHMARKS.md, "End to end, decoded").
func BenchmarkSaramaFloor(b *testing.B) {
	brokers, cfg, n, size := floorSetup(b)
	topic := cfg.Topics.Topic("floor")
	sc, err := SaramaConfig(cfg.Kafka)
	if err != nil {
		b.Fatal(err)
	}
	lanes := max(cfg.Kafka.Producers, 1)
	if lanes > 1 {
		sc.Producer.Partitioner = sarama.NewManualPartitioner
	}
	var producers []sarama.AsyncProducer
	for range lanes {
		p, err := sarama.NewAsyncProducer(brokers, sc)
		if err != nil {
			b.Fatal(err)
		}
		producers = append(producers, p)
	}
	done := make(chan int, lanes)
	for _, p := range producers {
		go func() {
			ok := 0
			for range p.Successes() {
				ok++
			}
			done <- ok
		}()
		go func() {
			for pe := range p.Errors() {
				b.Errorf("produce: %v", pe.Err)
			}
		}()
	}
	value := make([]byte, size)
	for i := range value {
		value[i] = 'a' + byte(i%26)
	}
	hdrs := []sarama.RecordHeader{
		{Key: []byte(HeaderID), Value: []byte("edge1:12345678:0")},
		{Key: []byte(HeaderKind), Value: []byte("bmp")},
		{Key: []byte(HeaderRouter), Value: []byte("127.0.0.10")},
		{Key: []byte(HeaderAgent), Value: []byte("edge1")},
		{Key: []byte(HeaderStream), Value: []byte("bmp.route.loc-rib")},
	}
	hash := sarama.NewHashPartitioner(topic)

	b.ResetTimer()
	cpu0 := processCPU(b)
	start := time.Now()
	for i := range n {
		key := []byte(fmt.Sprintf("127.0.0.10|0:0|10.%d.%d.0/24|%08d", i>>16&255, i>>8&255, i))
		m := &sarama.ProducerMessage{Topic: topic, Key: sarama.ByteEncoder(key), Value: sarama.ByteEncoder(value), Headers: hdrs}
		lane := 0
		if lanes > 1 {
			p, err := hash.Partition(m, cfg.Kafka.Partitions)
			if err != nil {
				b.Fatal(err)
			}
			m.Partition, lane = p, int(p)%lanes
		}
		producers[lane].Input() <- m
	}
	for _, p := range producers {
		p.AsyncClose()
	}
	ok := 0
	for range lanes {
		ok += <-done
	}
	d := time.Since(start)
	cpu := processCPU(b) - cpu0
	b.StopTimer()
	if ok != n {
		b.Fatalf("%d of %d messages acknowledged", ok, n)
	}
	b.ReportMetric(float64(n)/d.Seconds(), "records/s")
	b.ReportMetric(float64(cpu.Nanoseconds())/1e3/float64(n), "cpu-µs/record")
	fmt.Printf("sarama-floor records=%d size=%d producers=%d %.0f/s cpu=%.1fs (%.2f µs/record)\n",
		n, size, lanes, float64(n)/d.Seconds(), cpu.Seconds(), float64(cpu.Nanoseconds())/1e3/float64(n))
}

// BenchmarkKafkaSinkFloor is BenchmarkSaramaFloor's messages produced
// through KafkaSink (its lanes, kafka_lane.go) instead of sarama's
// AsyncProducer, in Write batches of forwarder.read_batch messages: run
// both in one sitting to compare the two on the same broker and load.
func BenchmarkKafkaSinkFloor(b *testing.B) {
	_, cfg, n, size := floorSetup(b)
	sink := NewKafkaSink(cfg.Kafka, cfg.Topics, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if err := sink.Connect(ctx); err != nil {
		b.Fatal(err)
	}
	value := make([]byte, size)
	for i := range value {
		value[i] = 'a' + byte(i%26)
	}
	hdrs := []Header{
		{Key: HeaderID, Value: "edge1:12345678:0"},
		{Key: HeaderKind, Value: "bmp"},
		{Key: HeaderRouter, Value: "127.0.0.10"},
		{Key: HeaderAgent, Value: "edge1"},
		{Key: HeaderStream, Value: "bmp.route.loc-rib"},
	}
	// The forwarder's bound on messages in flight, as its tracker keeps it.
	var mu sync.Mutex
	room := sync.NewCond(&mu)
	acked, failed := 0, 0
	ack := func(_ *Outgoing, err error) {
		mu.Lock()
		if err != nil {
			failed++
		}
		acked++
		if acked%256 == 0 {
			room.Signal()
		}
		mu.Unlock()
	}
	batchSize := cfg.ReadBatch
	b.ResetTimer()
	cpu0 := processCPU(b)
	start := time.Now()
	for i := 0; i < n; i += batchSize {
		batch := make([]*Outgoing, 0, batchSize)
		for j := i; j < min(i+batchSize, n); j++ {
			key := []byte(fmt.Sprintf("127.0.0.10|0:0|10.%d.%d.0/24|%08d", j>>16&255, j>>8&255, j))
			batch = append(batch, &Outgoing{Seq: uint64(j + 1), Index: -1, Stream: "floor", Key: key, Value: value, Headers: hdrs})
		}
		mu.Lock()
		for i-acked > cfg.MaxInFlight {
			room.Wait()
		}
		mu.Unlock()
		if err := sink.Write(ctx, batch, ack); err != nil {
			b.Fatal(err)
		}
	}
	if err := sink.Close(ctx); err != nil {
		b.Fatal(err)
	}
	d := time.Since(start)
	cpu := processCPU(b) - cpu0
	b.StopTimer()
	if acked != n || failed != 0 {
		b.Fatalf("%d of %d messages acknowledged, %d failed", acked, n, failed)
	}
	b.ReportMetric(float64(n)/d.Seconds(), "records/s")
	b.ReportMetric(float64(cpu.Nanoseconds())/1e3/float64(n), "cpu-µs/record")
	fmt.Printf("sink-floor records=%d size=%d producers=%d %.0f/s cpu=%.1fs (%.2f µs/record)\n",
		n, size, cfg.Kafka.Producers, float64(n)/d.Seconds(), cpu.Seconds(), float64(cpu.Nanoseconds())/1e3/float64(n))
}
