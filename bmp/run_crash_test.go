package bmp_test

import (
	"bytes"
	"net"
	"os/exec"
	"syscall"
	"testing"
	"time"

	"github.com/bgpedge/bgpedge/bmp"
	"github.com/bgpedge/bgpedge/internal/testenv"
	"github.com/bgpedge/bgpedge/record"
)

// TestRunCrashMarksPeersDown kills `bgpedge run` (SIGKILL) while a router
// has peers up; the next start spools a synthetic peer-down for each of
// them after everything the first run spooled, and none for the peer whose
// Peer Down was spooled.
func TestRunCrashMarksPeersDown(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the bgpedge binary")
	}
	tmp := t.TempDir()
	bin := buildAgent(t, tmp)
	a := startRunAgent(t, bin, tmp)
	c, err := net.Dial("tcp", a.bmpAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	mp4 := capab(1, 0, 1, 0, 1)
	peer1 := peerHdr{addr: "192.0.2.1", as: 65001, id: "192.0.2.1"}
	peer2 := peerHdr{addr: "192.0.2.2", as: 65002, id: "192.0.2.2"}
	up := func(p peerHdr) []byte {
		return peerUpMsg(p, openMsg(65000, "192.0.2.254", mp4), openMsg(uint16(p.as), p.id, mp4))
	}
	sent := [][]byte{
		bmpMessage(bmp.MsgInitiation, []byte{0, 2, 0, 4, 't', 'e', 's', 't'}),
		up(peer1),
		up(peer2),
		bmpMessage(bmp.MsgPeerDown, peer2.bytes(), []byte{2}),
	}
	if _, err := c.Write(bytes.Join(sent, nil)); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*time.Second, "the router's messages spooled", func() bool { return a.appended(t) == uint64(len(sent)) })
	if err := a.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	if err := <-a.exited; err == nil {
		t.Fatal("bgpedge run survived SIGKILL")
	} else if ee, ok := err.(*exec.ExitError); !ok || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Fatalf("bgpedge run: %v", err)
	}

	a = startRunAgent(t, bin, tmp)
	a.stop(t)
	recs := readSpool(t, tmp+"/spool")
	if len(recs) != len(sent)+1 {
		t.Fatalf("%d records in the spool, want the %d spooled plus one synthetic peer down", len(recs), len(sent))
	}
	for i, m := range sent {
		if recs[i].Kind != record.KindBMP || !bytes.Equal(recs[i].Payload, m) {
			t.Fatalf("record %d is not message %d as sent", i+1, i)
		}
	}
	last := recs[len(sent)]
	if last.Kind != record.KindBMPSyntheticPeerDown || !bytes.Equal(last.Payload, peer1.bytes()) || last.Source != c.LocalAddr().String() {
		t.Fatalf("last record kind %d payload %x source %s, want a synthetic peer down for peer 1 from %s", last.Kind, last.Payload, last.Source, c.LocalAddr())
	}
	if !bytes.Contains([]byte(a.logs.String()), []byte("their peers are marked down")) {
		t.Error("the restart did not log the peers it marked down")
	}
}
