package bmp_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bgpedge/bgpedge/bmp"
	"github.com/bgpedge/bgpedge/bmp/capture"
	"github.com/bgpedge/bgpedge/buffer"
	"github.com/bgpedge/bgpedge/internal/spooltest"
	"github.com/bgpedge/bgpedge/internal/testenv"
	"github.com/bgpedge/bgpedge/record"
)

// msgRef names one message of a capture: its stream (router session) and
// its 1-based position in that stream, counting every message type. It is
// stable across runs, unlike spool sequence numbers of concurrent sessions.
type msgRef struct{ stream, msg int }

func (r msgRef) String() string { return fmt.Sprintf("stream %d message %d", r.stream, r.msg) }

// runExemption is a capture on which tshark 4.0 is not a usable oracle for
// some Route Monitoring messages. Every listed message must disagree and
// every other one must agree, so a fixed tshark or a changed decoder shows.
type runExemption struct {
	// routes are the Route Monitoring messages tshark cannot check.
	routes []msgRef
	// resegment: tshark loses the capture's own TCP stream part-way, so it
	// counts message types on the streams cut by walkMessages, one message
	// per segment (it still must lose the original, or the exemption goes).
	resegment bool
	// decodeErrors are the messages our decoder must reject.
	decodeErrors []msgRef
	why          string
}

func refs(stream int, msgs ...int) []msgRef {
	out := make([]msgRef, len(msgs))
	for i, m := range msgs {
		out[i] = msgRef{stream, m}
	}
	return out
}

func span(stream, from, to int) []msgRef {
	var out []msgRef
	for m := from; m <= to; m++ {
		out = append(out, msgRef{stream, m})
	}
	return out
}

// badCaptureName is the one capture the test writes itself: a shared one
// with a Route Monitoring message whose BGP marker is zeroed, to show a
// message the decoder rejects end to end (no shared capture has one).
const badCaptureName = "test/gobgp-3.10.0-loopback-bad-marker.bmp"

// badCaptureMessage is the message (of stream 0) that badCapture corrupts:
// the first Route Monitoring after Initiation and Peer Up.
const badCaptureMessage = 3

// runExemptions are keyed by capture path below bmpdata/.
func runExemptions() map[string]runExemption {
	return map[string]runExemption{
		"pcap/netgauze/stateless-with-add-path__ipv4_unicast_all.pcap": {
			routes:    refs(0, 10, 11, 13, 15, 17, 19, 22, 23, 24, 27, 28, 29),
			resegment: true,
			why:       "crafted BMPv4 messages: on the capture itself tshark throws on the first Peer Up's TLVs and loses the TCP stream after 7 messages; one message per segment it counts all 30 but dissects the BGP PDU (in a v4 TLV, stateless-parsing Add-Path) of none of the 21 Route Monitoring messages; the other 9 carry nothing either side shows (no prefix, next hop or AS path) and match trivially",
		},
		"raw/huawei-ne40e-vrp8.230__daisy-23.bmp": {
			routes: refs(0, 20, 102),
			why:    "locally originated routes (empty AS_PATH) with Add-Path path ids: tshark 4.0 has no Add-Path reading for them, flags them malformed and shows neither prefix, next hop nor AS path, so nothing is left to compare; the other Add-Path messages it flags agree on AS path and flags",
		},
		"pcap/netgauze/vpnv4-stateless-with-withdraw__vpnv4-stateless-with-withdraw.pcap": {
			routes: span(0, 1, 15),
			why:    "BMPv4 Route Monitoring with the BGP PDU inside a TLV: tshark 4.0 does not dissect the BGP PDU",
		},
		"pcap/netgauze/path-status__ipv4_unicast_path_marking.pcap": {
			routes: refs(0, 3, 4),
			why:    "BMPv4 Route Monitoring with the BGP PDU inside a TLV (path marking): tshark 4.0 does not dissect the BGP PDU (the third message, with nothing tshark could show, matches trivially)",
		},
		badCaptureName: {
			routes:       refs(0, badCaptureMessage),
			decodeErrors: refs(0, badCaptureMessage),
			why:          "the test zeroed this message's BGP marker: the decoder must reject it (decode-error event, raw kept) and tshark cannot dissect it either",
		},
	}
}

// runCapture is one capture file replayed into `bgpedge run`.
type runCapture struct {
	name    string   // path below bmpdata/ (the exemption key)
	path    string   // file given to `bgpedge replay`
	raw     bool     // a raw stream file, not a packet capture
	ports   []uint16 // collector ports of the capture's TCP streams
	streams [][]byte // as `bgpedge replay` sends them: non-empty streams, in order
	msgs    [][][]byte
	// first and last are the spool sequence numbers its replay produced.
	first, last uint64
	// tshark's view, filled in concurrently with the replays.
	theirs    []tsharkMsg
	origTypes map[int]int // tshark's count on the original capture, for resegment
	tsharkErr error
	// what checkSpooled found
	perStream [][]record.Record
	spooled   map[int]int // BMP messages per type
	synthetic int         // synthetic peer-down records
	ours      []ourRM
}

