package cluster

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"

	"github.com/oneport/oneport/mux"
)

// Load is what a node reports of how busy it is.
type Load struct {
	Sessions   int     `json:"s"`
	Rooms      int     `json:"r"`
	PacketRate float64 `json:"p"` // media packets/s in
}

// Meta is a node's memberlist meta. Field names are short: memberlist
// limits meta to 512 bytes.
type Meta struct {
	Version  int            `json:"v"`
	ID       string         `json:"id"`
	Tag      string         `json:"t"`
	Relay    netip.AddrPort `json:"ra"`
	HTTP     string         `json:"ha"`
	Load     Load           `json:"l"`
	Draining bool           `json:"d,omitempty"`
	Build    string         `json:"b,omitempty"`
}

const metaVersion = 1

var errBadMeta = errors.New("cluster: bad node meta")

func (m Meta) encode(limit int) ([]byte, error) {
	b, err := json.Marshal(m)
	if err != nil {
		return nil, err
	}
	if len(b) > limit {
		return nil, fmt.Errorf("%w: %d bytes, limit %d", errBadMeta, len(b), limit)
	}
	return b, nil
}

func decodeMeta(b []byte) (Meta, error) {
	var m Meta
	if err := json.Unmarshal(b, &m); err != nil {
		return m, fmt.Errorf("%w: %w", errBadMeta, err)
	}
	if m.Version != metaVersion || len(m.Tag) != mux.TagLen || !mux.IsIceChars(m.Tag) || !m.Relay.IsValid() {
		return m, fmt.Errorf("%w: version %d tag %q relay %v", errBadMeta, m.Version, m.Tag, m.Relay)
	}
	return m, nil
}
