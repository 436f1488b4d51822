package cluster

import (
	"math"
)

// Placement of new rooms: weighted rendezvous hashing (highest random
// weight). Every node that sees the same members and loads picks the same
// owner for a room; adding or removing a node moves only the choices that
// involve it; a busier node is picked less often. Loads differ a little
// between nodes' views: two nodes may then pick differently for the same new
// room at the same moment, and the directory's conflict rule settles it.

// candidate is a node that may take new rooms.
type candidate struct {
	name string
	load Load
}

// weight is a node's share of new rooms: inversely proportional to
// 1 + sessions + rooms, so an idle node counts as one unit.
func (c candidate) weight() float64 {
	return 1 / (1 + float64(max(c.load.Sessions, 0)) + float64(max(c.load.Rooms, 0)))
}

// place returns the candidate with the highest score w / -ln(u), u the
// room-and-node hash mapped to (0, 1): the logarithmic method, under which
// each node wins with probability proportional to its weight.
func place(room string, cands []candidate) (string, bool) {
	best, bestScore := "", math.Inf(-1)
	for _, c := range cands {
		u := (float64(rendezvousHash(room, c.name)>>11) + 0.5) / (1 << 53)
		score := c.weight() / -math.Log(u)
		if score > bestScore || score == bestScore && c.name < best {
			best, bestScore = c.name, score
		}
	}
	return best, best != ""
}

// rendezvousHash is FNV-1a over room, a zero byte and node, finished with
// splitmix64's mixer; the same on every node and every build.
func rendezvousHash(room, node string) uint64 {
	const prime = 1099511628211
	h := uint64(14695981039346656037)
	for i := 0; i < len(room); i++ {
		h = (h ^ uint64(room[i])) * prime
	}
	h *= prime
	for i := 0; i < len(node); i++ {
		h = (h ^ uint64(node[i])) * prime
	}
	h ^= h >> 30
	h *= 0xbf58476d1ce4e5b9
	h ^= h >> 27
	h *= 0x94d049bb133111eb
	h ^= h >> 31
	return h
}
