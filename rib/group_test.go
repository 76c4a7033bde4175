package rib

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"reflect"
	"strconv"
	"testing"
)

// TestGroupCodec: a group's routes come back as written, in slot order,
// and entries no bgpedge writes are refused as corrupt.
func TestGroupCodec(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	key := binary.BigEndian.AppendUint64(nil, 7)
	for range 1000 {
		var e groupEdit
		want := map[uint8]groupRoute{}
		for range rng.IntN(40) {
			slot := uint8(rng.IntN(groupSize))
			if rng.IntN(4) == 0 {
				e.del(slot)
				delete(want, slot)
				continue
			}
			r := groupRoute{slot: slot, val: routeValue{hash: rng.Uint64(), afi: 2, safi: 128, epoch: rng.Uint32()},
				rk: "adj-rib-in-pre|ipv6-vpn|65000:" + strconv.Itoa(rng.IntN(300)) + "|2001:db8::/" + strconv.Itoa(rng.IntN(129)) + "|0"}
			e.set(slot, r.val, r.rk)
			want[slot] = r
		}
		v := appendGroup(nil, e.rs)
		if len(v) != groupLen(e.rs) {
			t.Fatalf("groupLen %d, encoded %d bytes", groupLen(e.rs), len(v))
		}
		if len(want) == 0 {
			if _, err := decodeGroup(key, v, nil); !errors.Is(err, errCorrupt) {
				t.Fatalf("an empty group decoded: %v", err)
			}
			continue
		}
		got, err := decodeGroup(key, v, nil)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != len(want) {
			t.Fatalf("%d routes decoded, %d written", len(got), len(want))
		}
		for i, r := range got {
			if i > 0 && got[i-1].slot >= r.slot {
				t.Fatalf("slots out of order: %d then %d", got[i-1].slot, r.slot)
			}
			if !reflect.DeepEqual(r, want[r.slot]) {
				t.Fatalf("slot %d: got %+v, want %+v", r.slot, r, want[r.slot])
			}
			if groupPos(key, r.slot) != 7*groupSize+uint64(r.slot) {
				t.Fatalf("position of slot %d: %d", r.slot, groupPos(key, r.slot))
			}
		}
	}

	one := appendGroup(nil, []groupRoute{{slot: 3, rk: "loc-rib|ipv4-unicast||10.0.0.0/8|0"}})
	twice := append(bytes.Clone(one), one...)
	big := appendGroup(nil, []groupRoute{{slot: groupSize, rk: "x"}})
	for name, v := range map[string][]byte{"truncated": one[:len(one)-1], "slot repeated": twice,
		"slot out of range": big, "short": one[:5]} {
		if _, err := decodeGroup(key, v, nil); !errors.Is(err, errCorrupt) {
			t.Errorf("%s: %v, want errCorrupt", name, err)
		}
	}
	if _, err := decodeGroup(key[:7], one, nil); !errors.Is(err, errCorrupt) {
		t.Errorf("a 7-byte key: %v, want errCorrupt", err)
	}
}

// FuzzDecodeGroup: any bytes decode to routes that encode back to the same
// bytes, or to errCorrupt; never a panic.
func FuzzDecodeGroup(f *testing.F) {
	f.Add(appendGroup(nil, []groupRoute{{slot: 0, val: routeValue{hash: 1, afi: 1, safi: 1, epoch: 1}, rk: "adj-rib-in-pre|ipv4-unicast||192.0.2.0/24|0"},
		{slot: 15, val: routeValue{hash: 2, afi: 2, safi: 1}, rk: "loc-rib|ipv6-unicast||2001:db8::/32|7"}}))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, v []byte) {
		key := binary.BigEndian.AppendUint64(nil, 1)
		rs, err := decodeGroup(key, v, nil)
		if err != nil {
			if !errors.Is(err, errCorrupt) {
				t.Fatalf("error not errCorrupt: %v", err)
			}
			return
		}
		// Only the canonical encoding of a route value round-trips its
		// bytes; compare the decoded routes instead.
		again, err := decodeGroup(key, appendGroup(nil, rs), nil)
		if err != nil || !reflect.DeepEqual(again, rs) {
			t.Fatalf("re-encoded group decodes to %+v (%v), want %+v", again, err, rs)
		}
	})
}
