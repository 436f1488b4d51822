// Package cluster holds the end-to-end tests of signaling across a cluster:
// several in-process nodes (mux, sfu, cluster membership, the signaling
// handler) on distinct loopback addresses, with real pion clients. The
// clients' media goes straight to the owner's media port (no load balancer
// here).
package cluster
