package bench

import (
	"fmt"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// setOwnNice sets the nice value of every thread of this process. Linux
// keeps nice per thread, and a new thread inherits its creator's, so once
// every existing thread is reniced, so are the runtime's later ones.
func setOwnNice(nice int) error {
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return fmt.Errorf("bench sender: list threads: %w", err)
	}
	for _, t := range tasks {
		tid, err := strconv.Atoi(t.Name())
		if err != nil {
			continue
		}
		if err := unix.Setpriority(unix.PRIO_PROCESS, tid, nice); err != nil {
			return fmt.Errorf("bench sender: setpriority %d: %w", nice, err)
		}
	}
	return nil
}