// TestRunCapturesAgainstTshark replays every shared capture into a real
// `bgpedge run` with the real `bgpedge replay`, one after the other, then
// reads the spool the agent left and checks, per capture:
//   - every stream's messages are in the spool byte for byte, in order,
//     as one router session (cut by walkMessages, independent of bmp.Framer);
//   - message counts per BMP type in the spool equal tshark's (for raw
//     streams, tshark's on the stream wrapped in a pcap, which must also equal
//     the length walk);
//   - every spooled record goes out raw as received (a raw-only
//     bmp.Encoder), and decoded as the forwarder decodes it (bmp.Decoder,
//     one per router session, records in spool order) gives events whose
//     prefixes with lengths, next hops, AS path and peer flags agree with
//     tshark's BMP/BGP dissection of the same message, except the messages
//     runExemptions lists by capture, stream and index, which must disagree;
//   - a message the decoder rejects is published raw with a decode-error
//     event, and only the listed ones are rejected.
//
// The 300,006-message dump goes through tshark's field output (its JSON is
// gigabytes); under the race detector only its first raceMessageLimit
// messages are replayed, and scripts/test.sh runs it whole without -race.
func TestRunCapturesAgainstTshark(t *testing.T) {
	start := time.Now()
	tshark := testenv.Binary(t, "tshark", "tshark")
	tmp := t.TempDir()
	caps := runCaptures(t, tmp)

	// tshark needs nothing from the agent: it runs meanwhile, a few
	// processes at once (most of its time on small captures is start-up).
	tsharkDone := make(chan struct{})
	go func() {
		defer close(tsharkDone)
		runTshark(tshark, caps, tmp)
	}()
	defer func() { <-tsharkDone }()

	bin := buildAgent(t, tmp)
	agent := startRunAgent(t, bin, tmp)
	var sent uint64
	for _, c := range caps {
		before := agent.appended(t)
		out, err := exec.Command(bin, "replay", "--file", c.path, "--to", agent.bmpAddr, "--drain", "60s").CombinedOutput()
		if err != nil {
			t.Fatalf("bgpedge replay --file %s: %v\n%s", c.name, err, out)
		}
		// Replay returns once the agent closed every session, which it does
		// after the session's last batch is durable: the counter is final.
		c.first, c.last = before+1, agent.appended(t)
		n, err := sentMessages(out)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		sent += n
	}
	replayed := time.Since(start)
	agent.stop(t)
	recs := readSpool(t, filepath.Join(tmp, "spool"))
	if uint64(len(recs)) != caps[len(caps)-1].last {
		t.Fatalf("spool holds %d records, the agent counted %d appended", len(recs), caps[len(caps)-1].last)
	}
	t.Logf("replayed %d captures (%d messages) into bgpedge run and stopped it: %v", len(caps), sent, replayed.Round(time.Millisecond))

	// What the spool holds and how it decodes, while tshark may still run.
	for _, c := range caps {
		t.Run("spool/"+c.name, func(t *testing.T) {
			checkSpooled(t, c, recs[c.first-1:c.last])
		})
	}
	decoded := time.Since(start)
	<-tsharkDone
	t.Logf("decoded by %v, tshark done by %v", decoded.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))

	var totalRM, totalAgree int
	for _, c := range caps {
		t.Run("tshark/"+c.name, func(t *testing.T) {
			if c.tsharkErr != nil {
				t.Fatal(c.tsharkErr)
			}
			if c.perStream == nil {
				t.Fatal("its spool checks failed")
			}
			rm, agree := checkAgainstTshark(t, c)
			totalRM += rm
			totalAgree += agree
		})
	}
	t.Logf("route monitoring messages agreeing with tshark: %d of %d; whole test %v", totalAgree, totalRM, time.Since(start).Round(time.Millisecond))
}

// runCaptures lists every shared capture (and the test's corrupted one),
// each with its streams cut by the independent walk.
func runCaptures(t *testing.T, tmp string) []*runCapture {
	t.Helper()
	dir := testenv.Shared(t, "bmpdata")
	files := testenv.BMPCaptures(t, 30)
	var caps []*runCapture
	for _, f := range files {
		name, _ := filepath.Rel(dir, f)
		c := &runCapture{name: name, path: f}
		if strings.HasPrefix(filepath.Base(f), "gobgp-3.10-all-dump-100k") {
			if raceEnabled {
				c.path = filepath.Join(tmp, "dump-head.bmp")
				writeStreamHead(t, f, c.path, raceMessageLimit)
				t.Logf("race detector on: %s replayed and checked for its first %d of 300,006 messages (whole without -race)", name, raceMessageLimit)
			}
		}
		caps = append(caps, c)
	}
	bad := &runCapture{name: badCaptureName, path: filepath.Join(tmp, "bad-marker.bmp")}
	writeBadCapture(t, filepath.Join(dir, "raw", "gobgp-3.10.0-loopback.bmp"), bad.path)
	caps = append(caps, bad)

	for _, c := range caps {
		streams, err := capture.Open(c.path)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		for _, s := range streams {
			if len(s.Data) == 0 {
				continue // bgpedge replay skips them too
			}
			msgs, err := walkMessages(s.Data)
			if err != nil {
				t.Fatalf("%s: %v", c.name, err)
			}
			c.streams = append(c.streams, s.Data)
			c.msgs = append(c.msgs, msgs)
			c.raw = !s.Dst.IsValid()
			if !slices.Contains(c.ports, s.Dst.Port()) {
				c.ports = append(c.ports, s.Dst.Port())
			}
		}
		if strings.Contains(c.name, "all-dump-100k") && !raceEnabled {
			if n := len(c.msgs[0]); n != 300006 {
				t.Fatalf("%s: the length walk finds %d messages, the capture is known to hold 300,006", c.name, n)
			}
		}
	}
	return caps
}

