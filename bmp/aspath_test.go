package bmp

import (
	"reflect"
	"testing"

	"github.com/osrg/gobgp/v4/pkg/packet/bgp"
)

// TestMergeAS4Path: RFC 6793 4.2.3 on raw segments, confederation segments
// included (they count 0 and a leading one stays).
func TestMergeAS4Path(t *testing.T) {
	const (
		seq    = bgp.BGP_ASPATH_ATTR_TYPE_SEQ
		set    = bgp.BGP_ASPATH_ATTR_TYPE_SET
		cseq   = bgp.BGP_ASPATH_ATTR_TYPE_CONFED_SEQ
		trans  = 23456
		bigASN = 4200000000
	)
	seg := func(typ uint8, asns ...uint32) asSegment { return asSegment{typ: typ, asns: asns} }
	tests := []struct {
		name      string
		path, as4 []asSegment
		want      []asSegment
	}{
		{"replace all", []asSegment{seg(seq, trans, 100)}, []asSegment{seg(seq, bigASN, 100)}, []asSegment{seg(seq, bigASN, 100)}},
		{"replace tail", []asSegment{seg(seq, 200, trans, 100)}, []asSegment{seg(seq, bigASN, 100)}, []asSegment{seg(seq, 200, bigASN, 100)}},
		{"as4 longer: ignored", []asSegment{seg(seq, trans)}, []asSegment{seg(seq, bigASN, 100)}, []asSegment{seg(seq, trans)}},
		{"set counts one", []asSegment{seg(seq, 200), seg(set, trans, 300)}, []asSegment{seg(set, bigASN, 300)}, []asSegment{seg(seq, 200), seg(set, bigASN, 300)}},
		{"leading confed stays", []asSegment{seg(cseq, 65010, 65011), seg(seq, trans, 100)}, []asSegment{seg(seq, bigASN, 100)},
			[]asSegment{seg(cseq, 65010, 65011), seg(seq, bigASN, 100)}},
		{"confed in as4 dropped", []asSegment{seg(seq, 200, trans)}, []asSegment{seg(cseq, 1), seg(seq, bigASN)}, []asSegment{seg(seq, 200, bigASN)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := mergeAS4Path(tt.path, tt.as4); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got %v, want %v", got, tt.want)
			}
		})
	}
}
