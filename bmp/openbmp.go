package bmp

import (
	"crypto/md5"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"time"
)

// The OpenBMP binary message bus header, version 1.7, object type 12
// ("BMP_RAW"): the envelope OpenBMP collectors put around each raw BMP
// message on Kafka, and what gobmp (--bmp-raw), OpenBMP v2 consumers and
// bgpkit's parser read. Layout (big endian):
//
//	magic "OBMP" (0x4F424D50) | major 1 | minor 7 | header length u16 |
//	BMP message length u32 | flags u8 (0x80 router message, 0x40 router IPv6) |
//	object type u8 (12) | collector time: seconds u32, microseconds u32 |
//	collector hash [16] | admin id length u16 | admin id |
//	router hash [16] | router IP [16] (IPv4 in the first 4 bytes) |
//	router group length u16 | router group | row count u32 (1) |
//	then the BMP message.
//
// The hashes are MD5 digests, as OpenBMP computes them: the collector hash
// of the admin id, the router hash of the router's address and the
// collector hash, so they are stable for a router and collector.
const (
	OpenBMPMagic      = 0x4F424D50
	openBMPMajor      = 1
	openBMPMinor      = 7
	openBMPTypeRaw    = 12
	openBMPFlagRouter = 0x80
	openBMPFlagIPv6   = 0x40
	openBMPFixedLen   = 4 + 2 + 2 + 4 + 2 + 8 + 16 + 2 + 16 + 16 + 2 + 4
)

// ErrOpenBMP is returned by ParseOpenBMP for data that is not a raw-BMP envelope.
var ErrOpenBMP = errors.New("bmp: not an openbmp v1.7 raw bmp message")

// OpenBMPHeader is the decoded envelope.
type OpenBMPHeader struct {
	Time          time.Time
	CollectorHash [16]byte
	AdminID       string
	RouterHash    [16]byte
	Router        netip.Addr
	RouterGroup   string
}

// AppendOpenBMP appends the envelope and the BMP message to dst.
func AppendOpenBMP(dst []byte, adminID string, router netip.Addr, received time.Time, msg []byte) []byte {
	if len(adminID) > 255 { // bgpkit reads at most 255 bytes
		adminID = adminID[:255]
	}
	collectorHash := md5.Sum([]byte(adminID))
	router = router.Unmap()
	routerHash := md5.Sum(append([]byte(router.String()), collectorHash[:]...))
	hlen := openBMPFixedLen + len(adminID)
	flags := byte(openBMPFlagRouter)
	if router.Is6() {
		flags |= openBMPFlagIPv6
	}
	dst = binary.BigEndian.AppendUint32(dst, OpenBMPMagic)
	dst = append(dst, openBMPMajor, openBMPMinor)
	dst = binary.BigEndian.AppendUint16(dst, uint16(hlen))
	dst = binary.BigEndian.AppendUint32(dst, uint32(len(msg)))
	dst = append(dst, flags, openBMPTypeRaw)
	dst = binary.BigEndian.AppendUint32(dst, uint32(received.Unix()))
	dst = binary.BigEndian.AppendUint32(dst, uint32(received.Nanosecond()/1000))
	dst = append(dst, collectorHash[:]...)
	dst = binary.BigEndian.AppendUint16(dst, uint16(len(adminID)))
	dst = append(dst, adminID...)
	dst = append(dst, routerHash[:]...)
	var ip [16]byte
	if router.Is4() {
		a := router.As4()
		copy(ip[:], a[:])
	} else if router.Is6() {
		ip = router.As16()
	}
	dst = append(dst, ip[:]...)
	dst = binary.BigEndian.AppendUint16(dst, 0) // router group
	dst = binary.BigEndian.AppendUint32(dst, 1) // row count
	return append(dst, msg...)
}

// ParseOpenBMP reads an envelope and returns it with the BMP message it holds.
func ParseOpenBMP(b []byte) (OpenBMPHeader, []byte, error) {
	var h OpenBMPHeader
	if len(b) < 12 || binary.BigEndian.Uint32(b) != OpenBMPMagic || b[4] != openBMPMajor || b[5] != openBMPMinor {
		return h, nil, ErrOpenBMP
	}
	hlen, mlen := int(binary.BigEndian.Uint16(b[6:])), int(binary.BigEndian.Uint32(b[8:]))
	if hlen < openBMPFixedLen || len(b) != hlen+mlen {
		return h, nil, fmt.Errorf("%w: header %d and message %d bytes in %d", ErrOpenBMP, hlen, mlen, len(b))
	}
	flags, typ := b[12], b[13]
	if typ != openBMPTypeRaw || flags&openBMPFlagRouter == 0 {
		return h, nil, fmt.Errorf("%w: object type %d flags %#x", ErrOpenBMP, typ, flags)
	}
	p := b[14:hlen]
	h.Time = time.Unix(int64(binary.BigEndian.Uint32(p)), int64(binary.BigEndian.Uint32(p[4:]))*1000).UTC()
	copy(h.CollectorHash[:], p[8:24])
	n := int(binary.BigEndian.Uint16(p[24:]))
	p = p[26:]
	if len(p) < n+16+16+2 {
		return h, nil, fmt.Errorf("%w: short header", ErrOpenBMP)
	}
	h.AdminID, p = string(p[:n]), p[n:]
	copy(h.RouterHash[:], p[:16])
	if flags&openBMPFlagIPv6 != 0 {
		h.Router = netip.AddrFrom16([16]byte(p[16:32]))
	} else {
		h.Router = netip.AddrFrom4([4]byte(p[16:20]))
	}
	p = p[32:]
	g := int(binary.BigEndian.Uint16(p))
	if len(p) != 2+g+4 {
		return h, nil, fmt.Errorf("%w: router group length %d", ErrOpenBMP, g)
	}
	h.RouterGroup = string(p[2 : 2+g])
	return h, b[hlen:], nil
}