// walkMessages cuts a raw BMP stream at its length fields. It is the test's
// own framing, independent of bmp.Framer and of the replay tool's cutter,
// so counts and byte comparisons do not check the framer against itself.
// A message cut short by the end of the stream is left out, as replay does.
func walkMessages(data []byte) ([][]byte, error) {
	var out [][]byte
	for off := 0; len(data)-off >= 6; {
		if v := data[off]; v != 3 && v != 4 {
			return nil, fmt.Errorf("not BMP at byte %d: version %d", off, v)
		}
		n := int(binary.BigEndian.Uint32(data[off+1 : off+5]))
		if n < 6 {
			return nil, fmt.Errorf("bad BMP length %d at byte %d", n, off)
		}
		if off+n > len(data) {
			break
		}
		out = append(out, data[off:off+n])
		off += n
	}
	return out, nil
}

// writeStreamHead writes the first n messages of a raw stream file.
func writeStreamHead(t *testing.T, from, to string, n int) {
	t.Helper()
	streams, err := capture.Open(from)
	if err != nil {
		t.Fatal(err)
	}
	msgs, err := walkMessages(streams[0].Data)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, bytes.Join(msgs[:min(n, len(msgs))], nil), 0o600); err != nil {
		t.Fatal(err)
	}
}

// writeBadCapture copies a raw stream with the BGP marker of message
// badCaptureMessage (a Route Monitoring) zeroed.
func writeBadCapture(t *testing.T, from, to string) {
	t.Helper()
	data, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	msgs, err := walkMessages(data)
	if err != nil {
		t.Fatal(err)
	}
	m := bytes.Clone(msgs[badCaptureMessage-1])
	const pdu = bmp.HeaderLen + bmp.PerPeerHeaderLen
	if bmp.MsgType(m[5]) != bmp.MsgRouteMonitoring || len(m) < pdu+19 {
		t.Fatalf("message %d of %s is not a Route Monitoring message", badCaptureMessage, from)
	}
	clear(m[pdu : pdu+16])
	msgs[badCaptureMessage-1] = m
	if err := os.WriteFile(to, bytes.Join(msgs, nil), 0o600); err != nil {
		t.Fatal(err)
	}
}

// sentMessages reads the message count from replay's summary line.
func sentMessages(out []byte) (uint64, error) {
	for _, line := range strings.Split(string(out), "\n") {
		if rest, ok := strings.CutPrefix(line, "sent "); ok {
			n, _, _ := strings.Cut(rest, " ")
			return strconv.ParseUint(n, 10, 64)
		}
	}
	return 0, fmt.Errorf("no summary line in replay's output %q", out)
}

// ---- the agent ----

// buildAgent compiles cmd/bgpedge: the test runs the real binary.
// (testenv.Binary looks up installed programs, it does not build.)
func buildAgent(t *testing.T, tmp string) string {
	t.Helper()
	bin := filepath.Join(tmp, "bgpedge")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/bgpedge")
	cmd.Dir = testenv.RepoRoot(t)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/bgpedge: %v\n%s", err, out)
	}
	return bin
}

type runAgent struct {
	cmd      *exec.Cmd
	exited   chan error
	logs     *testenv.LogBuffer
	httpAddr string
	bmpAddr  string
}

// startRunAgent runs `bgpedge run` with the spool in tmp/spool, the forwarder
// off (the test reads the spool itself), BMP and HTTP on ephemeral loopback
// ports, and waits for /readyz.
func startRunAgent(t *testing.T, bin, tmp string) *runAgent {
	t.Helper()
	conf := filepath.Join(tmp, "bgpedge.yaml")
	yaml := fmt.Sprintf(`agent:
  id: oracle
  state_dir: %[1]s/state
  shutdown_timeout: 20s
http:
  listen: 127.0.0.1:0
log:
  level: info
  format: json
buffer:
  dir: %[1]s/spool
  max_bytes: 2GiB
bmp:
  listen: 127.0.0.1:0
  encoding:
    state_dir: %[1]s/bmp
forwarder:
  enabled: false
exabgp:
  state_dir: %[1]s/exabgp
`, tmp)
	if err := os.WriteFile(conf, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	spooltest.SeedAtOne(t, filepath.Join(tmp, "spool"))
	a := &runAgent{logs: &testenv.LogBuffer{}, exited: make(chan error, 1)}
	a.cmd = exec.Command(bin, "run", "--config", conf)
	a.cmd.Dir = tmp
	stderr, err := a.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := a.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	consumed := make(chan struct{})
	go func() { _, _ = io.Copy(a.logs, stderr); close(consumed) }()
	go func() { <-consumed; a.exited <- a.cmd.Wait() }()
	t.Cleanup(func() {
		_ = a.cmd.Process.Kill() // a no-op after stop
		if t.Failed() {
			t.Logf("agent log (tail):\n%s", tail(a.logs.String(), 8000))
		}
	})
	testenv.Eventually(t, 30*time.Second, "http server address in the agent's log", func() bool {
		sc := bufio.NewScanner(strings.NewReader(a.logs.String()))
		for sc.Scan() {
			var l struct{ Msg, Addr string }
			if json.Unmarshal(sc.Bytes(), &l) == nil && l.Msg == "http server started" && l.Addr != "" {
				a.httpAddr = l.Addr
				return true
			}
		}
		return false
	})
	testenv.Eventually(t, 30*time.Second, "/readyz 200", func() bool {
		resp, err := http.Get("http://" + a.httpAddr + "/readyz")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		var st struct{ BMP string }
		_ = json.NewDecoder(resp.Body).Decode(&st)
		a.bmpAddr = strings.TrimPrefix(st.BMP, "listening on ")
		return resp.StatusCode == http.StatusOK && a.bmpAddr != st.BMP
	})
	return a
}

// appended reads bgpedge_buffer_appended_records_total from /metrics: with
// nothing else feeding the spool, the last sequence number assigned.
func (a *runAgent) appended(t *testing.T) uint64 {
	t.Helper()
	resp, err := http.Get("http://" + a.httpAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "bgpedge_buffer_appended_records_total "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("metrics: %q: %v", sc.Text(), err)
			}
			return uint64(f)
		}
	}
	t.Fatal("no bgpedge_buffer_appended_records_total in /metrics")
	return 0
}

