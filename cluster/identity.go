package cluster

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"

	"github.com/oneport/oneport/mux"
)

// Identity is who a node is for the lifetime of its process: a random id
// and the owner tag derived from it.
type Identity struct {
	ID  string // 128 random bits, hex
	Tag string // mux.TagLen ice-chars
}

// iceChars is RFC 8839's ice-char set; 64 characters, 6 bits each.
const iceChars = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

// NewIdentity makes a fresh random identity.
func NewIdentity() Identity {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails (Go >= 1.24)
	return IdentityFromID(hex.EncodeToString(b[:]))
}

// IdentityFromID derives the tag from id: the first 24 bits of SHA-256(id)
// as mux.TagLen ice-chars.
func IdentityFromID(id string) Identity {
	h := sha256.Sum256([]byte(id))
	v := uint32(h[0])<<16 | uint32(h[1])<<8 | uint32(h[2])
	tag := make([]byte, mux.TagLen)
	for i := range tag {
		tag[i] = iceChars[(v>>(6*(mux.TagLen-1-i)))&63]
	}
	return Identity{ID: id, Tag: string(tag)}
}

// deriveKey turns the operator's cluster key into a key for one purpose.
func deriveKey(clusterKey []byte, purpose string) []byte {
	h := sha256.New()
	h.Write([]byte("oneport " + purpose + "\x00"))
	h.Write(clusterKey)
	return h.Sum(nil)
}

// RelayKey is the key mux.Config.RelayKey takes for a cluster key; nil for
// none.
func RelayKey(clusterKey []byte) []byte {
	if len(clusterKey) == 0 {
		return nil
	}
	return deriveKey(clusterKey, "relay")
}
