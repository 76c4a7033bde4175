// Command benchstation measures BMP ingest in a process of its own, so that
// its CPU time and peak memory are not mixed with the sender's.
//
//	benchstation station -listen 127.0.0.1:0 -spool DIR -sessions 14
//	benchstation sink    -listen 127.0.0.1:0 -file F   -sessions 14
//	benchstation replay  -to ADDR -file CAPTURE -sessions 14
//
// station runs the bmp.Listener over a real buffer spool; sink is the
// reference: a plain TCP reader that appends what it reads to one file and
// fsyncs after every read (per session, like the station, which waits for
// each batch to be durable before reading more). Both print their address on
// the first line, then, once the given number of sessions has ended, one
// line of results, and exit.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/bgpedge/bgpedge/bmp"
	"github.com/bgpedge/bgpedge/buffer"
	"github.com/bgpedge/bgpedge/internal/gctune"
	"github.com/bgpedge/bgpedge/record"
	"github.com/prometheus/client_golang/prometheus"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: benchstation station|sink|replay [flags]")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "station":
		gctune.Apply(os.Getenv) // the garbage-collector settings of the bgpedge binary
		err = station(os.Args[2:])
	case "sink":
		err = sink(os.Args[2:])
	case "replay":
		err = replay(os.Args[2:])
	default:
		err = fmt.Errorf("unknown mode %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "benchstation:", err)
		os.Exit(1)
	}
}

// result is what a measured process reports about itself.
type result struct {
	Mode        string  `json:"mode"`
	Sessions    int     `json:"sessions"`
	Messages    uint64  `json:"messages"`
	Bytes       uint64  `json:"bytes"`
	Seconds     float64 `json:"seconds"` // first accept to last session end
	MsgsPerSec  float64 `json:"messages_per_second"`
	MiBPerSec   float64 `json:"mib_per_second"`
	CPUSeconds  float64 `json:"cpu_seconds"` // user + system of this process
	PeakRSSMiB  float64 `json:"peak_rss_mib"`
	SpoolConfig string  `json:"spool_config,omitempty"`
}

func (r *result) finish(start time.Time) {
	r.Seconds = time.Since(start).Seconds()
	r.MsgsPerSec = float64(r.Messages) / r.Seconds
	r.MiBPerSec = float64(r.Bytes) / r.Seconds / (1 << 20)
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err == nil {
		r.CPUSeconds = tv(ru.Utime) + tv(ru.Stime)
	}
	r.PeakRSSMiB = vmHWM()
}

func tv(t syscall.Timeval) float64 { return float64(t.Sec) + float64(t.Usec)/1e6 }

// vmHWM is the process's peak resident set size, from /proc/self/status.
func vmHWM() float64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 64)
			return kb / 1024
		}
	}
	return 0
}

// countingSpool counts what the real spool made durable.
type countingSpool struct {
	sp       *buffer.Spool
	messages atomic.Uint64
	bytes    atomic.Uint64
}

func (c *countingSpool) Append(ctx context.Context, recs ...record.Record) (uint64, error) {
	first, err := c.sp.Append(ctx, recs...)
	if err == nil {
		var msgs, n uint64
		for i := range recs {
			if recs[i].Kind == record.KindBMP {
				msgs++
				n += uint64(len(recs[i].Payload))
			}
		}
		c.messages.Add(msgs)
		c.bytes.Add(n)
	}
	return first, err
}