// stop sends SIGTERM and requires a clean exit.
func (a *runAgent) stop(t *testing.T) {
	t.Helper()
	testenv.Terminate(t, a.cmd.Process, a.exited, "bgpedge run")
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "…" + s[len(s)-n:]
}

// readSpool reads every record of a spool the agent left, in seq order.
func readSpool(t *testing.T, dir string) []record.Record {
	t.Helper()
	sp, err := buffer.Open(buffer.Options{Dir: dir, ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer sp.Close()
	var out []record.Record
	for next := uint64(1); ; {
		recs, err := sp.Read(context.Background(), next, 10000)
		if err != nil {
			t.Fatalf("spool read from %d: %v", next, err)
		}
		if len(recs) == 0 {
			return out
		}
		for _, r := range recs {
			if r.Seq != next {
				t.Fatalf("spool returned seq %d, want %d", r.Seq, next)
			}
			next++
		}
		out = append(out, recs...)
	}
}

// ---- tshark ----

// tsharkProcs is how many tshark processes run at once; fieldsChunk is how
// many messages of a field-output capture one of them dissects.
const (
	tsharkProcs = 3
	fieldsChunk = 25000
)

// fieldsOracle reports whether a capture goes through tshark's field output.
func fieldsOracle(c *runCapture) bool { return strings.Contains(c.name, "all-dump-100k") }

// runTshark fills in every capture's tshark view. Field-output captures are
// cut into chunks of whole messages, each its own pcap (one connection, one
// message per segment), so several tshark processes share them.
func runTshark(tshark string, caps []*runCapture, tmp string) {
	var jobs []func()
	var finish []func()
	for ci, c := range caps {
		if !fieldsOracle(c) {
			continue
		}
		if len(c.msgs) != 1 {
			c.tsharkErr = fmt.Errorf("the field oracle takes one stream, %s has %d", c.name, len(c.msgs))
			continue
		}
		msgs := c.msgs[0]
		n := (len(msgs) + fieldsChunk - 1) / fieldsChunk
		parts, errs := make([][]tsharkMsg, n), make([]error, n)
		for k := range n {
			jobs = append(jobs, func() {
				f := filepath.Join(tmp, fmt.Sprintf("fields-%d-%d.pcap", ci, k))
				if err := os.WriteFile(f, streamsPcap([][][]byte{msgs[k*fieldsChunk : min((k+1)*fieldsChunk, len(msgs))]}), 0o600); err != nil {
					errs[k] = err
					return
				}
				defer os.Remove(f)
				parts[k], errs[k] = tsharkFields(tshark, f, []uint16{1790})
			})
		}
		finish = append(finish, func() { c.theirs, c.tsharkErr = slices.Concat(parts...), errors.Join(errs...) })
	}
	for _, c := range caps {
		if !fieldsOracle(c) {
			jobs = append(jobs, func() { c.theirs, c.origTypes, c.tsharkErr = tsharkView(tshark, c, tmp) })
		}
	}
	next := make(chan func(), len(jobs))
	for _, j := range jobs {
		next <- j
	}
	close(next)
	var wg sync.WaitGroup
	for range tsharkProcs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range next {
				j()
			}
		}()
	}
	wg.Wait()
	for _, f := range finish {
		f()
	}
}

// tsharkView has tshark dissect a capture: the capture itself for pcaps,
// the streams wrapped in a pcap (one message per segment) for raw streams
// and for captures whose exemption says tshark loses the original stream.
func tsharkView(tshark string, c *runCapture, tmp string) ([]tsharkMsg, map[int]int, error) {
	input, ports := c.path, c.ports
	var orig map[int]int
	if c.raw || runExemptions()[c.name].resegment {
		if !c.raw {
			theirs, err := tsharkJSON(tshark, c.path, c.ports)
			if err != nil {
				return nil, nil, err
			}
			orig = tsharkTypeCounts(theirs)
		}
		input = filepath.Join(tmp, strings.NewReplacer("/", "_").Replace(c.name)+".pcap")
		if err := os.WriteFile(input, streamsPcap(c.msgs), 0o600); err != nil {
			return nil, nil, err
		}
		ports = []uint16{1790}
	}
	theirs, err := tsharkJSON(tshark, input, ports)
	return theirs, orig, err
}

