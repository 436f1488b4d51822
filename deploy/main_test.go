// Package deploy holds no code: its tests exercise the deployment examples
// next to them (nftables-lb.sh through internal/netnstest, nginx-stream.conf,
// kubernetes/).
package deploy

import (
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
