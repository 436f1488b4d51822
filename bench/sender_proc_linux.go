package bench

import "syscall"

// setSenderDeathSignal makes the kernel kill a sender process when the
// thread that started it dies: a last resort behind the closed stdin and the
// sender's own deadline.
func setSenderDeathSignal(attr *syscall.SysProcAttr) { attr.Pdeathsig = syscall.SIGKILL }