func tsharkTypeCounts(msgs []tsharkMsg) map[int]int {
	out := map[int]int{}
	for _, m := range msgs {
		n, err := strconv.Atoi(m.typ)
		if err != nil {
			n = -1
		}
		out[n]++
	}
	return out
}

// tsharkFieldNames are the fields the field-output oracle reads, in order.
var tsharkFieldNames = []string{
	"bmp.type", "bmp.peer.flags", "bgp.update.path_attribute.type_code",
	"bgp.withdrawn_prefix", "bgp.mp_reach_nlri_ipv4_prefix", "bgp.mp_reach_nlri_ipv6_prefix",
	"bgp.mp_unreach_nlri_ipv4_prefix", "bgp.mp_unreach_nlri_ipv6_prefix", "bgp.nlri_prefix",
	"bgp.prefix_length",
	"bgp.update.path_attribute.as_path_segment.as2", "bgp.update.path_attribute.as_path_segment.as4",
	"bgp.update.path_attribute.next_hop",
	"bgp.update.path_attribute.mp_reach_nlri.next_hop.ipv4", "bgp.update.path_attribute.mp_reach_nlri.next_hop.ipv6",
	"bgp.label_stack", "bgp.rd", "bgp.evpn.nlri.rt", "bgp.vplsad.rd",
	"_ws.malformed", "_ws.expert", "bgp.prefix_length.invalid",
}

// tsharkFields is tsharkJSON's signature through tshark's field output,
// fast enough for 300,000 messages. Fields lose the tree, so it needs one
// BMP message per packet (streamsPcap) and handles plain unicast only:
// anything else (labels, RDs, AS4_PATH, EVPN, VPLS) fails the test rather
// than being compared wrongly.
func tsharkFields(tshark, path string, ports []uint16) ([]tsharkMsg, error) {
	args := []string{"-r", path}
	for _, p := range ports {
		args = append(args, "-d", "tcp.port=="+strconv.Itoa(int(p))+",bmp")
	}
	// Each segment holds one whole message: no reassembly or sequence
	// analysis needed (whose expert notes would also read as malformed).
	args = append(args, "-n", "-o", "tcp.analyze_sequence_numbers:FALSE", "-o", "tcp.desegment_tcp_streams:FALSE",
		"-o", "tcp.calculate_timestamps:FALSE", "-T", "fields", "-E", "separator=/t", "-E", "occurrence=a", "-E", "aggregator=,")
	for _, f := range tsharkFieldNames {
		args = append(args, "-e", f)
	}
	cmd := exec.Command(tshark, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("tshark %v: %w: %s", args, err, stderr.String())
	}
	idx := map[string]int{}
	for i, f := range tsharkFieldNames {
		idx[f] = i
	}
	var msgs []tsharkMsg
	for n, line := range strings.Split(strings.TrimSuffix(string(out), "\n"), "\n") {
		cols := strings.Split(line, "\t")
		if len(cols) != len(tsharkFieldNames) {
			return nil, fmt.Errorf("tshark fields, packet %d: %d columns, want %d", n+1, len(cols), len(tsharkFieldNames))
		}
		field := func(name string) []string {
			if v := cols[idx[name]]; v != "" {
				return strings.Split(v, ",")
			}
			return nil
		}
		typ := field("bmp.type")
		if len(typ) == 0 {
			continue // the SYN
		}
		if len(typ) > 1 {
			return nil, fmt.Errorf("tshark fields, packet %d: %d BMP messages in one packet", n+1, len(typ))
		}
		m := tsharkMsg{typ: typ[0]}
		if fl := field("bmp.peer.flags"); len(fl) == 1 {
			v, _ := strconv.ParseUint(strings.TrimPrefix(fl[0], "0x"), 16, 8)
			m.flags = uint8(v)
		}
		if m.typ != "0" {
			msgs = append(msgs, m)
			continue
		}
		for _, f := range []string{"bgp.label_stack", "bgp.rd", "bgp.evpn.nlri.rt", "bgp.vplsad.rd"} {
			if field(f) != nil {
				return nil, fmt.Errorf("tshark fields, packet %d: %s present: the field oracle handles plain unicast only", n+1, f)
			}
		}
		codes := field("bgp.update.path_attribute.type_code")
		if slices.Contains(codes, "17") || field("bgp.update.path_attribute.as_path_segment.as2") != nil && field("bgp.update.path_attribute.as_path_segment.as4") != nil {
			return nil, fmt.Errorf("tshark fields, packet %d: AS4_PATH or mixed AS sizes: the field oracle cannot order them", n+1)
		}
		m.malformed = field("_ws.malformed") != nil || field("_ws.expert") != nil || field("bgp.prefix_length.invalid") != nil
		// Prefix lengths come in wire order: withdrawn routes, then the
		// MP_REACH/MP_UNREACH attributes in attribute order, then NLRI.
		groups := [][]string{field("bgp.withdrawn_prefix")}
		mpReach := 0
		for _, code := range codes {
			switch code {
			case "14":
				p := append(field("bgp.mp_reach_nlri_ipv4_prefix"), field("bgp.mp_reach_nlri_ipv6_prefix")...)
				mpReach = len(p)
				groups = append(groups, p)
			case "15":
				groups = append(groups, append(field("bgp.mp_unreach_nlri_ipv4_prefix"), field("bgp.mp_unreach_nlri_ipv6_prefix")...))
			}
		}
		nlri := field("bgp.nlri_prefix")
		groups = append(groups, nlri)
		lengths := field("bgp.prefix_length")
		var prefixes []string
		for _, g := range groups {
			for _, p := range g {
				if len(prefixes) >= len(lengths) {
					break
				}
				prefixes = append(prefixes, p+"/"+lengths[len(prefixes)])
			}
		}
		if len(prefixes) != len(lengths) || len(prefixes) != len(slices.Concat(groups...)) {
			return nil, fmt.Errorf("tshark fields, packet %d: %d prefixes, %d prefix lengths", n+1, len(slices.Concat(groups...)), len(lengths))
		}
		var nextHops []string
		if mpReach > 0 {
			nextHops = append(field("bgp.update.path_attribute.mp_reach_nlri.next_hop.ipv4"), field("bgp.update.path_attribute.mp_reach_nlri.next_hop.ipv6")...)
		}
		if len(nlri) > 0 {
			nextHops = append(nextHops, field("bgp.update.path_attribute.next_hop")...)
		}
		asPath := append(field("bgp.update.path_attribute.as_path_segment.as2"), field("bgp.update.path_attribute.as_path_segment.as4")...)
		m.sig = routeSig(prefixes, nextHops, asPath)
		msgs = append(msgs, m)
	}
	return msgs, nil
}

