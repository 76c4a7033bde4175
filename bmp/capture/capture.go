// Package capture reads recorded BMP traffic back as byte streams: raw BMP
// stream files (optionally gzip-compressed) and pcap/pcapng packet captures,
// whose TCP flows it reassembles by sequence number.
//
// It owns only the container formats; splitting a stream into messages is the
// job of bmp.Framer:
//
//	streams, err := capture.Open("router.pcap")
//	for _, s := range streams {
//		f := bmp.NewFramer(bytes.NewReader(s.Data), bmp.DefaultMaxMessageBytes, 0)
//		for msg, err := f.Next(); err == nil; msg, err = f.Next() { … }
//	}
//
// The package does not depend on bmp so that bmp's own tests can use it.
package capture

import (
	"bufio"
	"bytes"
	"cmp"
	"compress/gzip"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"slices"
	"time"
)

// Stream is one direction of one TCP connection that carries BMP (router to
// collector), or the whole content of a raw stream file.
type Stream struct {
	// Src is the router's address and port, Dst the collector's. Both are
	// zero for raw stream files, which do not record them.
	Src, Dst netip.AddrPort
	// Start is the capture time of the flow's first packet (zero for raw files).
	Start time.Time
	// Data holds the reassembled bytes in order, up to the first gap.
	Data []byte
	// Missing counts bytes lost in gaps (segments the capture did not see).
	// Data ends at the first gap, because BMP framing cannot resume after one.
	Missing int64
}

// Format is the container format of a capture file.
type Format string

// Formats Read recognises.
const (
	FormatRaw    Format = "raw"
	FormatPcap   Format = "pcap"
	FormatPcapNG Format = "pcapng"
)

// ErrNotBMP is returned when a packet capture holds no TCP flow that starts
// with a BMP common header.
var ErrNotBMP = errors.New("capture: no BMP stream found")

// MaxFileBytes bounds what Read accepts after decompression, so a corrupt or
// hostile gzip file cannot exhaust memory.
const MaxFileBytes = 4 << 30

// Open reads the capture file at path. See Read.
func Open(path string) ([]Stream, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("capture: %w", err)
	}
	defer f.Close()
	return Read(f)
}

// Read detects the format from the content (gzip, then pcap, pcapng or raw),
// never from a file name, and returns the BMP streams in the order their
// first packet appears. A raw file is one stream. A packet capture yields
// every TCP flow direction whose reassembled bytes start with a plausible BMP
// common header, whatever the ports, so no collector port needs to be known.
func Read(r io.Reader) ([]Stream, error) {
	br := bufio.NewReaderSize(r, 64<<10)
	magic, _ := br.Peek(4)
	if len(magic) >= 2 && magic[0] == 0x1f && magic[1] == 0x8b {
		zr, err := gzip.NewReader(br)
		if err != nil {
			return nil, fmt.Errorf("capture: gzip: %w", err)
		}
		defer zr.Close()
		return Read(zr)
	}
	data, err := io.ReadAll(io.LimitReader(br, MaxFileBytes+1))
	if err != nil {
		return nil, fmt.Errorf("capture: read: %w", err)
	}
	if len(data) > MaxFileBytes {
		return nil, fmt.Errorf("capture: file larger than %d bytes", int64(MaxFileBytes))
	}
	switch DetectFormat(data) {
	case FormatPcap:
		return fromPackets(readPcap(data))
	case FormatPcapNG:
		return fromPackets(readPcapNG(data))
	default:
		return []Stream{{Data: data}}, nil
	}
}

// DetectFormat tells a packet capture from a raw BMP stream by its first bytes.
func DetectFormat(b []byte) Format {
	if len(b) < 4 {
		return FormatRaw
	}
	switch binary.BigEndian.Uint32(b) {
	case 0xa1b2c3d4, 0xd4c3b2a1, 0xa1b23c4d, 0x4d3cb2a1:
		return FormatPcap
	case 0x0a0d0d0a:
		return FormatPcapNG
	}
	return FormatRaw
}

// LooksLikeBMP reports whether b starts with a plausible BMP common header:
// version 3 or 4, length at least 6, a known message type.
func LooksLikeBMP(b []byte) bool {
	if len(b) < 6 || (b[0] != 3 && b[0] != 4) {
		return false
	}
	n := binary.BigEndian.Uint32(b[1:5])
	return n >= 6 && n <= 16<<20 && b[5] <= 6
}

