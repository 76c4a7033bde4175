package buffer

import (
	"bufio"
	"context"
	"fmt"
	"hash/crc32"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

const crashDirEnv = "BGPEDGE_BUFFER_CRASH_DIR"

// crashSegmentBytes is small so rotation and segment deletion happen in
// every cycle of the crash test.
const crashSegmentBytes = 128 << 10

// crashChild is the child of TestCrashOracle (run through TestMain): it appends from several
// goroutines and acks from another until it is killed, reporting on stdout
// every append that returned ("A first crc...") and every ack before it is
// made ("K seq").
func crashChild(dir string) {
	s, err := Open(Options{Dir: dir, SegmentBytes: crashSegmentBytes, MaxDelay: time.Millisecond})
	if err != nil {
		fmt.Printf("E open: %v\n", err)
		os.Exit(3)
	}
	var out sync.Mutex
	crashWork(s, func(line string) {
		out.Lock()
		defer out.Unlock()
		_, _ = os.Stdout.WriteString(line)
	})
}

// crashWork appends from four goroutines and reads and acks from the
// calling one, forever, reporting through say (safe for concurrent use)
// every append that returned ("A first crc...") and every ack before it is
// made ("K seq"). The power-cut test's guest runs it too.
func crashWork(s *Spool, say func(string)) {
	ctx := context.Background()
	for g := 0; g < 4; g++ {
		go func(g int) {
			rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), uint64(g)))
			for {
				recs := testRecords(rng, 1+rng.IntN(30), 50+rng.IntN(1500))
				first, err := s.Append(ctx, recs...)
				if err != nil {
					say(fmt.Sprintf("E append: %v\n", err))
					return
				}
				var b strings.Builder
				fmt.Fprintf(&b, "A %d", first)
				for _, r := range recs {
					fmt.Fprintf(&b, " %d", crc32.ChecksumIEEE(r.Payload))
				}
				b.WriteByte('\n')
				say(b.String())
			}
		}(g)
	}
	from := s.FirstUnacked()
	for {
		recs, err := s.Read(ctx, from, 300)
		if err != nil {
			say(fmt.Sprintf("E read: %v\n", err))
			select {}
		}
		for _, r := range recs {
			if !payloadOK(r.Payload) {
				say(fmt.Sprintf("E seq %d payload corrupt\n", r.Seq))
			}
		}
		last := recs[len(recs)-1].Seq
		from = last + 1
		// Keep a backlog of a few hundred records unacknowledged, so every
		// crash leaves work to redeliver, while segments still get deleted.
		if last > 400 {
			say(fmt.Sprintf("K %d\n", last-400))
			if err := s.AckThrough(last - 400); err != nil {
				say(fmt.Sprintf("E ack: %v\n", err))
			}
		}
	}
}

type crashOracle struct {
	mu        sync.Mutex
	crc       map[uint64]uint32 // every acknowledged append, across all cycles
	maxAck    uint64            // highest ack the child intended
	maxSeq    uint64
	appends   int // append lines in the current cycle
	childErrs []string
}

