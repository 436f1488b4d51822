package sfu

import (
	"fmt"
	"net/http"
	"sort"
	"time"
)

// RoomSummary is one entry of GET /api/rooms.
type RoomSummary struct {
	Name         string    `json:"name"`
	Created      time.Time `json:"created"`
	Participants int       `json:"participants"`
	Tracks       int       `json:"tracks"`
}

// RoomInfo is GET /api/rooms/{room}.
type RoomInfo struct {
	Name         string            `json:"name"`
	Created      time.Time         `json:"created"`
	Participants []ParticipantInfo `json:"participants"`
	Tracks       []TrackInfo       `json:"tracks"`
}

// ParticipantInfo describes a publisher or subscriber.
type ParticipantInfo struct {
	ID            string             `json:"id"`
	Role          string             `json:"role"`
	Joined        time.Time          `json:"joined"`
	Connected     bool               `json:"connected"`
	Subscriptions []SubscriptionInfo `json:"subscriptions,omitempty"`
}

// TrackInfo describes a published track.
type TrackInfo struct {
	ID          string      `json:"id"`
	Publisher   string      `json:"publisher"`
	Kind        string      `json:"kind"`
	Codec       string      `json:"codec"`
	MID         string      `json:"mid"`
	Layers      []LayerInfo `json:"layers"`
	Subscribers int         `json:"subscribers"`
}

// LayerInfo describes one simulcast layer (rid "" when not simulcast).
type LayerInfo struct {
	RID     string `json:"rid"`
	SSRC    uint32 `json:"ssrc"`
	Active  bool   `json:"active"`
	Packets uint64 `json:"packets"`
	Bytes   uint64 `json:"bytes"`
	Bitrate uint64 `json:"bitrate"` // bits/s over the last sweep interval
}

// SubscriptionInfo describes one track as a subscriber receives it.
type SubscriptionInfo struct {
	Track        string  `json:"track"`
	RID          string  `json:"rid"`        // layer being forwarded ("" before the first keyframe)
	TargetRID    string  `json:"target_rid"` // layer chosen
	Packets      uint64  `json:"packets"`
	Bytes        uint64  `json:"bytes"`
	Drops        uint64  `json:"drops"`
	FractionLost uint32  `json:"fraction_lost"` // from its last receiver report, /256
	RTTMs        float64 `json:"rtt_ms"`        // round-trip time from its last receiver report; 0: not known yet
}

// RoomSummaries lists the rooms, sorted by name.
func (s *Server) RoomSummaries() []RoomSummary {
	s.mu.Lock()
	rooms := make([]*room, 0, len(s.rooms))
	for _, r := range s.rooms {
		rooms = append(rooms, r)
	}
	s.mu.Unlock()
	out := make([]RoomSummary, 0, len(rooms))
	for _, r := range rooms {
		r.mu.Lock()
		out = append(out, RoomSummary{Name: r.name, Created: r.created, Participants: len(r.participants), Tracks: len(r.tracks)})
		r.mu.Unlock()
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// RoomInfo describes one room; ErrNotFound if there is none.
func (s *Server) RoomInfo(name string) (RoomInfo, error) {
	r := s.lookupRoom(name)
	if r == nil {
		return RoomInfo{}, fmt.Errorf("%w: room %q", ErrNotFound, name)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	info := RoomInfo{Name: r.name, Created: r.created, Participants: []ParticipantInfo{}, Tracks: []TrackInfo{}}
	for _, p := range r.participants {
		pi := ParticipantInfo{ID: p.id, Role: p.role.String(), Joined: p.joined, Connected: p.connected.Load()}
		for _, d := range p.downList() {
			si := SubscriptionInfo{Track: d.src.id, Packets: d.packets.Load(), Bytes: d.bytes.Load(),
				Drops: d.drops.Load(), FractionLost: d.fractionLost.Load(), RTTMs: float64(d.rtt.Load()) / 1e6}
			if c := d.current.Load(); c >= 0 {
				si.RID = d.src.layers[c].rid
			}
			si.TargetRID = d.src.layers[d.target.Load()].rid
			pi.Subscriptions = append(pi.Subscriptions, si)
		}
		info.Participants = append(info.Participants, pi)
	}
	for _, t := range r.tracks {
		ti := TrackInfo{ID: t.id, Publisher: t.pub.id, Kind: t.kind.String(), Codec: t.codec.MimeType, MID: t.mid,
			Subscribers: len(*t.downs.Load())}
		for _, l := range t.layers {
			ti.Layers = append(ti.Layers, LayerInfo{RID: l.rid, SSRC: l.ssrc.Load(), Active: l.active.Load(),
				Packets: l.packets.Load(), Bytes: l.bytes.Load(), Bitrate: l.bitrate.Load()})
		}
		info.Tracks = append(info.Tracks, ti)
	}
	return info, nil
}

// NewHTTPServer returns an http.Server for h with timeouts suited to
// signaling: bounded header reads (bodies get their own deadline in the
// handlers, see bodyTimeout), idle keep-alives closed. There is no read or
// write timeout for the whole request: event streams are long-lived, and a
// connection read deadline would cancel them.
func NewHTTPServer(addr string, h http.Handler) *http.Server {
	return &http.Server{
		Addr:              addr,
		Handler:           h,
		ReadHeaderTimeout: 5 * time.Second,
		IdleTimeout:       120 * time.Second,
		MaxHeaderBytes:    16 << 10,
	}
}
