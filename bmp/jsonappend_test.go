package bmp

import (
	"encoding/json"
	"math/rand/v2"
	"testing"
	"time"
)

// TestAppendJSONTime holds the hand-written time form to encoding/json's,
// refusals included.
func TestAppendJSONTime(t *testing.T) {
	times := []time.Time{
		{},
		time.Unix(0, 0).UTC(),
		time.Unix(0, 1).UTC(),
		time.Unix(-1, 999999999).UTC(),
		time.Date(2026, 12, 7, 1, 2, 3, 123456000, time.UTC),
		time.Date(2024, 2, 29, 23, 59, 59, 100, time.UTC),
		time.Date(2000, 3, 1, 0, 0, 0, 0, time.UTC),
		time.Date(1900, 2, 28, 12, 0, 0, 5, time.UTC),
		time.Date(9999, 12, 31, 23, 59, 59, 999999999, time.UTC),
		time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC),
		time.Date(-1, 12, 31, 23, 59, 59, 0, time.UTC),
		time.Date(0, 1, 1, 0, 0, 0, 0, time.UTC),
		time.Date(2026, 1, 1, 0, 0, 0, 0, time.FixedZone("x", 5*3600+1800)),
		time.Date(2026, 1, 1, 0, 0, 0, 7, time.FixedZone("x", -9*3600)),
		time.Date(2026, 1, 1, 0, 0, 0, 7, time.FixedZone("x", 24*3600)),
		time.Date(2026, 1, 1, 0, 0, 0, 7, time.FixedZone("x", 3600+7)),
		time.Date(2026, 6, 1, 0, 0, 0, 7, time.Local),
		// A zone at offset zero that is not time.UTC, as the spool's local
		// record times are on a host at UTC: written with "Z" all the same.
		time.Date(2026, 1, 1, 0, 0, 0, 7, time.FixedZone("zero", 0)),
		time.Unix(1796605200, 250000000),
	}
	// A zone at offset zero in winter only.
	if london, err := time.LoadLocation("Europe/London"); err == nil {
		times = append(times, time.Date(2026, 1, 15, 12, 0, 0, 1, london), time.Date(2026, 7, 15, 12, 0, 0, 1, london))
	}
	r := rand.New(rand.NewPCG(1, 2))
	for range 20000 {
		times = append(times, time.Unix(r.Int64N(400000000000)-200000000000, r.Int64N(1e9)).UTC())
	}
	// Runs of times within one second, as records come, use the cache.
	base := time.Date(2026, 12, 7, 1, 0, 0, 0, time.UTC)
	for i := range 3000 {
		times = append(times, base.Add(time.Duration(i)*1300*time.Microsecond))
	}
	var c timeCache
	for _, tm := range times {
		want, werr := json.Marshal(tm)
		got, ok := appendJSONTime([]byte("x"), tm)
		if ok != (werr == nil) || ok && string(got) != "x"+string(want) {
			t.Fatalf("%v: got %q (%v), encoding/json %q (%v)", tm, got, ok, want, werr)
		}
		got, ok = c.appendJSON([]byte("x"), tm)
		if ok != (werr == nil) || ok && string(got) != "x"+string(want) {
			t.Fatalf("%v, cached: got %q (%v), encoding/json %q (%v)", tm, got, ok, want, werr)
		}
	}
}

// TestAppendJSONString holds the string form to encoding/json's.
func TestAppendJSONString(t *testing.T) {
	for _, s := range []string{"", "edge-1", "a\"b", "<&>", "\x00\x1f", "é", "\u2028", "\xff", "a\\b", "~\x7f"} {
		want, _ := json.Marshal(s)
		if got := appendJSONString(nil, s); string(got) != string(want) {
			t.Errorf("%q: got %s, encoding/json %s", s, got, want)
		}
	}
}
