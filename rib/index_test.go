package rib

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	bolt "go.etcd.io/bbolt"

	"github.com/bgpedge/bgpedge/forwarder"
)

// TestIndexModel drives the index with random sets and deletes against a
// map, in a table small enough that runs wrap around its end and it grows
// several times, and with hashes forced into few home slots so that
// deletes move entries back. The changes are made in runs, as commits make
// them (apply: growing before it takes the lock, reading ahead, copying a
// slice of a growth in progress), or one by one; some runs are large
// enough to make apply build a table in one go. A growth in progress is
// checked against its invariant. (TestIndexGrowthEnds takes the ways of
// ending a growth at once.)
func TestIndexModel(t *testing.T) {
	ix, err := newIndex(t.TempDir(), 0)
	if err != nil {
		t.Fatal(err)
	}
	defer ix.close()
	// Smaller than newIndex makes one: more growths.
	if err := ix.alloc(1024); err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	model := map[ixHash]uint64{}
	var keys []ixHash
	var pending []ixChange
	runLength := func() int {
		if rng.IntN(40) == 0 {
			return 20000 + rng.IntN(40000)
		}
		return 1 + rng.IntN(3000)
	}
	runLen, midGrowth := runLength(), 0
	check := func(step int) {
		if ix.used != uint64(len(model)) {
			t.Fatalf("step %d: index holds %d, model %d", step, ix.used, len(model))
		}
		for _, k := range keys {
			pos, v, ok := ix.get(k)
			want, in := model[k]
			if ok != in || (in && (pos != want || v.hash != want || v.epoch != 7)) {
				t.Fatalf("step %d: get %x = %d %+v %v, want %d %v", step, k, pos, v, ok, want, in)
			}
		}
		if ix.next != nil {
			midGrowth++
			checkGrowth(t, ix)
		}
	}
	flush := func(step int) {
		if rng.IntN(2) == 0 {
			if err := ix.apply(pending); err != nil {
				t.Fatal(err)
			}
		} else {
			for _, c := range pending {
				if c.del {
					ix.del(c.h)
				} else if err := ix.set(c.h, c.pos, c.val); err != nil {
					t.Fatal(err)
				}
			}
		}
		pending, runLen = pending[:0], runLength()
		if rng.IntN(20) == 0 || (ix.next != nil && rng.IntN(3) == 0) {
			check(step)
		}
	}
	for step := range 600000 {
		var h ixHash
		if len(keys) > 0 && rng.IntN(2) > 0 {
			h = keys[rng.IntN(len(keys))]
		} else {
			h = ixHash{rng.Uint64() | 1, rng.Uint64()}
			if rng.IntN(50) == 0 {
				// Homes near the table's end: runs that wrap around it.
				h[1] = ix.mask - uint64(rng.IntN(4)) + (h[1] &^ ix.mask)
			}
			keys = append(keys, h)
		}
		if rng.IntN(3) > 0 {
			pos := uint64(step)
			pending = append(pending, ixChange{h: h, pos: pos, val: routeValue{hash: pos, afi: 1, safi: 1, epoch: 7}})
			model[h] = pos
		} else {
			pending = append(pending, ixChange{h: h, del: true})
			delete(model, h)
		}
		if len(pending) >= runLen {
			flush(step)
		}
	}
	flush(600000)
	check(600000)
	g := ix.grows
	t.Logf("%d slots; growths %+v; %d checks during a growth", ix.mask+1, g, midGrowth)
	if g.started == 0 || g.ended == 0 || g.rehashed == 0 || midGrowth == 0 {
		t.Fatalf("a way of growing was never taken: %+v, %d checks during a growth", g, midGrowth)
	}
	if g.dropped != 0 {
		t.Fatalf("%d growths ended disagreeing with the table", g.dropped)
	}
}

