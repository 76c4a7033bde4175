package rib

import (
	"errors"
	"slices"
	"testing"

	"github.com/bgpedge/bgpedge/forwarder"
)

func TestShow(t *testing.T) {
	dir := t.TempDir()
	s := openTest(t, dir, DuplicatesDrop)
	seq := uint64(0)
	add := func(r testRoute) {
		seq++
		sequence(t, s, seq, []*forwarder.Outgoing{r.msg(t, seq, 1)})
	}
	base := testRoute{router: "192.0.2.1", peer: "198.51.100.1", table: TableAdjInPre, attr: 1}
	for _, p := range []string{"10.0.0.0/8", "10.1.0.0/16", "10.1.2.0/24", "10.1.2.128/25", "192.168.0.0/16"} {
		r := base
		r.prefix = p
		add(r)
	}
	r := base
	r.prefix, r.pathID = "10.1.2.0/24", 7
	add(r)
	r = base
	r.table, r.prefix = TableAdjInPost, "10.0.0.0/8"
	add(r)
	r = base
	r.peer, r.prefix = "198.51.100.2", "10.1.2.0/24"
	add(r)
	// Two VRFs beside the unicast routes of the same table: each has its
	// own longest match.
	for _, v := range []struct{ rd, prefix string }{{"65000:1", "10.1.0.0/16"}, {"65000:1", "10.1.2.0/23"}, {"65000:2", "10.0.0.0/8"}} {
		r = base
		r.peer, r.rd, r.prefix = "198.51.100.3", v.rd, v.prefix
		add(r)
	}
	if err := s.CommitThrough(seq); err != nil {
		t.Fatal(err)
	}
	rows := func(rep Report) []string {
		var out []string
		for _, r := range rep.Routes {
			out = append(out, r.Match+" "+r.Peer+" "+r.Table+" "+r.RD+r.Prefix+" "+string(rune('0'+r.PathID)))
		}
		slices.Sort(out)
		return out
	}
	for _, tc := range []struct {
		q    Query
		want []string
	}{
		{Query{Prefix: "10.1.2.5"}, []string{
			"longest-match 198.51.100.1 adj-rib-in-post 10.0.0.0/8 0",
			"longest-match 198.51.100.1 adj-rib-in-pre 10.1.2.0/24 0",
			"longest-match 198.51.100.1 adj-rib-in-pre 10.1.2.0/24 7",
			"longest-match 198.51.100.2 adj-rib-in-pre 10.1.2.0/24 0",
			"longest-match 198.51.100.3 adj-rib-in-pre 65000:110.1.2.0/23 0",
			"longest-match 198.51.100.3 adj-rib-in-pre 65000:210.0.0.0/8 0",
		}},
		{Query{Prefix: "10.1.0.0/16", Peer: "198.51.100.1", Table: TableAdjInPre}, []string{
			"longest-match 198.51.100.1 adj-rib-in-pre 10.1.0.0/16 0",
			"more-specific 198.51.100.1 adj-rib-in-pre 10.1.2.0/24 0",
			"more-specific 198.51.100.1 adj-rib-in-pre 10.1.2.0/24 7",
			"more-specific 198.51.100.1 adj-rib-in-pre 10.1.2.128/25 0",
		}},
		{Query{Prefix: "172.16.0.0/12"}, nil},
	} {
		rep, err := s.Show(tc.q)
		if err != nil {
			t.Fatal(err)
		}
		if got := rows(rep); !slices.Equal(got, tc.want) {
			t.Errorf("%+v:\n got %q\nwant %q", tc.q, got, tc.want)
		}
	}
	rep, err := s.Show(Query{Router: "192.0.2.1"})
	if err != nil {
		t.Fatal(err)
	}
	var counts []string
	for _, c := range rep.Counts {
		counts = append(counts, c.Peer+" "+c.Table+" "+string(rune('0'+c.Routes)))
	}
	if want := []string{"198.51.100.1 adj-rib-in-post 1", "198.51.100.1 adj-rib-in-pre 6", "198.51.100.2 adj-rib-in-pre 1", "198.51.100.3 adj-rib-in-pre 3"}; !slices.Equal(counts, want) {
		t.Errorf("counts %q, want %q", counts, want)
	}
	if _, err := s.Show(Query{Table: "adj-rib-sideways"}); !errors.Is(err, ErrBadQuery) {
		t.Errorf("bad table: %v", err)
	}
	if _, err := ShowDir(dir, Query{}); !errors.Is(err, ErrLocked) {
		t.Errorf("ShowDir while the stage holds the file: %v, want ErrLocked", err)
	}
	_ = s.Close()
	rep, err = ShowDir(dir, Query{Prefix: "192.168.1.1"})
	if err != nil || len(rep.Routes) != 1 || rep.Source != "state-dir" || rep.AppliedSeq != seq {
		t.Fatalf("ShowDir: %+v, %v", rep, err)
	}
}