// streamsPcap wraps router streams, already cut into messages, in a pcap
// with one TCP connection per stream (192.0.2.250:40000+i → 192.0.2.1:1790)
// and one message per segment: where tshark 4.0 throws on a message it
// cannot dissect, it still finds the next one at the next segment.
func streamsPcap(streams [][][]byte) []byte {
	le := binary.LittleEndian
	out := le.AppendUint32(nil, 0xa1b2c3d4)
	out = le.AppendUint16(out, 2)
	out = le.AppendUint16(out, 4)
	out = append(out, make([]byte, 8)...)
	out = le.AppendUint32(out, 65535)
	out = le.AppendUint32(out, 1)
	for i, msgs := range streams {
		seq := uint32(1000)
		packet := func(flags byte, payload []byte) {
			frame := make([]byte, 14+20+20, 14+20+20+len(payload))
			frame[12], frame[13] = 0x08, 0x00
			ip := frame[14:34]
			ip[0], ip[8], ip[9] = 0x45, 64, 6
			binary.BigEndian.PutUint16(ip[2:], uint16(40+len(payload)))
			copy(ip[12:], []byte{192, 0, 2, 250})
			copy(ip[16:], []byte{192, 0, 2, 1})
			tcp := frame[34:54]
			binary.BigEndian.PutUint16(tcp[0:], uint16(40000+i))
			binary.BigEndian.PutUint16(tcp[2:], 1790)
			binary.BigEndian.PutUint32(tcp[4:], seq)
			tcp[12], tcp[13] = 5<<4, flags
			binary.BigEndian.PutUint16(tcp[14:], 65535)
			frame = append(frame, payload...)
			out = le.AppendUint32(out, 1700000000)
			out = le.AppendUint32(out, 0)
			out = le.AppendUint32(out, uint32(len(frame)))
			out = le.AppendUint32(out, uint32(len(frame)))
			out = append(out, frame...)
		}
		packet(0x02, nil) // SYN
		seq++
		for _, m := range msgs {
			packet(0x18, m)
			seq += uint32(len(m))
		}
	}
	return out
}

// ---- the checks ----

// ourRM is our decoding of one Route Monitoring message, summarised.
type ourRM struct {
	ref   msgRef
	flags uint8
	sig   string
	fams  []string
}

