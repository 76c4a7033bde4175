//go:build race

package bmp_test

// raceEnabled shortens the largest capture test: the race detector makes
// decoding ~10× slower, and the full 300,006 messages run without it.
const raceEnabled = true
