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
