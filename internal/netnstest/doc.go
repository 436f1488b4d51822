// Package netnstest builds, for a test, the network a oneport cluster runs in
// behind a real kernel load balancer, out of Linux network namespaces:
//
//	client ns (10.78.0.2, .3, ...) ── brc ┐
//	                                      lb ns: VIP 10.77.0.100, nftables DNAT (deploy/nftables-lb.sh)
//	node ns n0 (10.77.0.2), n1 (.3) ── brn ┘
//
// Both bridges, the VIP and the nftables table live in the LB namespace;
// every client and node namespace has one veth into it and a default route
// through it, so the LB namespace routes (and, with the nftables table,
// DNATs and un-NATs) everything between them. Nodes reach each other
// directly on brn, as on a private network.
//
// Invariants:
//   - Nothing is created in, and no route or address is changed in, the
//     test process's own namespace: every interface is created inside the
//     test's namespaces, so the fixed 10.77/10.78 ranges never clash with the
//     host or with another run. Namespace names carry the creating
//     process's PID and a random tag, so runs and parallel tests do not
//     collide, and New removes the namespaces of runs whose process is gone
//     (a test binary killed by its timeout) before building.
//   - Clean-up (registered with t.Cleanup, idempotent) stops the processes
//     the topology started, kills by PID whatever else is left in its
//     namespaces, removes the LB table with `nftables-lb.sh down`, and deletes
//     the namespaces, which takes their veths and bridges with them.
//   - NS.Do runs a function on an OS thread switched into a namespace and
//     switches the thread back before unlocking it; no thread is ever
//     returned to the Go scheduler in a foreign namespace. Sockets keep the
//     namespace they were created in, so in-process servers and clients can
//     live in different namespaces of one test process.
//
// Use:
//
//	top, err := netnstest.New(t, netnstest.Config{Nodes: 3, UDPPort: 3478, TCPPort: 8080})
//	// a node's sockets inside its namespace (mux, relay, HTTP listener, ...)
//	err = top.NodeNS(0).Do(func() (err error) { m, err = mux.New(cfg); return err })
//	// a client socket; send to top.UDPAddr(), answers come from it
//	c, err := top.ClientNS().ListenUDP(netip.AddrPortFrom(top.ClientAddr(0), 0))
//	err = top.Rehash()        // move live UDP flows, as an LB re-hash does
//	err = top.SetBackends(0, 1) // node 2 leaves the LB's pool
//
// Only sockets created inside Do are in the namespace. Code that dials
// later on goroutines of its own (memberlist's TCP push/pull, an HTTP
// client proxying to another node) dials from the process's namespace
// unless it is given a dialer: pass NS.DialContext where the code takes one
// (http.Transport.DialContext, a memberlist Transport), or run such nodes
// as processes with NS.Command and Topology.Start.
//
// Linux only (build tag linux), and it needs root; Require skips a test
// that cannot run here, or fails it when CI is set in the environment.
package netnstest
