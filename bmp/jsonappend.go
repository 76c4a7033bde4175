package bmp

import (
	"encoding/base64"
	"encoding/json"
	"strconv"
	"time"
)

// The fast path writes JSON by appending, and must produce the bytes
// encoding/json produces for the same record.Event. Each helper either
// writes exactly those bytes or defers to encoding/json for the rare input
// whose escaping it does not do itself.

// appendJSONString appends s as encoding/json quotes it: printable ASCII
// other than the characters it escapes (", \, <, >, &) is copied; anything
// else is handed to encoding/json.
func appendJSONString(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c > 0x7e || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			q, _ := json.Marshal(s) // a string always marshals
			return append(b, q...)
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}

// appendJSONTime appends t as time.Time's MarshalJSON does; ok is false for
// the times it refuses (a year outside 0–9999, a zone offset of 24 hours or
// more), which encoding/json reports as an error.
func appendJSONTime(b []byte, t time.Time) ([]byte, bool) {
	if t.Location() == time.UTC {
		return appendJSONTimeUTC(b, t)
	}
	n0 := len(b)
	b = append(b, '"')
	b = t.AppendFormat(b, time.RFC3339Nano)
	s := b[n0+1:]
	if len(s) < 5 || s[4] != '-' {
		return b[:n0], false
	}
	if s[len(s)-1] != 'Z' {
		if len(s) < 6 {
			return b[:n0], false
		}
		c := s[len(s)-6]
		h := 10*int(s[len(s)-5]-'0') + int(s[len(s)-4]-'0')
		if ('0' <= c && c <= '9') || h >= 24 {
			return b[:n0], false
		}
	}
	return append(b, '"'), true
}

// appendJSONTimeUTC is appendJSONTime for a UTC time.
func appendJSONTimeUTC(b []byte, t time.Time) ([]byte, bool) {
	var c timeCache
	return c.appendJSONTimeUTC(b, t)
}

// timeCache keeps the text of the last second formatted: consecutive
// records mostly fall in the same second.
type timeCache struct {
	sec   int64
	valid bool
	text  [19]byte // 2006-01-02T15:04:05
}

// appendJSON is appendJSONTime, with the cache for times at UTC. That
// includes local times where the local zone is at offset zero (the spool's
// record times are local): RFC 3339 writes any zero offset as "Z", so the
// text is the same, without time.Time's general formatting.
func (c *timeCache) appendJSON(b []byte, t time.Time) ([]byte, bool) {
	if t.Location() == time.UTC {
		return c.appendJSONTimeUTC(b, t)
	}
	if _, off := t.Zone(); off == 0 {
		return c.appendJSONTimeUTC(b, t)
	}
	return appendJSONTime(b, t)
}

// appendJSONTimeUTC computes the civil date once per second from the Unix
// time (days to civil date: H. Hinnant's algorithm).
func (c *timeCache) appendJSONTimeUTC(b []byte, t time.Time) ([]byte, bool) {
	sec := t.Unix()
	if !c.valid || sec != c.sec {
		days, rem := sec/86400, sec%86400
		if rem < 0 {
			days, rem = days-1, rem+86400
		}
		z := days + 719468
		era := z / 146097
		if z < 0 && z%146097 != 0 {
			era--
		}
		doe := z - era*146097
		yoe := (doe - doe/1460 + doe/36524 - doe/146096) / 365
		y := yoe + era*400
		doy := doe - (365*yoe + yoe/4 - yoe/100)
		mp := (5*doy + 2) / 153
		d := doy - (153*mp+2)/5 + 1
		m := mp + 3
		if mp >= 10 {
			m = mp - 9
		}
		if m <= 2 {
			y++
		}
		if y < 0 || y > 9999 {
			return b, false
		}
		h, mi, s := rem/3600, rem/60%60, rem%60
		c.text = [19]byte{
			byte('0' + y/1000), byte('0' + y/100%10), byte('0' + y/10%10), byte('0' + y%10), '-',
			byte('0' + m/10), byte('0' + m%10), '-', byte('0' + d/10), byte('0' + d%10), 'T',
			byte('0' + h/10), byte('0' + h%10), ':', byte('0' + mi/10), byte('0' + mi%10), ':', byte('0' + s/10), byte('0' + s%10)}
		c.sec, c.valid = sec, true
	}
	b = append(b, '"')
	b = append(b, c.text[:]...)
	if ns := t.Nanosecond(); ns != 0 {
		var f [10]byte
		f[0] = '.'
		for i := 9; i >= 1; i-- {
			f[i] = byte('0' + ns%10)
			ns /= 10
		}
		n := 10
		for f[n-1] == '0' {
			n--
		}
		b = append(b, f[:n]...)
	}
	return append(b, 'Z', '"'), true
}

// appendJSONBytes appends a []byte as encoding/json does: base64, or null
// for a nil slice.
func appendJSONBytes(b, v []byte) []byte {
	if v == nil {
		return append(b, "null"...)
	}
	b = append(b, '"')
	b = base64.StdEncoding.AppendEncode(b, v)
	return append(b, '"')
}

func appendJSONUints(b []byte, v []uint32) []byte {
	if v == nil {
		return append(b, "null"...)
	}
	b = append(b, '[')
	for i, x := range v {
		if i > 0 {
			b = append(b, ',')
		}
		b = strconv.AppendUint(b, uint64(x), 10)
	}
	return append(b, ']')
}

func appendJSONStrings(b []byte, v []string) []byte {
	if v == nil {
		return append(b, "null"...)
	}
	b = append(b, '[')
	for i, s := range v {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendJSONString(b, s)
	}
	return append(b, ']')
}
