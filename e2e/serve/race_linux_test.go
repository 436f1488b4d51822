//go:build race

package serve

// raceEnabled builds the binary under test with the race detector when the
// tests themselves run under it.
const raceEnabled = true
