package main

import (
	"errors"
	"net/http"
	"sync/atomic"

	"github.com/rs/zerolog"

	"github.com/oneport/oneport/cluster"
	"github.com/oneport/oneport/sfu"
)

// clusterSignaling serves the sfu's signaling through the cluster: requests
// for rooms this node does not own are proxied to their owner, and GET
// /api/cluster describes the cluster.
func clusterSignaling(srv *sfu.Server, node *cluster.Node) http.Handler {
	// Charged before routing: a request proxied to another node counts
	// against the client here as well as at the owner.
	return srv.RateLimit(node.Signaling(srv.Handler()))
}

// roomOwner lets the sfu, built before the cluster node, release the rooms
// that end on it: an ended room leaves the directory at once.
type roomOwner struct {
	node atomic.Pointer[cluster.Node]
}

func (o *roomOwner) set(n *cluster.Node) { o.node.Store(n) }

func (o *roomOwner) release(room string) {
	if n := o.node.Load(); n != nil {
		n.Release(room)
	}
}

// endLostRoom ends the local sessions of a room that another node created
// first, with the reason given to its event streams.
func endLostRoom(srv *sfu.Server, log zerolog.Logger) func(room, reason string) {
	return func(room, reason string) {
		if err := srv.EndRoom(room, reason); err != nil && !errors.Is(err, sfu.ErrNotFound) {
			log.Warn().Err(err).Str("room", room).Msg("ending a room lost to another node")
		}
	}
}