// fromPackets reassembles the packets' TCP flows and keeps those that carry BMP.
func fromPackets(pkts []packet, err error) ([]Stream, error) {
	if err != nil && len(pkts) == 0 {
		return nil, err
	}
	var out []Stream
	for _, fl := range reassemble(pkts) {
		if LooksLikeBMP(fl.Data) {
			out = append(out, fl)
		}
	}
	if len(out) == 0 {
		if err != nil {
			return nil, err
		}
		return nil, ErrNotBMP
	}
	// A truncated capture file still gives every flow read so far: the error
	// is reported alongside so callers can decide.
	return out, err
}

// packet is one captured frame, reduced to what reassembly needs.
type packet struct {
	ts       time.Time
	linkType uint32
	data     []byte
}

// ErrTruncated means the capture file ends inside a record; the packets
// before it are still returned.
var ErrTruncated = errors.New("capture: file truncated")

// readPcap parses a classic libpcap file.
func readPcap(b []byte) ([]packet, error) {
	if len(b) < 24 {
		return nil, ErrTruncated
	}
	var bo binary.ByteOrder = binary.BigEndian
	nano := false
	switch binary.BigEndian.Uint32(b) {
	case 0xa1b2c3d4:
	case 0xa1b23c4d:
		nano = true
	case 0xd4c3b2a1:
		bo = binary.LittleEndian
	case 0x4d3cb2a1:
		bo, nano = binary.LittleEndian, true
	}
	// The low 16 bits are the link type; the upper bits may carry FCS info.
	link := bo.Uint32(b[20:24]) & 0xffff
	var pkts []packet
	for off := 24; off < len(b); {
		if len(b)-off < 16 {
			return pkts, ErrTruncated
		}
		sec, frac := bo.Uint32(b[off:]), bo.Uint32(b[off+4:])
		caplen := int(bo.Uint32(b[off+8:]))
		off += 16
		if caplen < 0 || caplen > len(b)-off {
			return pkts, ErrTruncated
		}
		ns := int64(frac) * 1000
		if nano {
			ns = int64(frac)
		}
		pkts = append(pkts, packet{ts: time.Unix(int64(sec), ns).UTC(), linkType: link, data: b[off : off+caplen]})
		off += caplen
	}
	return pkts, nil
}

// readPcapNG parses a pcapng file: section headers (either byte order),
// interface descriptions (link type, timestamp resolution), enhanced and
// simple packet blocks. Other blocks are skipped.
func readPcapNG(b []byte) ([]packet, error) {
	type iface struct {
		link uint32
		unit float64 // seconds per timestamp tick
	}
	var (
		bo     binary.ByteOrder = binary.BigEndian
		ifaces []iface
		pkts   []packet
	)
	for off := 0; off < len(b); {
		if len(b)-off < 12 {
			return pkts, ErrTruncated
		}
		btype := binary.BigEndian.Uint32(b[off:])
		if btype == 0x0a0d0d0a { // section header: find the byte order first
			if len(b)-off < 28 {
				return pkts, ErrTruncated
			}
			if binary.LittleEndian.Uint32(b[off+8:]) == 0x1a2b3c4d {
				bo = binary.LittleEndian
			} else {
				bo = binary.BigEndian
			}
			ifaces = ifaces[:0]
		} else {
			btype = bo.Uint32(b[off:])
		}
		blen := int(bo.Uint32(b[off+4:]))
		if blen < 12 || blen%4 != 0 || blen > len(b)-off {
			return pkts, ErrTruncated
		}
		body := b[off+8 : off+blen-4]
		switch btype {
		case 1: // interface description
			if len(body) < 8 {
				break
			}
			ifc := iface{link: uint32(bo.Uint16(body[0:2])), unit: 1e-6}
			parseNGOptions(bo, body[8:], func(code uint16, v []byte) {
				if code == 9 && len(v) >= 1 { // if_tsresol
					if v[0]&0x80 != 0 {
						ifc.unit = 1 / float64(uint64(1)<<(v[0]&0x7f))
					} else {
						u := 1.0
						for i := 0; i < int(v[0]); i++ {
							u /= 10
						}
						ifc.unit = u
					}
				}
			})
			ifaces = append(ifaces, ifc)
		case 6, 2: // enhanced packet, obsolete packet
			if len(body) < 20 {
				break
			}
			id := int(bo.Uint32(body[0:4]))
			if btype == 2 {
				id = int(bo.Uint16(body[0:2]))
			}
			if id >= len(ifaces) {
				break
			}
			ts := uint64(bo.Uint32(body[4:8]))<<32 | uint64(bo.Uint32(body[8:12]))
			caplen := int(bo.Uint32(body[12:16]))
			if caplen < 0 || caplen > len(body)-20 {
				break
			}
			secs := float64(ts) * ifaces[id].unit
			t := time.Unix(0, 0).Add(time.Duration(secs * 1e9)).UTC()
			pkts = append(pkts, packet{ts: t, linkType: ifaces[id].link, data: body[20 : 20+caplen]})
		case 3: // simple packet: interface 0, no timestamp
			if len(body) < 4 || len(ifaces) == 0 {
				break
			}
			n := min(int(bo.Uint32(body[0:4])), len(body)-4)
			pkts = append(pkts, packet{linkType: ifaces[0].link, data: body[4 : 4+n]})
		}
		off += blen
	}
	return pkts, nil
}

