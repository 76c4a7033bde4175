package bgpattr

import (
	"net/netip"
	"reflect"
	"testing"

	"github.com/osrg/gobgp/v4/pkg/packet/bgp"
)

const (
	seq    = bgp.BGP_ASPATH_ATTR_TYPE_SEQ
	set    = bgp.BGP_ASPATH_ATTR_TYPE_SET
	cseq   = bgp.BGP_ASPATH_ATTR_TYPE_CONFED_SEQ
	bigASN = 4200000000
)

func seg(typ uint8, asns ...uint32) Segment { return Segment{Type: typ, ASNs: asns} }

// TestMergeAS4Path: RFC 6793 4.2.3 on raw segments, confederation segments
// included (they count 0 and a leading one stays).
func TestMergeAS4Path(t *testing.T) {
	tests := []struct {
		name      string
		path, as4 []Segment
		want      []Segment
	}{
		{"replace all", []Segment{seg(seq, ASTrans, 100)}, []Segment{seg(seq, bigASN, 100)}, []Segment{seg(seq, bigASN, 100)}},
		{"replace tail", []Segment{seg(seq, 200, ASTrans, 100)}, []Segment{seg(seq, bigASN, 100)}, []Segment{seg(seq, 200, bigASN, 100)}},
		{"as4 longer: ignored", []Segment{seg(seq, ASTrans)}, []Segment{seg(seq, bigASN, 100)}, []Segment{seg(seq, ASTrans)}},
		{"set counts one", []Segment{seg(seq, 200), seg(set, ASTrans, 300)}, []Segment{seg(set, bigASN, 300)}, []Segment{seg(seq, 200), seg(set, bigASN, 300)}},
		{"leading confed stays", []Segment{seg(cseq, 65010, 65011), seg(seq, ASTrans, 100)}, []Segment{seg(seq, bigASN, 100)},
			[]Segment{seg(cseq, 65010, 65011), seg(seq, bigASN, 100)}},
		{"confed in as4 dropped", []Segment{seg(seq, 200, ASTrans)}, []Segment{seg(cseq, 1), seg(seq, bigASN)}, []Segment{seg(seq, 200, bigASN)}},
		{"no as4", []Segment{seg(seq, 200, ASTrans)}, nil, []Segment{seg(seq, 200, ASTrans)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := MergeAS4Path(tt.path, tt.as4); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got %v, want %v", got, tt.want)
			}
		})
	}
}

// TestReconcile: which of AGGREGATOR / AS4_AGGREGATOR and AS_PATH / AS4_PATH
// a 2-byte session's UPDATE means (RFC 6793 4.2.3).
func TestReconcile(t *testing.T) {
	addr := netip.MustParseAddr("192.0.2.1")
	addr4 := netip.MustParseAddr("192.0.2.4")
	trans := &Aggregator{AS: ASTrans, Address: addr}
	old := &Aggregator{AS: 65001, Address: addr}
	as4Aggr := &Aggregator{AS: bigASN, Address: addr4}
	path := []Segment{seg(seq, 65002, ASTrans)}
	as4Path := []Segment{seg(seq, bigASN)}
	merged := []Segment{seg(seq, 65002, bigASN)}
	tests := []struct {
		name     string
		in       AS4
		wantPath []Segment
		wantAggr *Aggregator
	}{
		{"AS_TRANS aggregator: both AS4 attributes apply", AS4{path, as4Path, trans, as4Aggr}, merged, as4Aggr},
		{"aggregator not AS_TRANS: both AS4 attributes ignored", AS4{path, as4Path, old, as4Aggr}, path, old},
		{"aggregator not AS_TRANS without AS4_AGGREGATOR: AS4_PATH applies", AS4{path, as4Path, old, nil}, merged, old},
		{"no aggregator: AS4_PATH applies, AS4_AGGREGATOR alone means nothing", AS4{path, as4Path, nil, as4Aggr}, merged, nil},
		{"AS_TRANS aggregator without AS4_AGGREGATOR stays", AS4{path, nil, trans, nil}, path, trans},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, a := tt.in.Reconcile()
			if !reflect.DeepEqual(p, tt.wantPath) || a != tt.wantAggr {
				t.Errorf("got %v %v, want %v %v", p, a, tt.wantPath, tt.wantAggr)
			}
		})
	}
}

func TestStrings(t *testing.T) {
	for _, tt := range []struct{ got, want string }{
		{Community(65001<<16 | 100), "65001:100"},
		{LargeCommunity(bgp.NewLargeCommunity(bigASN, 1, 4294967295)), "4200000000:1:4294967295"},
		{Aggregator{AS: bigASN, Address: netip.MustParseAddr("2001:db8::1")}.String(), "4200000000:2001:db8::1"},
		{SegmentName(cseq), "confed-sequence"},
		{SegmentName(9), "unknown-9"},
	} {
		if tt.got != tt.want {
			t.Errorf("got %q, want %q", tt.got, tt.want)
		}
	}
}
