package agent

import (
	"fmt"
	"math"
	"strconv"
	"strings"
)

// ByteSize is a size in bytes written in configuration as a plain integer or
// with a unit: "512KiB", "64MiB", "1GiB" (powers of 1024) or "10MB" (powers of 1000).
type ByteSize int64

var byteUnits = []struct {
	suffix string
	mult   int64
}{
	// Longest suffixes first so "MiB" is not read as "B".
	{"kib", 1 << 10}, {"mib", 1 << 20}, {"gib", 1 << 30}, {"tib", 1 << 40},
	{"kb", 1e3}, {"mb", 1e6}, {"gb", 1e9}, {"tb", 1e12},
	{"k", 1 << 10}, {"m", 1 << 20}, {"g", 1 << 30}, {"t", 1 << 40},
	{"b", 1},
}

// ParseByteSize parses "64MiB", "10MB", "4096" and the like.
func ParseByteSize(s string) (ByteSize, error) {
	t := strings.ToLower(strings.TrimSpace(s))
	if t == "" {
		return 0, fmt.Errorf("empty size")
	}
	mult := int64(1)
	for _, u := range byteUnits {
		if n, ok := strings.CutSuffix(t, u.suffix); ok {
			t, mult = strings.TrimSpace(n), u.mult
			break
		}
	}
	if i, err := strconv.ParseInt(t, 10, 64); err == nil {
		if i != 0 && (i > math.MaxInt64/mult || i < math.MinInt64/mult) {
			return 0, fmt.Errorf("size %q overflows", s)
		}
		return ByteSize(i * mult), nil
	}
	f, err := strconv.ParseFloat(t, 64)
	if err != nil || math.IsNaN(f) || math.IsInf(f, 0) {
		return 0, fmt.Errorf("%q is not a size (use e.g. 512KiB, 64MiB, 1GiB)", s)
	}
	v := f * float64(mult)
	if v > math.MaxInt64 || v < math.MinInt64 {
		return 0, fmt.Errorf("size %q overflows", s)
	}
	return ByteSize(v), nil
}

// UnmarshalText implements encoding.TextUnmarshaler for configuration decoding.
func (b *ByteSize) UnmarshalText(text []byte) error {
	v, err := ParseByteSize(string(text))
	if err != nil {
		return err
	}
	*b = v
	return nil
}

// MarshalText writes the largest binary unit that divides the size exactly.
func (b ByteSize) MarshalText() ([]byte, error) { return []byte(b.String()), nil }

func (b ByteSize) String() string {
	v := int64(b)
	for _, u := range []struct {
		s string
		m int64
	}{{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if v != 0 && v%u.m == 0 {
			return strconv.FormatInt(v/u.m, 10) + u.s
		}
	}
	return strconv.FormatInt(v, 10)
}
