//go:build race

package rib

// raceEnabled: the race detector slows the largest capture tenfold; tests
// that replay it whole run it in the pass without the detector.
const raceEnabled = true
