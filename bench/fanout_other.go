//go:build !linux

package bench

import "time"

// Elsewhere the kernel's per-socket drops and the load average are unknown.
func ownUDPDrops() (uint64, bool) { return 0, false }

func loadAvg() []float64 { return nil }

func hostBusy() (time.Duration, bool) { return 0, false }
