package bmp

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"testing"
)

func hdr(version byte, length uint32, typ byte) []byte {
	b := []byte{version, 0, 0, 0, 0, typ}
	binary.BigEndian.PutUint32(b[1:5], length)
	return b
}

func msg(typ byte, body int) []byte {
	return append(hdr(3, uint32(HeaderLen+body), typ), make([]byte, body)...)
}

func TestFramer(t *testing.T) {
	tests := []struct {
		name   string
		stream []byte
		want   int    // whole messages before the end
		reason string // FrameError reason at the end, "" for clean EOF
	}{
		{"empty", nil, 0, ""},
		{"one", msg(4, 10), 1, ""},
		{"three", bytes.Join([][]byte{msg(4, 10), msg(0, 100), msg(5, 0)}, nil), 3, ""},
		{"version 4 tolerated", hdr(4, 6, 4), 1, ""},
		{"bad version", append(msg(4, 2), hdr(2, 6, 0)...), 1, ReasonBadVersion},
		{"length below header", hdr(3, 5, 0), 0, ReasonShortLength},
		{"length zero", hdr(3, 0, 0), 0, ReasonShortLength},
		{"length above max", hdr(3, 1<<20+1, 0), 0, ReasonLongLength},
		{"4 GiB length", hdr(3, 0xFFFFFFFF, 0), 0, ReasonLongLength},
		{"truncated body", msg(0, 50)[:30], 0, ReasonTruncated},
		{"truncated header", append(msg(4, 1), 3, 0, 0), 1, ReasonTruncated},
		{"garbage", []byte("GET / HTTP/1.1\r\n\r\n"), 0, ReasonBadVersion},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// One byte per Read exercises every refill path.
			f := NewFramer(&oneByteReader{b: tt.stream}, DefaultMaxMessageBytes, 0)
			got := 0
			for {
				m, err := f.Next()
				if err == nil {
					if int(binary.BigEndian.Uint32(m[1:5])) != len(m) {
						t.Fatalf("message %d: length field %d, slice %d", got, binary.BigEndian.Uint32(m[1:5]), len(m))
					}
					got++
					continue
				}
				var fe *FrameError
				switch {
				case errors.Is(err, io.EOF):
					if tt.reason != "" {
						t.Fatalf("clean EOF, want %s", tt.reason)
					}
				case errors.As(err, &fe):
					if fe.Reason != tt.reason {
						t.Fatalf("reason %q, want %q (%v)", fe.Reason, tt.reason, err)
					}
				default:
					t.Fatalf("unexpected error %v", err)
				}
				break
			}
			if got != tt.want {
				t.Fatalf("got %d messages, want %d", got, tt.want)
			}
		})
	}
}

func TestFramerLargeMessageGrowsBuffer(t *testing.T) {
	big := msg(0, 200<<10)
	f := NewFramer(bytes.NewReader(append(big, msg(4, 3)...)), DefaultMaxMessageBytes, 0)
	m, err := f.Next()
	if err != nil || len(m) != len(big) {
		t.Fatalf("got %d bytes, %v", len(m), err)
	}
	if m, err = f.Next(); err != nil || len(m) != HeaderLen+3 {
		t.Fatalf("second message: %d bytes, %v", len(m), err)
	}
}

func TestFramerBufferedKeepsSlicesValid(t *testing.T) {
	var stream []byte
	for i := 0; i < 1000; i++ {
		m := msg(0, i%300)
		m[len(m)-1] = byte(i) // body ends in its index, when it has a body
		stream = append(stream, m...)
	}
	f := NewFramer(bytes.NewReader(stream), DefaultMaxMessageBytes, 0)
	var batch [][]byte
	check := func() {
		for _, m := range batch {
			if n := int(binary.BigEndian.Uint32(m[1:5])); n != len(m) {
				t.Fatalf("slice overwritten: length field %d, slice %d", n, len(m))
			}
		}
		batch = batch[:0]
	}
	for {
		m, err := f.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		batch = append(batch, m)
		if !f.Buffered() {
			check()
		}
	}
	check()
}

func TestParsePeerHeader(t *testing.T) {
	m := msg(0, PerPeerHeaderLen)
	b := m[HeaderLen:]
	b[0], b[1] = PeerTypeRDInstance, FlagV|FlagL
	b[2], b[9] = 0, 7
	copy(b[10:26], []byte{0x20, 0x01, 0x0d, 0xb8, 15: 1})
	binary.BigEndian.PutUint32(b[26:30], 65001)
	copy(b[30:34], []byte{192, 0, 2, 1})
	binary.BigEndian.PutUint32(b[34:38], 1700000000)
	p, err := ParsePeerHeader(m)
	if err != nil {
		t.Fatal(err)
	}
	if !p.IPv6() || !p.PostPolicy() || p.AdjRIBOut() || p.AS != 65001 ||
		p.Address.String() != "2001:db8::1" || p.BGPID.String() != "192.0.2.1" || p.Timestamp.Unix() != 1700000000 {
		t.Fatalf("decoded %+v", p)
	}
	if _, err := ParsePeerHeader(m[:40]); !errors.Is(err, ErrShortHeader) {
		t.Fatalf("short message: %v", err)
	}
	// In a Loc-RIB header 0x80 is F, and the address is IPv4-sized.
	b[0], b[1] = PeerTypeLocRIB, FlagF
	if p, _ = ParsePeerHeader(m); p.IPv6() || !p.Address.Is4() {
		t.Fatalf("loc-rib header decoded as IPv6: %+v", p)
	}
}

type oneByteReader struct{ b []byte }

func (r *oneByteReader) Read(p []byte) (int, error) {
	if len(r.b) == 0 {
		return 0, io.EOF
	}
	if len(p) == 0 {
		return 0, nil
	}
	p[0] = r.b[0]
	r.b = r.b[1:]
	return 1, nil
}
