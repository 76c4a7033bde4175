//go:build race

package forwarder

// raceEnabled: built with the race detector, as the tests run. It turns on
// checks too costly for production (a Sequencer keeping keys as encoded),
// and the race detector slows decoding about tenfold, so the largest
// end-to-end test volumes are cut down under it.
const raceEnabled = true
