package serve

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// oneportBin is the oneport executable under test, built once by TestMain.
var oneportBin string

// buildBudget bounds the build: a cold cache under -race compiles every
// dependency with instrumentation.
const buildBudget = 5 * time.Minute

func TestMain(m *testing.M) {
	if klbClientRole() {
		// This binary was re-executed in a client namespace as a kernel-LB
		// test's client (TestKernelLBClient): it starts no node.
		goleak.VerifyTestMain(m)
		return
	}
	dir, err := os.MkdirTemp("", "oneport-e2e-serve-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e/serve:", err)
		os.Exit(1)
	}
	oneportBin = filepath.Join(dir, "oneport")
	if err := build(oneportBin); err != nil {
		fmt.Fprintln(os.Stderr, "e2e/serve:", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	goleak.VerifyTestMain(m, goleak.Cleanup(func(code int) {
		os.RemoveAll(dir)
		os.Exit(code)
	}))
}

// build compiles ./cmd/oneport to out with the go command that runs the
// tests (go test puts its GOROOT/bin first in PATH).
func build(out string) error {
	ctx, cancel := context.WithTimeout(context.Background(), buildBudget)
	defer cancel()
	args := []string{"build", "-o", out}
	if raceEnabled {
		args = append(args, "-race")
	}
	args = append(args, "github.com/oneport/oneport/cmd/oneport")
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("go %v: %w", args, err)
	}
	return nil
}
