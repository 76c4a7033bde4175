package buffer

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/bgpedge/bgpedge/record"
)

func TestBlockRoundTrip(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	tests := []struct {
		name   string
		chunks [][]record.Record
	}{
		{"one record", [][]record.Record{testRecords(rng, 1, 100)}},
		{"many records", [][]record.Record{testRecords(rng, 500, 200)}},
		{"several chunks", [][]record.Record{testRecords(rng, 3, 10), testRecords(rng, 7, 3000), testRecords(rng, 1, 1)}},
		{"empty fields and zero time", [][]record.Record{{{Kind: record.KindExaBGP}, {Kind: record.KindBMPSyntheticPeerDown, Source: "x"}}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var blk []byte
			var want []record.Record
			for _, c := range tt.chunks {
				var err error
				if blk, err = appendChunk(blk, c); err != nil {
					t.Fatal(err)
				}
				want = append(want, c...)
			}
			n, err := verifyBlock(blk)
			if err != nil || n != len(want) {
				t.Fatalf("verifyBlock = %d, %v; want %d", n, err, len(want))
			}
			got, err := decodeBlock(blk, 42, nil)
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(want) {
				t.Fatalf("decoded %d records, want %d", len(got), len(want))
			}
			for i := range want {
				if err := sameRecord(got[i], want[i]); err != nil {
					t.Fatalf("record %d: %v", i, err)
				}
				if got[i].Seq != 42+uint64(i) {
					t.Fatalf("record %d seq %d", i, got[i].Seq)
				}
				// The in-place read of one record's time (Stats) agrees.
				tm, found, err := timeInBlock(blk, 42, 42+uint64(i))
				if err != nil || !found || !tm.Equal(want[i].Time) {
					t.Fatalf("timeInBlock(%d) = %v, %v, %v; want %v", 42+i, tm, found, err, want[i].Time)
				}
			}
			for _, seq := range []uint64{41, 42 + uint64(len(want))} {
				if _, found, err := timeInBlock(blk, 42, seq); found || err != nil {
					t.Fatalf("timeInBlock(%d) outside the block: found %v, %v", seq, found, err)
				}
			}
			// Any single flipped byte must be detected, never panic.
			for i := 0; i < len(blk); i += max(1, len(blk)/97) {
				bad := bytes.Clone(blk)
				bad[i] ^= 0x5a
				if _, err := decodeBlock(bad, 1, nil); !errors.Is(err, ErrCorrupt) {
					t.Fatalf("flipped byte %d not detected: %v", i, err)
				}
			}
		})
	}
}

func sameRecord(got, want record.Record) error {
	switch {
	case got.Kind != want.Kind:
		return errf("kind %v, want %v", got.Kind, want.Kind)
	case !bytes.Equal(got.Key, want.Key):
		return errf("key %x, want %x", got.Key, want.Key)
	case got.Source != want.Source:
		return errf("source %q, want %q", got.Source, want.Source)
	case !got.Time.Equal(want.Time):
		return errf("time %v, want %v", got.Time, want.Time)
	case !bytes.Equal(got.Payload, want.Payload):
		return errf("payload differs (%d vs %d bytes)", len(got.Payload), len(want.Payload))
	}
	return nil
}

// FuzzDecodeBlock feeds arbitrary bytes (what a damaged disk returns) to the
// decoder: it must return records or ErrCorrupt, never panic, and whatever
// it accepts must survive a re-encode.
func FuzzDecodeBlock(f *testing.F) {
	rng := rand.New(rand.NewPCG(3, 4))
	for _, n := range []int{1, 3, 20} {
		blk, _ := appendChunk(nil, testRecords(rng, n, 40))
		f.Add(blk)
	}
	two, _ := appendChunk(nil, testRecords(rng, 2, 10))
	two, _ = appendChunk(two, []record.Record{{Kind: record.KindExaBGP, Time: time.Unix(0, 1)}})
	f.Add(two)
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		recs, err := decodeBlock(b, 1, nil)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("error not ErrCorrupt: %v", err)
			}
			return
		}
		if n, err := verifyBlock(b); err != nil || n != len(recs) {
			t.Fatalf("verifyBlock = %d, %v; decode gave %d", n, err, len(recs))
		}
		again, err := appendChunk(nil, recs)
		if err != nil {
			t.Fatal(err)
		}
		back, err := decodeBlock(again, 1, nil)
		if err != nil || len(back) != len(recs) {
			t.Fatalf("re-encode: %d records, %v", len(back), err)
		}
		for i := range recs {
			if err := sameRecord(back[i], recs[i]); err != nil {
				t.Fatalf("record %d: %v", i, err)
			}
		}
	})
}
