// Package bench measures oneport against its peers.
//
// RunMux replays the same STUN-then-RTP traffic, in one run, into three
// receivers one after another: a raw UDP socket that does no demultiplexing
// (the ceiling), pion's ice.NewUDPMuxDefault, and oneport's mux. Each session
// has its own conn (GetConn) and its own reader goroutine; each client socket
// sends a STUN Binding request, the session answers it through its conn (that
// write binds the address in oneport's mux), and then the client sends RTP.
//
// The senders run in separate processes (the current binary re-executed with
// ONEPORT_BENCH_SENDER=1), so the receive-side CPU that RunMux reads with
// getrusage(RUSAGE_SELF) is the receiver's own. Programs that call RunMux
// must call MaybeRunSender first thing in main (or TestMain).
//
// RunFanout measures the SFU the way it is used: one publisher (VP8 at about
// 2 Mbit/s, 200 packets/s, and Opus at 50 packets/s) to N subscribers, N
// stepped up until loss reaches 1 % or the publisher's packets grow late,
// against the same server on pion's mux and on oneport's, in one run. The
// server, the publisher and the subscribers (many pion PeerConnections per
// process) are child processes, the current binary re-executed with
// ChildEnv set; the server samples its own CPU and counters at the bounds
// of each measured window, the clients count every packet by the send time
// and counter in its payload, so loss and one-way latency (same clock) are
// exact for the window whenever the packets arrive. MaybeRunSender also
// runs these children.
//
// RunLoad is the operators' load test: real pion publishers and
// subscribers (ICE, DTLS, SRTP) in client processes against any WHIP/WHEP
// base URL, at a ramp, held for a duration, with join times, packets/s,
// loss by counter, RFC 3550 jitter and one-way latency per track and in
// total, a time series for the HTML report, and every session deleted at
// the end. RunIdleMemory measures a node's heap per idle session the same
// way. RunReplay sends a capture's client datagrams (pcap or pcapng, read
// with gopacket's pcapgo) with their timing into sessions on an in-process
// mux, rewritten (STUN USERNAME and MESSAGE-INTEGRITY, RTP/RTCP SSRCs) to
// name them. RunRelay compares direct and relayed delivery through a
// 3-node loopback cluster.
//
// Invariants:
//   - Traffic goes only to 127.0.0.1 or ::1 (127.0.0.0/8 for the relay's
//     nodes), except RunLoad's, which goes where its URL points.
//   - Everything is bounded: sessions, sockets, durations, waits. Every
//     sender or child process is killed by PID on every exit path, and
//     exits by itself when its stdin closes or its deadline passes.
//   - Delivered packets are counted by the session readers, and only RTP
//     carrying the session's own SSRC counts, so a misrouted packet shows up
//     as misrouted rather than as delivered.
package bench
