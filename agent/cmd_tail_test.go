package agent

import (
	"bytes"
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bgpedge/bgpedge/bmp"
	"github.com/bgpedge/bgpedge/forwarder"
	"github.com/bgpedge/bgpedge/internal/testenv"
)

func TestTailCommand(t *testing.T) {
	n := testenv.StartNATS(t)
	nc := forwarder.DefaultConfig().NATS
	nc.URL = n.URL()
	sink := forwarder.NewNATSSink(nc, "edge1", nil)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := sink.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	msg := &forwarder.Outgoing{Seq: 7, Index: -1, ID: "edge1:7", Stream: "bmp.raw", Value: []byte{3, 0, 0, 0, 6, 4},
		Headers: []forwarder.Header{{Key: forwarder.HeaderID, Value: "edge1:7"}, {Key: forwarder.HeaderRouter, Value: "192.0.2.1"}}}
	if err := sink.Write(ctx, []*forwarder.Outgoing{msg}, func(_ *forwarder.Outgoing, err error) {
		if err != nil {
			t.Errorf("publish: %v", err)
		}
		wg.Done()
	}); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	if err := sink.Close(ctx); err != nil {
		t.Fatal(err)
	}

	type tailCase struct {
		name string
		args []string
		want string // in stdout, or in the error when wantErr
		fail bool
	}
	tests := []tailCase{
		{"no target", []string{"tail"}, "give one of --kafka and --topic, --nats and --subject, or --file and --stream", true},
		{"both targets", []string{"tail", "--topic", "t", "--subject", "s"}, "give one of --kafka and --topic, --nats and --subject, or --file and --stream", true},
		{"file without stream", []string{"tail", "--file", "d"}, "give one of", true},
		{"follow without file", []string{"tail", "--topic", "t", "--follow"}, "--follow is for --file", true},
		{"nats", []string{"tail", "--nats", n.URL(), "--subject", "bgpedge.edge1.>", "--from-beginning", "--limit", "1"},
			"bgpedge.edge1.bmp.raw#1 edge1:7 bmp initiation router=192.0.2.1 len=6", false},
	}
	// A file sink directory: one raw BMP message and one JSON event.
	dir := t.TempDir()
	fcfg := forwarder.DefaultFileConfig()
	fcfg.Dir = dir
	fs, err := forwarder.NewFileSink(fcfg, bmp.Streams(), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := fs.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	ev := &forwarder.Outgoing{Seq: 7, Index: 1, ID: "edge1:7:1", Stream: "bmp.peer", Value: []byte(`{"v":1,"id":"edge1:7:1","source":"bmp","type":"peer-up","router":"192.0.2.1"}`)}
	if err := fs.Write(ctx, []*forwarder.Outgoing{msg, ev}, func(_ *forwarder.Outgoing, err error) {
		if err != nil {
			t.Errorf("file write: %v", err)
		}
	}); err != nil {
		t.Fatal(err)
	}
	if err := fs.Close(ctx); err != nil {
		t.Fatal(err)
	}
	tests = append(tests,
		tailCase{"file raw", []string{"tail", "--file", dir, "--stream", "bmp.raw"}, "@0 - bmp initiation router=? len=6", false},
		tailCase{"file json", []string{"tail", "--file", dir, "--stream", "bmp.peer"}, "@0 edge1:7:1 bmp peer-up router=192.0.2.1", false})
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			cmd := NewRootCommand(strings.NewReader(""), &out, &errOut)
			cmd.SetArgs(tt.args)
			err := cmd.ExecuteContext(ctx)
			switch {
			case tt.fail && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Fatalf("error %v, want one containing %q", err, tt.want)
			case !tt.fail && err != nil:
				t.Fatalf("tail: %v (%s)", err, errOut.String())
			case !tt.fail && strings.HasPrefix(tt.name, "file"):
				if got := strings.TrimSpace(out.String()); !strings.HasSuffix(got, tt.want) || strings.Count(got, "\n") != 0 {
					t.Fatalf("printed %q, want one line ending in %q", got, tt.want)
				}
			case !tt.fail && strings.TrimSpace(out.String()) != tt.want:
				t.Fatalf("printed %q, want %q", out.String(), tt.want)
			}
		})
	}
}