// checkSpooled checks a capture's spooled records against its streams and
// decodes them, keeping what checkAgainstTshark needs in c.
func checkSpooled(t *testing.T, c *runCapture, recs []record.Record) {
	exc := runExemptions()[c.name]

	// Sessions: one per stream, byte for byte, in order.
	bySession := map[string][]record.Record{}
	var sources []string
	for _, r := range recs {
		if _, ok := bySession[r.Source]; !ok {
			sources = append(sources, r.Source)
		}
		bySession[r.Source] = append(bySession[r.Source], r)
	}
	if len(sources) != len(c.streams) {
		t.Fatalf("%d router sessions in the spool, the capture has %d streams", len(sources), len(c.streams))
	}
	perStream := make([][]record.Record, len(c.streams))
	for _, src := range sources {
		i := 0
		if len(c.streams) > 1 {
			// bgpedge replay binds stream i's session to 127.0.0.(10+i).
			ap, err := netip.ParseAddrPort(src)
			if err != nil || !ap.Addr().Is4() || ap.Addr().As4()[3] < 10 || int(ap.Addr().As4()[3])-10 >= len(c.streams) {
				t.Fatalf("session source %q is not one of replay's 127.0.0.10+i", src)
			}
			i = int(ap.Addr().As4()[3]) - 10
		}
		if perStream[i] != nil {
			t.Fatalf("stream %d arrived in more than one session", i)
		}
		perStream[i] = bySession[src]
	}
	spooled := map[int]int{}
	var synthetic int
	for i, srecs := range perStream {
		var n int
		for _, r := range srecs {
			switch r.Kind {
			case record.KindBMP:
				if n >= len(c.msgs[i]) {
					t.Fatalf("stream %d: the spool holds more than its %d messages", i, len(c.msgs[i]))
				}
				if !bytes.Equal(r.Payload, c.msgs[i][n]) {
					t.Fatalf("%s: spooled bytes differ from the capture's", msgRef{i, n + 1})
				}
				spooled[int(r.Payload[5])]++
				n++
			case record.KindBMPSyntheticPeerDown:
				synthetic++
			default:
				t.Fatalf("stream %d: record of kind %s", i, r.Kind)
			}
		}
		if n != len(c.msgs[i]) {
			t.Fatalf("stream %d: %d of %d messages spooled", i, n, len(c.msgs[i]))
		}
	}

	// Decode as the forwarder does: one encoder per router session.
	var ours []ourRM
	var decodeErrs []msgRef
	for i, srecs := range perStream {
		ours, decodeErrs = decodeSession(t, i, srecs, ours, decodeErrs)
	}
	if !slices.Equal(decodeErrs, exc.decodeErrors) {
		t.Errorf("messages with a decode-error event %v, want %v", decodeErrs, exc.decodeErrors)
	}
	for _, ref := range exc.decodeErrors {
		t.Logf("%s rejected by the decoder: published raw with a decode-error event (%s)", ref, exc.why)
	}
	c.perStream, c.spooled, c.synthetic, c.ours = perStream, spooled, synthetic, ours
}

// checkAgainstTshark compares a capture's spool and decoding with tshark
// and returns how many Route Monitoring messages it holds and how many
// agree with tshark.
func checkAgainstTshark(t *testing.T, c *runCapture) (int, int) {
	exc := runExemptions()[c.name]
	spooled, ours := c.spooled, c.ours

	// Per-type counts against tshark.
	theirTypes := tsharkTypeCounts(c.theirs)
	if !maps.Equal(spooled, theirTypes) {
		t.Errorf("message types in the spool %v, tshark counts %v", spooled, theirTypes)
	}
	if c.raw {
		walked := map[int]int{}
		for _, msgs := range c.msgs {
			for _, m := range msgs {
				walked[int(m[5])]++
			}
		}
		if !maps.Equal(walked, theirTypes) {
			t.Errorf("tshark counts %v, the length walk %v", theirTypes, walked)
		}
	}
	if exc.resegment {
		if maps.Equal(c.origTypes, theirTypes) {
			t.Errorf("tshark now follows the original capture (%v): drop the resegment exemption", c.origTypes)
		} else {
			t.Logf("tshark on the capture itself counts %v, on its streams one message per segment %v (%s)", c.origTypes, theirTypes, exc.why)
		}
	}

	mismatched, partialAgree, malformed, diffs := matchRoutes(ours, c.theirs)
	if !slices.Equal(mismatched, exc.routes) {
		t.Errorf("route monitoring messages disagreeing with tshark %v, exempt %v:\n%s", mismatched, exc.routes, strings.Join(diffs, "\n"))
	} else if len(mismatched) > 0 {
		t.Logf("%d of %d route monitoring messages not checkable against tshark (%v): %s", len(mismatched), len(ours), mismatched, exc.why)
	}
	if partialAgree > 0 {
		t.Logf("%d route monitoring messages agree on the fields tshark could show (flags, AS path, and prefixes or next hops); tshark flagged them malformed and left the others out", partialAgree)
	}
	if malformed > 0 {
		t.Logf("tshark flagged %d route monitoring messages as malformed", malformed)
	}
	t.Logf("%d streams, %d messages per type %v, %d synthetic peer downs, %d route monitoring messages agree with tshark",
		len(c.streams), total(spooled), spooled, c.synthetic, len(ours)-len(mismatched))
	return len(ours), len(ours) - len(mismatched)
}

