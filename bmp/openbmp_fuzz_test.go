package bmp

import (
	"bytes"
	"net/netip"
	"testing"
	"time"
)

// FuzzOpenBMP: ParseOpenBMP takes any bytes without panicking, and reads
// back exactly what AppendOpenBMP wrote (admin id, router, time to the
// microsecond, and the BMP message untouched).
func FuzzOpenBMP(f *testing.F) {
	msg := bmpMsg(MsgPeerUp, append(peerHeader(1), make([]byte, 20)...))
	f.Add("collector-1", []byte{192, 0, 2, 1}, int64(1700000000123456000), msg, AppendOpenBMP(nil, "collector-1", netip.MustParseAddr("192.0.2.1"), time.Unix(1700000000, 0), msg))
	f.Add("", netip.MustParseAddr("2001:db8::1").AsSlice(), int64(0), []byte{}, []byte{})
	f.Fuzz(func(t *testing.T, adminID string, router []byte, nanos int64, msg, raw []byte) {
		if h, inner, err := ParseOpenBMP(raw); err == nil {
			if len(inner) > len(raw) || !bytes.HasSuffix(raw, inner) {
				t.Fatalf("inner message is not the tail of the input")
			}
			_ = h
		}
		addr, ok := netip.AddrFromSlice(router)
		if !ok || nanos < 0 || nanos > 1<<62 {
			return
		}
		at := time.Unix(0, nanos)
		h, inner, err := ParseOpenBMP(AppendOpenBMP(nil, adminID, addr, at, msg))
		if err != nil {
			t.Fatalf("own envelope does not parse: %v", err)
		}
		wantID := adminID
		if len(wantID) > 255 {
			wantID = wantID[:255]
		}
		if h.AdminID != wantID || h.Router != addr.Unmap() || !bytes.Equal(inner, msg) ||
			h.Time.Unix() != at.Unix()&0xffffffff || h.Time.Nanosecond()/1000 != at.Nanosecond()/1000 {
			t.Fatalf("round trip: got %+v and %d bytes, wrote id %q router %v time %v and %d bytes", h, len(inner), adminID, addr, at, len(msg))
		}
	})
}