func station(args []string) error {
	fs := flag.NewFlagSet("station", flag.ExitOnError)
	listen := fs.String("listen", "127.0.0.1:0", "listen address")
	dir := fs.String("spool", "", "spool directory (created; must not be in use)")
	sessions := fs.Int("sessions", 1, "exit after this many sessions ended")
	batchRecords := fs.Int("batch-records", 0, "buffer.batch_records (0: default)")
	batchBytes := fs.Int("batch-bytes", 0, "buffer.batch_bytes (0: default)")
	maxDelay := fs.Duration("max-delay", -1, "buffer.max_delay (-1: default)")
	fs.Parse(args)
	if *dir == "" {
		return fmt.Errorf("-spool is required")
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	bcfg := buffer.DefaultConfig()
	bcfg.Dir = *dir
	bcfg.MaxBytes = 64 << 30
	if *batchRecords > 0 {
		bcfg.BatchRecords = *batchRecords
	}
	if *batchBytes > 0 {
		bcfg.BatchBytes = *batchBytes
	}
	if *maxDelay >= 0 {
		bcfg.MaxDelay = *maxDelay
	}
	if err := bcfg.Validate(); err != nil {
		return err
	}
	sp, err := buffer.Open(bcfg.Options(logger, prometheus.NewRegistry()))
	if err != nil {
		return err
	}
	defer sp.Close()
	cs := &countingSpool{sp: sp}

	cfg := bmp.DefaultConfig()
	cfg.Listen = *listen
	reg := prometheus.NewRegistry()
	l, err := bmp.NewListener(cfg, cs, logger, reg)
	if err != nil {
		return err
	}
	if err := l.Start(context.Background()); err != nil {
		return err
	}
	fmt.Println(l.Addr())

	// Start at the first session; end when no session is open and the
	// listener's counters show all of them closed (gathered only then, so
	// the polling costs next to no CPU).
	var start time.Time
	for {
		time.Sleep(time.Millisecond) // polling granularity of the measurement
		active := l.ActiveSessions()
		if start.IsZero() && active > 0 {
			start = time.Now()
		}
		if !start.IsZero() && active == 0 && closedSessions(reg) >= float64(*sessions) {
			break
		}
	}
	r := result{Mode: "station", Sessions: *sessions, Messages: cs.messages.Load(), Bytes: cs.bytes.Load(),
		SpoolConfig: fmt.Sprintf("batch_records=%d batch_bytes=%d max_delay=%s segment_bytes=%d", bcfg.BatchRecords, bcfg.BatchBytes, bcfg.MaxDelay, bcfg.SegmentBytes)}
	r.finish(start)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := l.Close(ctx); err != nil {
		return err
	}
	return json.NewEncoder(os.Stdout).Encode(r)
}

func closedSessions(g prometheus.Gatherer) float64 {
	mfs, _ := g.Gather()
	var closed float64
	for _, mf := range mfs {
		if mf.GetName() == "bgpedge_bmp_sessions_closed_total" {
			for _, m := range mf.GetMetric() {
				closed += m.GetCounter().GetValue()
			}
		}
	}
	return closed
}

func sink(args []string) error {
	fs := flag.NewFlagSet("sink", flag.ExitOnError)
	listen := fs.String("listen", "127.0.0.1:0", "listen address")
	file := fs.String("file", "", "file to append to (created)")
	sessions := fs.Int("sessions", 1, "exit after this many sessions ended")
	readBuf := fs.Int("read-buffer", 256<<10, "bytes per read, as the station's read_buffer_bytes")
	fs.Parse(args)
	f, err := os.OpenFile(*file, os.O_CREATE|os.O_WRONLY|os.O_APPEND|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	fmt.Println(ln.Addr())
	var (
		bytes atomic.Uint64
		wg    sync.WaitGroup
		mu    sync.Mutex
		start time.Time
		werr  error
	)
	for i := range *sessions {
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		if i == 0 {
			start = time.Now()
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.Close()
			buf := make([]byte, *readBuf)
			for {
				n, err := c.Read(buf)
				if n > 0 {
					mu.Lock()
					_, werr2 := f.Write(buf[:n])
					mu.Unlock()
					// Durable before reading on, as the station's append is.
					if werr2 == nil {
						werr2 = f.Sync()
					}
					if werr2 != nil {
						mu.Lock()
						werr = werr2
						mu.Unlock()
						return
					}
					bytes.Add(uint64(n))
				}
				if err == io.EOF {
					return
				}
				if err != nil {
					return
				}
			}
		}()
	}
	wg.Wait()
	if werr != nil {
		return werr
	}
	r := result{Mode: "sink", Sessions: *sessions, Bytes: bytes.Load()}
	r.finish(start)
	return json.NewEncoder(os.Stdout).Encode(r)
}

func replay(args []string) error {
	fs := flag.NewFlagSet("replay", flag.ExitOnError)
	to := fs.String("to", "", "station address")
	file := fs.String("file", "", "capture to send")
	sessions := fs.Int("sessions", 1, "concurrent sessions")
	loop := fs.Int("loop", 1, "times to send the capture per session")
	fs.Parse(args)
	streams, err := bmp.LoadReplayFile(*file)
	if err != nil {
		return err
	}
	st, err := bmp.Replay(context.Background(), bmp.ReplayOptions{Streams: streams, Target: *to, Sessions: *sessions, Loop: *loop, DrainTimeout: 5 * time.Minute})
	if err != nil {
		return err
	}
	fmt.Printf("replay: %d sessions, %d messages, %d bytes in %.3fs: %.0f messages/s\n", st.Sessions, st.Messages, st.Bytes, st.Duration.Seconds(), st.MessagesPerSecond())
	return nil
}