func parseNGOptions(bo binary.ByteOrder, b []byte, fn func(code uint16, v []byte)) {
	for len(b) >= 4 {
		code, n := bo.Uint16(b[0:2]), int(bo.Uint16(b[2:4]))
		if code == 0 || 4+n > len(b) {
			return
		}
		fn(code, b[4:4+n])
		b = b[4+(n+3)&^3:]
	}
}

// Link types (LINKTYPE_* values, and DLT_RAW's platform-specific numbers).
const (
	linkNull     = 0
	linkEthernet = 1
	linkRawBSD   = 12
	linkRawOBSD  = 14
	linkRaw      = 101
	linkLoop     = 108
	linkSLL      = 113
	linkIPv4     = 228
	linkIPv6     = 229
	linkSLL2     = 276
)

// tcpSegment is a TCP segment of one flow direction.
type tcpSegment struct {
	src, dst netip.AddrPort
	seq      uint32
	syn, rst bool
	payload  []byte
}

// network strips the link layer and returns the IP packet, or nil.
func network(link uint32, b []byte) []byte {
	switch link {
	case linkEthernet:
		if len(b) < 14 {
			return nil
		}
		et, rest := binary.BigEndian.Uint16(b[12:14]), b[14:]
		for (et == 0x8100 || et == 0x88a8 || et == 0x9100) && len(rest) >= 4 {
			et, rest = binary.BigEndian.Uint16(rest[2:4]), rest[4:]
		}
		if et != 0x0800 && et != 0x86dd {
			return nil
		}
		return rest
	case linkSLL:
		if len(b) < 16 {
			return nil
		}
		return b[16:]
	case linkSLL2:
		if len(b) < 20 {
			return nil
		}
		return b[20:]
	case linkNull, linkLoop:
		if len(b) < 4 {
			return nil
		}
		return b[4:]
	case linkRaw, linkRawBSD, linkRawOBSD, linkIPv4, linkIPv6:
		return b
	}
	return nil
}

// parseTCP decodes an IPv4 or IPv6 packet carrying TCP. Fragments are not
// reassembled: BMP over TCP is not fragmented in practice (PMTU discovery).
func parseTCP(ip []byte) (tcpSegment, bool) {
	var (
		seg      tcpSegment
		src, dst netip.Addr
		l4       []byte
	)
	if len(ip) < 1 {
		return seg, false
	}
	switch ip[0] >> 4 {
	case 4:
		if len(ip) < 20 {
			return seg, false
		}
		ihl := int(ip[0]&0x0f) * 4
		total := int(binary.BigEndian.Uint16(ip[2:4]))
		if ip[9] != 6 || ihl < 20 || total < ihl || len(ip) < ihl {
			return seg, false
		}
		if frag := binary.BigEndian.Uint16(ip[6:8]); frag&0x3fff != 0 {
			return seg, false // fragment
		}
		if total > len(ip) || total == 0 { // snapped, or TSO with length 0
			total = len(ip)
		}
		src, dst = netip.AddrFrom4([4]byte(ip[12:16])), netip.AddrFrom4([4]byte(ip[16:20]))
		l4 = ip[ihl:total]
	case 6:
		if len(ip) < 40 {
			return seg, false
		}
		plen := int(binary.BigEndian.Uint16(ip[4:6]))
		next := ip[6]
		src, dst = netip.AddrFrom16([16]byte(ip[8:24])), netip.AddrFrom16([16]byte(ip[24:40]))
		l4 = ip[40:]
		if plen != 0 && plen < len(l4) {
			l4 = l4[:plen]
		}
		for next != 6 {
			switch next {
			case 0, 43, 60: // hop-by-hop, routing, destination options
				if len(l4) < 8 {
					return seg, false
				}
				n := (int(l4[1]) + 1) * 8
				if n > len(l4) {
					return seg, false
				}
				next, l4 = l4[0], l4[n:]
			default: // fragment (44) or not TCP
				return seg, false
			}
		}
	default:
		return seg, false
	}
	if len(l4) < 20 {
		return seg, false
	}
	doff := int(l4[12]>>4) * 4
	if doff < 20 || doff > len(l4) {
		return seg, false
	}
	seg.src = netip.AddrPortFrom(src.Unmap(), binary.BigEndian.Uint16(l4[0:2]))
	seg.dst = netip.AddrPortFrom(dst.Unmap(), binary.BigEndian.Uint16(l4[2:4]))
	seg.seq = binary.BigEndian.Uint32(l4[4:8])
	seg.syn = l4[13]&0x02 != 0
	seg.rst = l4[13]&0x04 != 0
	seg.payload = l4[doff:]
	return seg, true
}

