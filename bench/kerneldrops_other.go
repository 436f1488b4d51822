//go:build !linux

package bench

// kernelDrops is unknown outside Linux.
func kernelDrops(string, uint16) (uint64, bool) { return 0, false }
