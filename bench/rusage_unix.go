//go:build unix

package bench

import (
	"fmt"
	"time"

	"golang.org/x/sys/unix"
)

// cpuTime is the user+system CPU this process has used, all threads
// (RUSAGE_SELF: the sender processes are not counted).
func cpuTime() (time.Duration, error) {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		return 0, fmt.Errorf("bench: getrusage: %w", err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), nil
}
