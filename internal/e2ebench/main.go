// Command e2ebench measures one end-to-end run of scripts/bench-e2e.sh: it
// replays a BMP capture into a running collector (bgpedge run, or pmacct's
// pmbmpd) and waits until the collector's output is acknowledged by Kafka,
// sampling the collector's memory meanwhile. It prints one JSON line.
//
//	e2ebench measure -pid P -to ADDR -file CAPTURE -sessions N -metrics URL
//	e2ebench measure -pid P -to ADDR -file CAPTURE -sessions N -brokers B -topics T
//	e2ebench topic create|delete -brokers B NAME|PREFIX
//
// With -metrics (bgpedge) the run ends when the spool holds every message
// sent and has none left unacknowledged; with -topics (any producer) when
// the topics' end offsets stop growing for -settle, at the last growth.
// Time runs from the first byte sent; CPU is the process's user+system time
// over the same span; RssAnon is sampled every 20 ms, VmHWM read at the end.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/IBM/sarama"

	"github.com/bgpedge/bgpedge/bmp"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: e2ebench measure|topic ...")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "measure":
		err = measure(os.Args[2:])
	case "topic":
		err = topic(os.Args[2:])
	default:
		err = fmt.Errorf("unknown command %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2ebench:", err)
		os.Exit(1)
	}
}

type result struct {
	Sessions      int     `json:"sessions"`
	Sent          uint64  `json:"sent_messages"`
	Seconds       float64 `json:"seconds"`
	Events        float64 `json:"events"`
	Messages      float64 `json:"kafka_messages"`
	ValueBytes    float64 `json:"value_bytes,omitempty"`
	EventsPerSec  float64 `json:"events_per_second"`
	CPUSeconds    float64 `json:"cpu_seconds"`
	CPUMicrosPerE float64 `json:"cpu_us_per_event"`
	VmHWMMiB      float64 `json:"vmhwm_mib"`
	RssAnonMiB    float64 `json:"peak_rss_anon_mib"`
	// Peak RssFile: file-backed resident pages, among them the route
	// state's mapping of its file (bmp.rib), reported apart from RssAnon.
	RssFileMiB float64 `json:"peak_rss_file_mib"`
	// bgpedge with the route state on: routes it held at the end.
	RIBRoutes     float64 `json:"rib_routes,omitempty"`
	SentSeconds   float64 `json:"sent_seconds"`             // until the last byte was written
	IngestSeconds float64 `json:"ingest_seconds,omitempty"` // bgpedge: until every message sent was spooled
	// bgpedge: heap bytes and objects allocated per event and garbage
	// collections over the run, from its Go collector: unlike CPU time,
	// they do not depend on what else runs on the machine.
	AllocBytesPerE float64 `json:"alloc_bytes_per_event,omitempty"`
	AllocsPerE     float64 `json:"allocs_per_event,omitempty"`
	GCCycles       float64 `json:"gc_cycles,omitempty"`
}