// decodeSession decodes one router session's records in spool order with
// its own bmp.Decoder — the decoder inside the forwarder's bmp.Encoder, with
// per-peer state carried from Peer Up to Route Monitoring — and appends its
// Route Monitoring summaries and rejected messages. A raw-only Encoder shows
// every message goes out as received; the rejected ones also go through
// the full Encoder, whose decode-error event must be on the errors stream.
// (Decoding the 300,006-message dump through JSON and back would double
// the test's CPU time for no more coverage of the decoding itself.)
func decodeSession(t *testing.T, stream int, srecs []record.Record, ours []ourRM, decodeErrs []msgRef) ([]ourRM, []msgRef) {
	t.Helper()
	dec, err := bmp.NewDecoder(bmp.DecoderOptions{StateDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer dec.Close()
	rawEnc, err := bmp.NewEncoder(bmp.EncoderOptions{Encoding: bmp.Encoding{Raw: true}, AgentID: "oracle"})
	if err != nil {
		t.Fatal(err)
	}
	defer rawEnc.Close()
	n := 0
	for _, r := range srecs {
		if r.Kind == record.KindBMP {
			n++
		}
		ref := msgRef{stream, n}
		dm := decodedMsg{typ: bmp.MsgType(r.Payload[5])}
		if r.Kind == record.KindBMP && len(r.Payload) > 7 && dm.typ.HasPerPeerHeader() {
			dm.flags = r.Payload[7]
		}
		rejected := false
		if err := dec.Decode(r, func(ev record.Event) {
			rejected = rejected || ev.Type == bmp.EventDecodeError
			if ev.Type == bmp.EventDecodeError || ev.Type == bmp.EventRoute && dm.typ == bmp.MsgRouteMonitoring {
				dm.events = append(dm.events, ev)
			}
		}); err != nil {
			t.Fatalf("%s: decode: %v", ref, err)
		}
		if r.Kind != record.KindBMP {
			continue
		}
		var raw [][]byte
		if err := rawEnc.Encode(r, func(o bmp.Output) {
			if o.Stream == bmp.StreamRaw {
				raw = append(raw, o.Value)
			}
		}); err != nil {
			t.Fatalf("%s: encode: %v", ref, err)
		}
		if len(raw) != 1 || !bytes.Equal(raw[0], r.Payload) {
			t.Errorf("%s: the raw output is not the spooled message", ref)
		}
		if rejected {
			decodeErrs = append(decodeErrs, ref)
			checkPublishedError(t, ref, r)
		}
		if dm.typ != bmp.MsgRouteMonitoring {
			continue
		}
		sig, _ := oursRouteSig(dm) // a rejection is in decodeErrs
		rm := ourRM{ref: ref, flags: dm.flags, sig: sig}
		for _, ev := range dm.events {
			if ev.Route != nil && !slices.Contains(rm.fams, ev.Route.Family) {
				rm.fams = append(rm.fams, ev.Route.Family)
			}
		}
		ours = append(ours, rm)
	}
	return ours, decodeErrs
}

// checkPublishedError encodes a rejected message as the forwarder does: the
// raw message, and a decode-error event on the errors stream.
func checkPublishedError(t *testing.T, ref msgRef, r record.Record) {
	t.Helper()
	enc, err := bmp.NewEncoder(bmp.EncoderOptions{Encoding: bmp.DefaultEncoding(), AgentID: "oracle"})
	if err != nil {
		t.Fatal(err)
	}
	defer enc.Close()
	var raw, errEvents int
	if err := enc.Encode(r, func(o bmp.Output) {
		switch o.Stream {
		case bmp.StreamRaw:
			if bytes.Equal(o.Value, r.Payload) {
				raw++
			}
		case bmp.StreamErrors:
			var ev struct{ Type string }
			if json.Unmarshal(o.Value, &ev) == nil && ev.Type == bmp.EventDecodeError {
				errEvents++
			}
		}
	}); err != nil {
		t.Fatalf("%s: encode: %v", ref, err)
	}
	if raw != 1 || errEvents == 0 {
		t.Errorf("%s: published %d raw copies and %d decode-error events on %s, want 1 and at least 1", ref, raw, errEvents, bmp.StreamErrors)
	}
}

// matchRoutes pairs our Route Monitoring messages with tshark's as
// multisets of signatures (streams of multi-router captures interleave in
// tshark's output). Where tshark flags a message malformed and leaves fields
// out (it has no Add-Path heuristic for labeled and VPN families, and does
// not read RFC 8950 IPv6 next hops of VPNv4 routes), the fields it did show
// must still agree. It returns the messages of ours without a partner, in
// order, and the tshark messages left over among the diffs.
func matchRoutes(ours []ourRM, theirs []tsharkMsg) (mismatched []msgRef, partialAgree, malformed int, diffs []string) {
	count := map[string]int{}
	partial := map[sigMask]map[string]int{}
	for _, m := range theirs {
		if m.typ != "0" {
			continue
		}
		k := fmt.Sprintf("flags=%#02x %s", m.flags, m.sig)
		if m.malformed {
			malformed++
			mask := sigMask{noPrefixes: strings.Contains(k, " prefixes= "), noNextHops: strings.Contains(k, " next_hops= ")}
			// Something must be left to compare besides the flags.
			showed := !mask.noPrefixes || !strings.HasSuffix(k, " as_path=")
			if (mask.noPrefixes || mask.noNextHops) && showed {
				if partial[mask] == nil {
					partial[mask] = map[string]int{}
				}
				partial[mask][mask.reduce(k)]++
				continue
			}
		}
		count[k]++
	}
	for _, m := range ours {
		k := fmt.Sprintf("flags=%#02x %s", m.flags, m.sig)
		if count[k] > 0 {
			count[k]--
			continue
		}
		matched := false
		for _, mask := range []sigMask{{noNextHops: true}, {noPrefixes: true}, {noPrefixes: true, noNextHops: true}} {
			if partial[mask][mask.reduce(k)] > 0 {
				partial[mask][mask.reduce(k)]--
				partialAgree++
				matched = true
				break
			}
		}
		if matched {
			continue
		}
		mismatched = append(mismatched, m.ref)
		diffs = append(diffs, fmt.Sprintf("%s ours:   %s (families %v)", m.ref, k, m.fams))
	}
	pools := []map[string]int{count}
	for _, p := range partial {
		pools = append(pools, p)
	}
	var left []string
	for _, c := range pools {
		for k, n := range c {
			for range n {
				left = append(left, "tshark (unmatched): "+k)
			}
		}
	}
	slices.Sort(left)
	return mismatched, partialAgree, malformed, append(diffs, left...)
}

func total(m map[int]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}
