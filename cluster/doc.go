// Package cluster joins identical oneport nodes into one cluster over
// hashicorp/memberlist gossip, so that any node can take any client's
// packets and get them to the node that owns the client's session.
//
// Every node has a random identity and a short owner tag derived from it;
// the tag is the prefix of every ICE ufrag the node creates (see
// mux.UfragPrefix), so any node routes a STUN check to its owner without
// asking anyone. A node's memberlist meta carries its id, tag, relay and
// HTTP addresses, load and draining state. On every membership change the
// live members' relay addresses and tags are handed to the mux (SetPeers),
// which relays datagrams between the ingress node and the owner.
//
// Invariants:
//   - A node without --join is a cluster of one: the same code path.
//   - Two live nodes never share a tag: a newcomer that finds its tag taken
//     fails to start (ErrDuplicateTag).
//   - memberlist's event callbacks never block: they only signal a goroutine
//     the Node owns, which rebuilds the peer set.
//   - Close leaves the cluster (so others learn at once, not by failure
//     detection), shuts memberlist down and waits for the Node's goroutines.
//   - With a cluster key, gossip is encrypted and authenticated (memberlist's
//     AES-GCM keyring), relay frames are authenticated (mux.RelayKey) and
//     signaling requests proxied to another node are signed
//     (ForwardedAuthHeader), each with its own key derived from the cluster
//     key. Without one, a request counts as proxied by a member when it
//     comes from a member's IP.
package cluster