func measure(args []string) error {
	fs := flag.NewFlagSet("measure", flag.ExitOnError)
	pid := fs.Int("pid", 0, "collector process to measure")
	to := fs.String("to", "", "collector BMP address")
	file := fs.String("file", "", "capture to replay")
	sessions := fs.Int("sessions", 1, "concurrent sessions")
	loop := fs.Int("loop", 1, "times each session sends the capture")
	metricsURL := fs.String("metrics", "", "bgpedge /metrics URL: end when the spool is drained")
	brokers := fs.String("brokers", "127.0.0.1:9092", "Kafka bootstrap")
	topics := fs.String("topics", "", "comma-separated topics whose end offsets count events")
	settle := fs.Duration("settle", 3*time.Second, "with -topics: quiet time that ends the run")
	timeout := fs.Duration("timeout", 10*time.Minute, "give up after")
	_ = fs.Parse(args)
	if *pid == 0 || *to == "" || *file == "" || (*metricsURL == "") == (*topics == "") {
		return errors.New("measure: need -pid, -to, -file and one of -metrics, -topics")
	}
	streams, err := bmp.LoadReplayFile(*file)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()

	var offsets func() (int64, error)
	if *topics != "" {
		client, err := sarama.NewClient(strings.Split(*brokers, ","), saramaConfig())
		if err != nil {
			return fmt.Errorf("kafka: %w", err)
		}
		defer client.Close()
		names := strings.Split(*topics, ",")
		offsets = func() (int64, error) { return endOffsets(client, names) }
	}
	var base int64
	if offsets != nil {
		if base, err = offsets(); err != nil {
			return err
		}
	}

	var peakAnon, peakFile atomic.Int64
	sampleDone := make(chan struct{})
	sctx, stopSample := context.WithCancel(ctx)
	defer stopSample()
	go func() {
		defer close(sampleDone)
		t := time.NewTicker(20 * time.Millisecond)
		defer t.Stop()
		for {
			if kb := statusKB(*pid, "RssAnon:"); kb > peakAnon.Load() {
				peakAnon.Store(kb)
			}
			if kb := statusKB(*pid, "RssFile:"); kb > peakFile.Load() {
				peakFile.Store(kb)
			}
			select {
			case <-sctx.Done():
				return
			case <-t.C:
			}
		}
	}()

	var m0 map[string]float64
	if *metricsURL != "" {
		if m0, err = scrape(*metricsURL); err != nil {
			return err
		}
	}
	cpu0, err := processCPU(*pid)
	if err != nil {
		return err
	}
	start := time.Now()
	var (
		replayDone atomic.Bool
		replayErr  error
		stats      bmp.ReplayStats
		ingestEnd  time.Time
		wg         sync.WaitGroup
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		stats, replayErr = bmp.Replay(ctx, bmp.ReplayOptions{Streams: streams, Target: *to, Sessions: *sessions, Loop: *loop})
		ingestEnd = time.Now()
		replayDone.Store(true)
	}()

	var end, spooled time.Time
	var res result
	poll := time.NewTimer(pollMin)
	defer poll.Stop()
	last, lastChange := base, start
	var progress drainProgress
	for end.IsZero() {
		select {
		case <-ctx.Done():
			return fmt.Errorf("measure: timed out after %v (replay done: %v)", *timeout, replayDone.Load())
		case <-poll.C:
		}
		poll.Reset(pollMin)
		now := time.Now()
		if *metricsURL != "" {
			if !replayDone.Load() {
				continue // nothing to learn from the agent before the last byte is sent
			}
			m, err := scrape(*metricsURL)
			if err != nil {
				return err
			}
			poll.Reset(progress.next(now, stats.Messages, m))
			if m["bgpedge_buffer_appended_records_total"] < float64(stats.Messages) {
				continue
			}
			if spooled.IsZero() {
				spooled = now
			}
			// The spool drained of everything the replay sent: every
			// record appended is acknowledged by Kafka.
			if m["bgpedge_buffer_records"] == 0 {
				end = now
				res.Events = m["bgpedge_bmp_route_events_total"]
				res.Messages = m["bgpedge_forwarder_messages_total"]
				res.ValueBytes = m["bgpedge_forwarder_bytes_total"]
				res.RIBRoutes = m["bgpedge_rib_routes"]
				res.AllocBytesPerE = m["go_memstats_alloc_bytes_total"] - m0["go_memstats_alloc_bytes_total"]
				res.AllocsPerE = m["go_memstats_mallocs_total"] - m0["go_memstats_mallocs_total"]
				res.GCCycles = m["go_gc_duration_seconds_count"] - m0["go_gc_duration_seconds_count"]
			}
			continue
		}
		n, err := offsets()
		if err != nil {
			return err
		}
		if n != last {
			last, lastChange = n, now
		}
		if replayDone.Load() && now.Sub(lastChange) >= *settle {
			end = lastChange
			res.Events = float64(last - base)
			res.Messages = res.Events
		}
	}
	cpu1, err := processCPU(*pid)
	if err != nil {
		return err
	}
	stopSample()
	<-sampleDone
	wg.Wait()
	if replayErr != nil {
		return replayErr
	}
	res.Sessions = stats.Sessions
	res.Sent = stats.Messages
	res.Seconds = end.Sub(start).Seconds()
	res.SentSeconds = ingestEnd.Sub(start).Seconds()
	if !spooled.IsZero() {
		res.IngestSeconds = spooled.Sub(start).Seconds()
	}
	if res.Events == 0 {
		res.Events = res.Messages
	}
	res.EventsPerSec = res.Events / res.Seconds
	res.CPUSeconds = cpu1 - cpu0
	res.CPUMicrosPerE = 1e6 * res.CPUSeconds / res.Events
	res.AllocBytesPerE /= res.Events
	res.AllocsPerE /= res.Events
	res.VmHWMMiB = float64(statusKB(*pid, "VmHWM:")) / 1024
	res.RssAnonMiB = float64(peakAnon.Load()) / 1024
	res.RssFileMiB = float64(peakFile.Load()) / 1024
	return json.NewEncoder(os.Stdout).Encode(res)
}

// Scrapes of bgpedge's /metrics cost the agent about 2.5 ms of CPU each
// (its Go and process collectors included), which the benchmark charges to
// it: polled every 50 ms through a long drain that was several per cent of
// its CPU. So the poll waits for the replay to end, then for about half the
// time the drain still needs at its rate so far (pollMin to pollMax): the
// end of the ingest and of the drain are still seen within pollMin, with a
// few dozen scrapes a run.
const (
	pollMin = 50 * time.Millisecond
	pollMax = time.Second
)

// drainProgress estimates when the spool will be drained from two scrapes.
type drainProgress struct {
	at    time.Time
	acked float64
}

