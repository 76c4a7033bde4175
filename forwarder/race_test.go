//go:build race

package forwarder

// raceEnabled: the race detector slows decoding about tenfold, so the
// largest end-to-end volumes are cut down under it.
const raceEnabled = true
