//go:build !unix

package bench

import (
	"os"
	"testing"
)

// assertReaped checks that no sender process is left: each PID is gone.
func assertReaped(t testing.TB, pids []int) {
	t.Helper()
	for _, pid := range pids {
		if p, err := os.FindProcess(pid); err == nil {
			_ = p.Release()
			t.Errorf("sender %d still exists", pid)
		}
	}
}