// next is the wait before the next scrape, given sent messages and the
// scrape m taken at now.
func (p *drainProgress) next(now time.Time, sent uint64, m map[string]float64) time.Duration {
	appended := m["bgpedge_buffer_appended_records_total"]
	acked := appended - m["bgpedge_buffer_records"]
	prev := *p
	*p = drainProgress{at: now, acked: acked}
	if appended < float64(sent) || prev.at.IsZero() || acked <= prev.acked {
		// Still spooling (the ingest time is measured here too), or no rate yet.
		return pollMin
	}
	rate := (acked - prev.acked) / now.Sub(prev.at).Seconds()
	eta := time.Duration((float64(sent) - acked) / rate * float64(time.Second))
	return min(pollMax, max(pollMin, eta/2))
}

func saramaConfig() *sarama.Config {
	cfg := sarama.NewConfig()
	cfg.Version = sarama.V3_9_0_0
	cfg.ClientID = "bgpedge-e2ebench"
	cfg.Metadata.Retry.Max = 10
	cfg.Metadata.Retry.Backoff = 200 * time.Millisecond
	return cfg
}

// endOffsets sums the newest offsets of every partition of the topics; a
// topic that does not exist yet counts 0.
func endOffsets(client sarama.Client, topics []string) (int64, error) {
	var total int64
	for _, t := range topics {
		ps, err := client.Partitions(t)
		if errors.Is(err, sarama.ErrUnknownTopicOrPartition) {
			continue
		}
		if err != nil {
			return 0, fmt.Errorf("partitions of %s: %w", t, err)
		}
		for _, p := range ps {
			n, err := client.GetOffset(t, p, sarama.OffsetNewest)
			if err != nil {
				return 0, fmt.Errorf("offset of %s/%d: %w", t, p, err)
			}
			total += n
		}
	}
	return total, nil
}

// scrapeClient asks for the exposition uncompressed: the scrape runs every
// 50 ms, far more often than a Prometheus server would, and gzipping it cost
// the agent a few per cent of the CPU the benchmark charges to it.
var scrapeClient = &http.Client{Transport: &http.Transport{DisableCompression: true}}

// scrape sums every sample of each metric family, whatever its labels.
func scrape(url string) (map[string]float64, error) {
	resp, err := scrapeClient.Get(url)
	if err != nil {
		return nil, fmt.Errorf("scrape: %w", err)
	}
	defer resp.Body.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		sp := strings.LastIndexByte(line, ' ')
		if sp < 0 {
			continue
		}
		name := line[:sp]
		if i := strings.IndexByte(name, '{'); i >= 0 {
			name = name[:i]
		}
		v, err := strconv.ParseFloat(line[sp+1:], 64)
		if err == nil {
			out[strings.TrimSpace(name)] += v
		}
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	return out, sc.Err()
}

// processCPU is the user+system time of a process, in seconds.
func processCPU(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// Fields after the command name, which may contain spaces.
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: short", pid)
	}
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return (ut + st) / clockTicks, nil
}

// clockTicks is USER_HZ, 100 on every Linux architecture Go supports.
const clockTicks = 100

// statusKB reads a "Name: N kB" field of /proc/pid/status; 0 when absent.
func statusKB(pid int, field string) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for line := range strings.Lines(string(b)) {
		if rest, ok := strings.CutPrefix(line, field); ok {
			f := strings.Fields(rest)
			if len(f) > 0 {
				n, _ := strconv.ParseInt(f[0], 10, 64)
				return n
			}
		}
	}
	return 0
}

func topic(args []string) error {
	fs := flag.NewFlagSet("topic", flag.ExitOnError)
	brokers := fs.String("brokers", "127.0.0.1:9092", "Kafka bootstrap")
	partitions := fs.Int("partitions", 6, "partitions of a created topic")
	if len(args) < 1 {
		return errors.New("topic create|delete")
	}
	verb := args[0]
	_ = fs.Parse(args[1:])
	if fs.NArg() != 1 {
		return errors.New("topic: one name (create) or prefix (delete)")
	}
	name := fs.Arg(0)
	admin, err := sarama.NewClusterAdmin(strings.Split(*brokers, ","), saramaConfig())
	if err != nil {
		return fmt.Errorf("kafka admin: %w", err)
	}
	defer admin.Close()
	switch verb {
	case "create":
		err := admin.CreateTopic(name, &sarama.TopicDetail{NumPartitions: int32(*partitions), ReplicationFactor: 1}, false)
		if err != nil && !errors.Is(err, sarama.ErrTopicAlreadyExists) {
			return fmt.Errorf("create %s: %w", name, err)
		}
		return nil
	case "delete":
		all, err := admin.ListTopics()
		if err != nil {
			return fmt.Errorf("list topics: %w", err)
		}
		for t := range all {
			if strings.HasPrefix(t, name) {
				if err := admin.DeleteTopic(t); err != nil {
					return fmt.Errorf("delete %s: %w", t, err)
				}
			}
		}
		return nil
	}
	return fmt.Errorf("topic: unknown verb %q", verb)
}
