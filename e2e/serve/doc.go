// Package serve holds the end-to-end tests of the `oneport serve` process:
// the binary is built once per run, started as a real process on loopback
// (media port and HTTP on 127.0.0.1, ports chosen by the kernel and read
// from its "oneport serving" JSON log line), and driven from outside: pion
// WHIP publishers and WHEP subscribers through its HTTP API, STUN health
// probes on its media port, signals, the admin endpoints, and scrapes of
// /metrics parsed with the Prometheus text parser.
//
// What they pin is the wiring of cmd/oneport/serve.go that no unit test
// sees: the first SIGTERM drains (readiness fails at once, the UDP probe goes
// silent, live sessions keep their media and the room keeps taking joiners)
// and the process exits 0 when the last client leaves; a drain that times out
// ends the sessions and exits non-zero; a second SIGTERM exits at once; admin
// drain and undrain; metrics that move with real traffic and stay bounded in
// label cardinality; and the separate --health listener.
//
// The kernel-LB tests (kernellb_linux_test.go, root only) run three such
// processes in internal/netnstest's node namespaces behind an nftables DNAT
// VIP, with pion clients as processes in client namespaces (the test binary
// re-executed, TestKernelLBClient): media through the VIP and the relay, an
// LB re-hash under live media, and kill -9 of a node. The fault tests
// (faults_linux_test.go) cut a node off and heal it (membership converges,
// no room is left on two nodes), drain all three nodes in turn under `bench
// load` (no session ended by the server), re-hash the LB under several rooms,
// and restart every node but a room's owner (the room never ends or splits).
// The flood tests (flood_linux_test.go) throw a million random STUN checks,
// a million junk datagrams, spoofed checks for a live ufrag, relay frames
// from strangers and with bad MACs, RTCP NACKs from a subscriber asking for
// everything again and again, and WHIP POST floods at a node holding live
// sessions, and check that the sessions lose nothing, memory stays bounded,
// every datagram is counted by reason and nothing is logged per packet. The
// HTTP limits are tested the same way: connections per client IP and in all
// (httpconns_linux_test.go), and the signaling rate charged at the node a
// request reaches before the cluster proxies it (signalingrate_linux_test.go).
//
// Every process a test starts is killed by PID in its clean-up, every wait has
// a deadline, and no test sleeps to synchronize. Under -race the binary is
// built with the race detector too, and a race report in its output fails the
// test. The package has no code of its own: the tests and their harness are
// in the _linux_test.go files.
package serve