func (o *crashOracle) consume(t *testing.T, line string) {
	f := strings.Fields(line)
	if len(f) < 2 {
		return
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	switch f[0] {
	case "A":
		first, err := strconv.ParseUint(f[1], 10, 64)
		if err != nil {
			o.childErrs = append(o.childErrs, line)
			return
		}
		for i, c := range f[2:] {
			v, _ := strconv.ParseUint(c, 10, 32)
			seq := first + uint64(i)
			if old, ok := o.crc[seq]; ok {
				o.childErrs = append(o.childErrs, fmt.Sprintf("seq %d acknowledged twice (crc %d then %d)", seq, old, v))
			}
			o.crc[seq] = uint32(v)
			o.maxSeq = max(o.maxSeq, seq)
		}
		o.appends++
	case "K":
		v, _ := strconv.ParseUint(f[1], 10, 64)
		o.maxAck = max(o.maxAck, v)
	case "E":
		o.childErrs = append(o.childErrs, line)
	}
}

// TestCrashOracle SIGKILLs an appending and acking child at random moments
// and checks after every restart that each acknowledged record is present,
// intact and in order, that acks never run ahead of what was acknowledged,
// and that new appends get seqs never used before.
func TestCrashOracle(t *testing.T) {
	t.Parallel() // waits on fsync; overlaps with the other slow tests
	dir := t.TempDir()
	if keep := os.Getenv("BGPEDGE_BUFFER_CRASH_KEEP"); keep != "" {
		dir = keep // leave the spool behind for inspection
	}
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 1))
	o := &crashOracle{crc: map[uint64]uint32{}}
	const cycles = 20
	for cycle := 0; cycle < cycles; cycle++ {
		cmd := exec.Command(os.Args[0], "-test.run=^$", "-test.v=false")
		cmd.Env = append(os.Environ(), crashDirEnv+"="+dir)
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		o.mu.Lock()
		o.appends = 0
		o.mu.Unlock()
		scanned := make(chan struct{})
		go func() {
			defer close(scanned)
			sc := bufio.NewScanner(stdout)
			sc.Buffer(make([]byte, 64<<10), 1<<20)
			for sc.Scan() {
				o.consume(t, sc.Text())
			}
		}()
		// Kill after a random amount of acknowledged work: a random moment
		// in the child's life, chosen by progress rather than wall time.
		target := 20 + rng.IntN(400)
		testenvEventually(t, fmt.Sprintf("cycle %d: child acknowledges %d appends", cycle, target), func() bool {
			o.mu.Lock()
			defer o.mu.Unlock()
			return o.appends >= target || len(o.childErrs) > 0
		})
		_ = cmd.Process.Signal(syscall.SIGKILL)
		<-scanned
		_ = cmd.Wait()
		o.mu.Lock()
		if len(o.childErrs) > 0 {
			t.Fatalf("cycle %d: child reported: %q", cycle, o.childErrs)
		}
		o.mu.Unlock()
		o.verify(t, dir, cycle)
	}
	t.Logf("%d cycles, %d acknowledged records, highest ack %d", cycles, len(o.crc), o.maxAck)
}

func (o *crashOracle) verify(t *testing.T, dir string, cycle int) {
	t.Helper()
	s := openTest(t, Options{Dir: dir, SegmentBytes: crashSegmentBytes})
	defer s.Close()
	if q, _ := filepath.Glob(filepath.Join(dir, "*"+quarantineSuffix)); len(q) > 0 {
		t.Fatalf("cycle %d: a crash made segments unreadable: %v\n%s", cycle, q, s.logs)
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	first := s.FirstUnacked()
	if first-1 > o.maxAck {
		t.Fatalf("cycle %d: watermark %d is beyond any ack the child made (%d)", cycle, first-1, o.maxAck)
	}
	recs := readAll(t, s.Spool, first)
	next := first
	for _, r := range recs {
		if r.Seq != next {
			t.Fatalf("cycle %d: read seq %d, want %d (gap or disorder)", cycle, r.Seq, next)
		}
		next++
		if !payloadOK(r.Payload) {
			t.Fatalf("cycle %d: seq %d payload corrupt", cycle, r.Seq)
		}
		if c, ok := o.crc[r.Seq]; ok && c != crc32.ChecksumIEEE(r.Payload) {
			t.Fatalf("cycle %d: seq %d holds a different record than the one acknowledged", cycle, r.Seq)
		}
	}
	if o.maxSeq >= next {
		t.Fatalf("cycle %d: acknowledged seq %d missing (spool ends at %d)", cycle, o.maxSeq, next-1)
	}
	rng := rand.New(rand.NewPCG(uint64(cycle), 5))
	probe := testRecords(rng, 1, 64)
	seq, err := s.Append(context.Background(), probe...)
	if err != nil {
		t.Fatalf("cycle %d: append after restart: %v", cycle, err)
	}
	if seq != next {
		t.Fatalf("cycle %d: append after restart got seq %d, want %d", cycle, seq, next)
	}
	o.crc[seq] = crc32.ChecksumIEEE(probe[0].Payload)
	o.maxSeq = seq
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
}
