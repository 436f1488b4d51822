// Package batchio reads UDP datagrams in batches without allocating per
// datagram: recvmmsg on Linux into preallocated buffers and sockaddrs that
// are parsed straight into netip.AddrPort, one datagram per call elsewhere.
//
// x/net's ipv4/ipv6 ReadBatch makes the same system call but returns a
// net.Addr per datagram, which costs two allocations each; at hundreds of
// thousands of datagrams per second that is the difference between a
// zero-allocation read path and a garbage-collector workload.
//
// A Reader is owned by one goroutine. Its buffers belong to the caller, who
// may swap any slot's buffer (SetBuffer) after taking its datagram.
package batchio
