//go:build !(linux || darwin || freebsd || netbsd || openbsd || dragonfly)

package lbhealth

import (
	"errors"
	"fmt"
	"time"
)

// processCPUTime is not implemented here: Config.MaxCPU is refused.
func processCPUTime() (time.Duration, error) {
	return 0, fmt.Errorf("lbhealth: process CPU time: %w", errors.ErrUnsupported)
}
