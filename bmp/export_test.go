package bmp

// SetFastPath switches the encoder's fast path, so tests can compare it
// with the library path on the same input.
func SetFastPath(e *Encoder, on bool) { e.fast = on }

// FastPathHits counts the records the fast path encoded.
func FastPathHits(e *Encoder) uint64 { return e.fastHits.Load() }
