//go:build !unix

package bench

import (
	"errors"
	"fmt"
	"time"
)

func cpuTime() (time.Duration, error) {
	return 0, fmt.Errorf("bench: process CPU time: %w", errors.ErrUnsupported)
}