// flow collects the segments of one direction of one connection.
type flow struct {
	src, dst netip.AddrPort
	start    time.Time
	synSeen  bool
	anchored bool
	lastSeq  uint32 // sequence number of the previous data segment
	lastOff  int64  // its offset from the first data byte
	segs     []relSeg
}

type relSeg struct {
	off  int64
	data []byte
}

// reassemble orders every flow's payload by sequence number. Retransmitted
// and overlapping bytes are taken from the first segment that carried them;
// a SYN on a flow that already carried data starts a new connection.
func reassemble(pkts []packet) []Stream {
	type fkey struct{ src, dst netip.AddrPort }
	var (
		flows  []*flow
		active = map[fkey]*flow{}
	)
	for _, p := range pkts {
		ip := network(p.linkType, p.data)
		if ip == nil {
			continue
		}
		seg, ok := parseTCP(ip)
		if !ok {
			continue
		}
		k := fkey{seg.src, seg.dst}
		fl := active[k]
		// A SYN with payload is not a connection start: crafted captures
		// (scapy-made test files) set SYN on every data packet and number
		// the payload from the SYN's own sequence number.
		syn := seg.syn && len(seg.payload) == 0
		if fl == nil || (syn && len(fl.segs) > 0) {
			fl = &flow{src: seg.src, dst: seg.dst, start: p.ts}
			active[k] = fl
			flows = append(flows, fl)
		}
		if syn {
			fl.synSeen, fl.anchored = true, true
			fl.lastSeq, fl.lastOff = seg.seq+1, 0 // the first data byte follows the SYN
			continue
		}
		if len(seg.payload) == 0 {
			continue
		}
		fl.add(seg.seq, seg.payload)
	}
	out := make([]Stream, 0, len(flows))
	for _, fl := range flows {
		data, missing := fl.assemble()
		out = append(out, Stream{Src: fl.src, Dst: fl.dst, Start: fl.start, Data: data, Missing: missing})
	}
	return out
}

// add places a segment relative to the previous one. The signed 32-bit
// difference handles sequence wrap-around and reordering alike, as long as
// segments are less than 2 GiB apart.
func (fl *flow) add(seq uint32, payload []byte) {
	if !fl.anchored {
		fl.anchored, fl.lastSeq, fl.lastOff = true, seq, 0
	}
	off := fl.lastOff + int64(int32(seq-fl.lastSeq))
	fl.lastSeq, fl.lastOff = seq, off
	fl.segs = append(fl.segs, relSeg{off: off, data: payload})
}

// assemble concatenates the segments in sequence order from the first data
// byte (after the SYN when one was seen, else the lowest offset) up to the
// first gap, and counts the bytes missing in gaps.
func (fl *flow) assemble() ([]byte, int64) {
	if len(fl.segs) == 0 {
		return nil, 0
	}
	segs := slices.Clone(fl.segs)
	slices.SortStableFunc(segs, func(a, b relSeg) int { return cmp.Compare(a.off, b.off) })
	cur := segs[0].off
	if fl.synSeen {
		cur = 0
	}
	var (
		buf     bytes.Buffer
		missing int64
		gap     bool
	)
	for _, s := range segs {
		end := s.off + int64(len(s.data))
		if end <= cur {
			continue // retransmission of bytes already placed
		}
		if s.off > cur {
			missing += s.off - cur
			gap = true
		}
		if !gap {
			buf.Write(s.data[cur-s.off:])
		}
		cur = end
	}
	return buf.Bytes(), missing
}
