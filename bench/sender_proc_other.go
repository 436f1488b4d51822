//go:build !linux

package bench

import "syscall"

// Elsewhere a sender process relies on its closed stdin and its deadline.
func setSenderDeathSignal(*syscall.SysProcAttr) {}
