// Package lbhealth tells load balancers and operators the truth about a
// oneport node: liveness (/healthz), readiness (/readyz), Prometheus metrics
// (/metrics), a STUN health probe on the media port, and draining.
//
// The package depends on the rest of oneport only through the small
// interfaces and plain structs declared in sources.go; cmd/oneport adapts the
// mux, the sfu and the cluster onto them. It starts no goroutine of its own:
// the only long-running call is [Drainer.Run], which runs on its caller's
// goroutine.
//
// Invariants:
//   - Readiness fails the moment [Drainer.Drain] returns, and stays failed
//     until [Drainer.Undrain] or process exit. Liveness never depends on
//     draining.
//   - A STUN Binding request without USERNAME is answered only while the node
//     is ready, at most at the configured per-source and global rates; every
//     probe is counted under exactly one [ProbeResult].
//   - [Health.HandleProbe] allocates nothing on the answered path and never
//     retains the request slice.
//   - Metric label values come from fixed sets (classes, directions, check
//     names, probe results, member states) or from the mux's drop reasons,
//     capped at [MaxDropReasons]: no per-room, per-session or per-address
//     labels.
//   - Admin endpoints exist only when an admin token is configured.
package lbhealth
