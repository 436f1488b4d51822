//go:build unix

package bench

import (
	"errors"
	"syscall"
	"testing"
)

// assertReaped checks that no sender process is left: each PID is gone.
func assertReaped(t testing.TB, pids []int) {
	t.Helper()
	for _, pid := range pids {
		if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
			t.Errorf("sender %d still exists (kill 0: %v)", pid, err)
		}
	}
}