// TestIndexGrowthEnds starts a growth (a table just over half full) and
// ends it each way: by apply's slices, by reserve when a commit would fill
// the table past 70 %, by a set that would, and by a clean close, after
// which the index is reused.
func TestIndexGrowthEnds(t *testing.T) {
	for _, end := range []string{"slices", "reserve", "set", "close"} {
		t.Run(end, func(t *testing.T) {
			dir := t.TempDir()
			ix, err := newIndex(dir, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer func() { ix.close() }()
			rng := rand.New(rand.NewPCG(3, 4))
			model := map[ixHash]uint64{}
			changes := newRoutes(rng, model)
			slots := ix.mask + 1
			for ix.next == nil {
				if err := ix.apply(changes(1000)); err != nil {
					t.Fatal(err)
				}
			}
			checkGrowth(t, ix)
			switch end {
			case "slices":
				for ix.next != nil {
					if err := ix.apply(changes(1000)); err != nil {
						t.Fatal(err)
					}
				}
			case "reserve":
				if err := ix.apply(changes(int(slots * 2 / 10))); err != nil {
					t.Fatal(err)
				}
			case "set":
				for _, c := range changes(int(slots * 2 / 10)) {
					ix.mu.Lock()
					err := ix.set(c.h, c.pos, c.val)
					ix.mu.Unlock()
					if err != nil {
						t.Fatal(err)
					}
				}
			case "close":
				if err := ix.closeClean(7); err != nil {
					t.Fatal(err)
				}
				if ix, err = reuseIndex(dir, 7, uint64(len(model))); err != nil {
					t.Fatalf("index not reused after a clean close during a growth: %v", err)
				}
			}
			if ix.next != nil || ix.mask+1 <= slots {
				t.Fatalf("growth not ended: %d slots, next %v", ix.mask+1, ix.next != nil)
			}
			if g := ix.grows; end != "close" && (g.dropped != 0 || g.rehashed != 0 || (end == "slices") != (g.ended == 1) || (end != "slices") != (g.finished == 1)) {
				t.Fatalf("growths %+v", g)
			}
			if ix.used != uint64(len(model)) {
				t.Fatalf("index holds %d, model %d", ix.used, len(model))
			}
			for h, want := range model {
				if pos, v, ok := ix.get(h); !ok || pos != want || v.hash != want || v.epoch != 3 {
					t.Fatalf("get %x = %d %+v %v, want %d", h, pos, v, ok, want)
				}
			}
		})
	}
}

// TestIndexGrowthFailure: a growth that cannot make its table (here, its
// directory is gone; in the field, a full disk) leaves the table serving,
// is reported once (growthFailure) and tried again at each apply; once the
// table could pass 70 %, apply fails; with room again, the growth is made.
func TestIndexGrowthFailure(t *testing.T) {
	dir := t.TempDir()
	ix, err := newIndex(dir, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { ix.close() }()
	rng := rand.New(rand.NewPCG(7, 8))
	model := map[ixHash]uint64{}
	changes := newRoutes(rng, model)
	ix.dir = filepath.Join(dir, "gone")
	slots := ix.mask + 1
	reported := 0
	var applyErr error
	for applyErr == nil {
		applyErr = ix.apply(changes(1000))
		if err := ix.growthFailure(); err != nil {
			reported++
		}
	}
	if reported != 1 || ix.growthErr == nil || ix.next != nil || ix.mask+1 != slots {
		t.Fatalf("growth failure reported %d times (err %v), growth %v, %d slots", reported, ix.growthErr, ix.next != nil, ix.mask+1)
	}
	if !errors.Is(applyErr, os.ErrNotExist) {
		t.Fatalf("apply past 70 %%: %v, want the table's error", applyErr)
	}
	for h := range model { // the failed apply's changes were not made
		if _, _, ok := ix.get(h); !ok {
			delete(model, h)
		}
	}
	ix.dir = dir
	for ix.mask+1 == slots {
		if err := ix.apply(changes(1000)); err != nil {
			t.Fatal(err)
		}
	}
	if ix.growthErr != nil || ix.growthFailure() != nil || ix.used != uint64(len(model)) {
		t.Fatalf("after the growth: err %v, %d entries, model %d", ix.growthErr, ix.used, len(model))
	}
	for h, want := range model {
		if pos, _, ok := ix.get(h); !ok || pos != want {
			t.Fatalf("get %x = %d %v, want %d", h, pos, ok, want)
		}
	}
}

// newRoutes returns a maker of n changes that each set a new random route,
// recorded in model with its position (its value's hash is the position,
// its epoch 3).
func newRoutes(rng *rand.Rand, model map[ixHash]uint64) func(n int) []ixChange {
	return func(n int) []ixChange {
		cs := make([]ixChange, n)
		for i := range cs {
			h := ixHash{rng.Uint64() | 1, rng.Uint64()}
			pos := uint64(len(model))
			model[h] = pos
			cs[i] = ixChange{h: h, pos: pos, val: routeValue{hash: pos, epoch: 3}}
		}
		return cs
	}
}

// checkGrowth checks a growth in progress against its invariant: every
// entry of the table being built is the current table's, and every entry
// of the current table below the growth's cursor is in it.
func checkGrowth(t *testing.T, ix *index) {
	t.Helper()
	g := ix.next
	n := uint64(0)
	for i := uint64(0); i <= g.mask; i++ {
		s := g.mem[i*slotSize : (i+1)*slotSize]
		if binary.LittleEndian.Uint64(s) == 0 {
			continue
		}
		n++
		j, ok := findIn(ix.mem, ix.mask, ixHash{binary.LittleEndian.Uint64(s), binary.LittleEndian.Uint64(s[8:])})
		if !ok || !bytes.Equal(ix.slot(j), s) {
			t.Fatalf("growth slot %d: %x, the table has %v %x", i, s, ok, ix.slot(j))
		}
	}
	if n != g.used {
		t.Fatalf("growth holds %d entries, counts %d", n, g.used)
	}
	for i := range g.cursor {
		s := ix.slot(i)
		if binary.LittleEndian.Uint64(s) == 0 {
			continue
		}
		j, ok := findIn(g.mem, g.mask, ixHash{binary.LittleEndian.Uint64(s), binary.LittleEndian.Uint64(s[8:])})
		if !ok || !bytes.Equal(g.mem[j*slotSize:(j+1)*slotSize], s) {
			t.Fatalf("slot %d below the growth's cursor %d: %x not in the growth", i, g.cursor, s)
		}
	}
}

// TestOpenRebuildsIndex: after a crash the index is rebuilt from the file
// at open, after a clean stop the one it left is kept; either way a
// reopened state decides as the one before (a re-sent table is all
// duplicates), and new routes of a peer go after the ones it holds.
func TestOpenRebuildsIndex(t *testing.T) {
	for _, crash := range []bool{false, true} {
		t.Run(fmt.Sprintf("crash=%v", crash), func(t *testing.T) { testReopenIndex(t, crash) })
	}
}

func testReopenIndex(t *testing.T, crash bool) {
	dir := t.TempDir()
	s := openTest(t, dir, DuplicatesDrop)
	seq := uint64(0)
	routes := func(n, attr int) (emitted int) {
		for i := range n {
			seq++
			r := testRoute{router: "192.0.2.1", peer: "198.51.100.1", table: TableAdjInPre, prefix: fmt.Sprintf("10.1.%d.0/24", i), attr: uint32(attr)}
			emitted += len(sequence(t, s, seq, []*forwarder.Outgoing{r.msg(t, seq, 1)}))
		}
		return emitted
	}
	if n := routes(200, 1); n != 400 {
		t.Fatalf("200 new routes emitted %d messages, want 400 (event and bmp.rib each)", n)
	}
	if err := s.CommitThrough(seq); err != nil {
		t.Fatal(err)
	}
	if crash {
		crashClose(s)
	} else if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openTest(t, dir, DuplicatesDrop)
	defer s.Close()
	if s.rebuilt != crash {
		t.Fatalf("index rebuilt %v at the open after a crash %v", s.rebuilt, crash)
	}
	if got := len(fileState(t, s)); got != 200 {
		t.Fatalf("reopened state holds %d routes, want 200", got)
	}
	if n := routes(200, 1); n != 0 {
		t.Fatalf("the same table after reopening emitted %d messages, want none (all duplicates)", n)
	}
	if n := routes(1, 2); n != 2 {
		t.Fatalf("a changed route after reopening emitted %d messages, want 2", n)
	}
	p := testRoute{router: "192.0.2.1", peer: "198.51.100.1"}.peerKey()
	if s.committedNext[p] != 200 {
		t.Fatalf("next position after reopening %d, want 200", s.committedNext[p])
	}
}

// TestIndexKeptOnlyWhenMarked: the index a clean stop left is kept only by
// the open right after it, and only when its mark names the file's last
// transaction and route count; anything else rebuilds it.
func TestIndexKeptOnlyWhenMarked(t *testing.T) {
	dir := t.TempDir()
	s := openTest(t, dir, DuplicatesDrop)
	for seq := uint64(1); seq <= 50; seq++ {
		sequence(t, s, seq, threeRoutes(t, seq))
	}
	if err := s.CommitThrough(50); err != nil {
		t.Fatal(err)
	}
	next := uint64(50)
	for _, c := range []struct {
		name    string
		spoil   func(t *testing.T)
		rebuild bool
	}{
		{"clean", func(*testing.T) {}, false},
		{"mark gone", func(t *testing.T) { must(t, os.Remove(filepath.Join(dir, IndexMarkName))) }, true},
		{"mark damaged", func(t *testing.T) {
			b, err := os.ReadFile(filepath.Join(dir, IndexMarkName))
			must(t, err)
			b[20] ^= 1
			must(t, os.WriteFile(filepath.Join(dir, IndexMarkName), b, 0o640))
		}, true},
		{"file changed since", func(t *testing.T) {
			db, err := bolt.Open(filepath.Join(dir, FileName), 0o640, nil)
			must(t, err)
			must(t, db.Update(func(tx *bolt.Tx) error { return tx.Bucket(metaBucket).Put([]byte("x"), []byte("y")) }))
			must(t, db.Close())
		}, true},
		{"index file short", func(t *testing.T) { must(t, os.Truncate(filepath.Join(dir, IndexFileName), 4096)) }, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			c.spoil(t)
			s = openTest(t, dir, DuplicatesDrop)
			if s.rebuilt != c.rebuild {
				t.Fatalf("index rebuilt %v, want %v", s.rebuilt, c.rebuild)
			}
			if _, err := os.Stat(filepath.Join(dir, IndexMarkName)); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("the mark outlived the open that read it: %v", err)
			}
			if got := len(fileState(t, s)); got != 150 {
				t.Fatalf("state holds %d routes, want 150", got)
			}
			next++
			if got := sequence(t, s, next, threeRoutes(t, 1)); len(got) != 0 {
				t.Fatalf("a held route announced again: %q, want a duplicate, dropped", summary(got))
			}
		})
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestOpenRefusesOldLayout: a state file whose routes are keyed by route
// key (an earlier layout) is refused with ErrOldLayout, not misread.
func TestOpenRefusesOldLayout(t *testing.T) {
	dir := t.TempDir()
	db, err := bolt.Open(filepath.Join(dir, FileName), 0o640, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		r, err := tx.CreateBucket(routesBucket)
		if err != nil {
			return err
		}
		pb, err := r.CreateBucket([]byte("192.0.2.1|global||198.51.100.1"))
		if err != nil {
			return err
		}
		return pb.Put([]byte("adj-rib-in-pre|ipv4-unicast||10.0.0.0/24|0"), make([]byte, routeValueLen))
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	cfg := DefaultConfig()
	cfg.Enabled = true
	if _, err := Open(Options{Config: cfg, Dir: dir, AgentID: testAgent}); !errors.Is(err, ErrOldLayout) {
		t.Fatalf("Open = %v, want ErrOldLayout", err)
	}
	if _, err := ShowDir(dir, Query{}); !errors.Is(err, ErrOldLayout) {
		t.Fatalf("ShowDir = %v, want ErrOldLayout", err)
	}
	if _, err := os.Stat(filepath.Join(dir, IndexFileName)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("index file left behind: %v", err)
	}
}
