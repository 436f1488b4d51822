package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"sort"
	"strings"
	"time"

	"github.com/hashicorp/memberlist"
)

// Signaling across nodes. Every WHIP, WHEP, events and room API request is
// served by the room's owner, whichever node the HTTP load balancer sent it
// to: the node that receives it serves it when it owns the room, claims the
// room first when nobody owns it and placement picks this node, and
// otherwise proxies it to the owner (or to the node placement picked, which
// claims it). Requests naming a resource id go to the node whose tag the id
// carries. A proxied request carries ForwardedHeader, and a node never
// proxies such a request again: no loops, whatever the nodes' views.

// ForwardedHeader marks a request proxied by another node (its name).
const ForwardedHeader = "Oneport-Forwarded-By"

// route is what a signaling path says about where to serve it.
type route struct {
	room    string
	id      string // a resource id: route by its tag
	creates bool   // the request may create the room
}

// parseRoute classifies a request; ok is false for paths served locally
// whatever the room (preflights, lists, anything else).
func parseRoute(method, path string) (route, bool) {
	if method == http.MethodOptions {
		return route{}, false
	}
	seg := strings.Split(strings.TrimPrefix(path, "/"), "/")
	var rt route
	switch {
	case len(seg) == 2 && (seg[0] == "whip" || seg[0] == "whep") && method == http.MethodPost:
		rt = route{room: seg[1], creates: true}
	case len(seg) == 3 && (seg[0] == "whip" || seg[0] == "whep"):
		rt = route{room: seg[1], id: seg[2]}
	case len(seg) == 3 && seg[0] == "rooms" && seg[2] == "events" && method == http.MethodGet:
		rt = route{room: seg[1], creates: true}
	case len(seg) == 3 && seg[0] == "api" && seg[1] == "rooms":
		rt = route{room: seg[2]}
	case len(seg) == 6 && seg[0] == "api" && seg[1] == "rooms" && seg[3] == "subscribers" && seg[5] == "layer":
		rt = route{room: seg[2], id: seg[4]}
	default:
		return route{}, false
	}
	return rt, ValidRoomName(rt.room)
}

// ClientIP is the IP a signaling request is charged to (sfu.Config.ClientIP):
// the connection's remote address, except on a request proxied by a member,
// where it is the client the member saw. The member is recognized by the
// connection coming from the IP of a live member (its gossip address or the
// host of its announced HTTP address) and the request carrying
// ForwardedHeader; the client is then the last X-Forwarded-For entry, the one
// the member's proxy appended (entries before it came from the public and
// are ignored). Nothing authenticates the member beyond its source IP: see
// SECURITY.md.
func (n *Node) ClientIP(r *http.Request) netip.Addr {
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return netip.Addr{}
	}
	remote := ap.Addr().Unmap()
	if r.Header.Get(ForwardedHeader) == "" || !n.isMemberIP(remote) {
		return remote
	}
	xff := r.Header.Values("X-Forwarded-For")
	if len(xff) == 0 {
		return remote
	}
	last := xff[len(xff)-1]
	if i := strings.LastIndexByte(last, ','); i >= 0 {
		last = last[i+1:]
	}
	client, err := netip.ParseAddr(strings.TrimSpace(last))
	if err != nil {
		return remote
	}
	return client.Unmap()
}

// isMemberIP reports whether ip is a live member's gossip IP or the host of
// its HTTP address (this node included).
func (n *Node) isMemberIP(ip netip.Addr) bool {
	for _, m := range n.members.list() {
		if m.state != memberlist.StateAlive {
			continue
		}
		if m.addr.Unmap() == ip {
			return true
		}
		meta, err := decodeMeta(m.meta)
		if err != nil {
			continue
		}
		if ap, err := netip.ParseAddrPort(meta.HTTP); err == nil && ap.Addr().Unmap() == ip {
			return true
		}
	}
	return false
}

type signaling struct {
	n     *Node
	local http.Handler
	proxy *httputil.ReverseProxy
}

type targetKey struct{}

// target is where a proxied request goes, and why (for errors).
type target struct {
	node, addr, room string
}

// Signaling wraps the sfu's handler: see the comment at the top of this
// file. It also serves GET /api/cluster.
func (n *Node) Signaling(local http.Handler) http.Handler {
	s := &signaling{n: n, local: local}
	s.proxy = &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			t := pr.In.Context().Value(targetKey{}).(target)
			pr.Out.URL.Scheme, pr.Out.URL.Host = "http", t.addr
			pr.Out.Host = pr.In.Host
			pr.Out.Header["X-Forwarded-For"] = pr.In.Header["X-Forwarded-For"]
			pr.SetXForwarded()
			pr.Out.Header.Set(ForwardedHeader, n.cfg.NodeName)
		},
		Transport:     n.proxy,
		FlushInterval: -1, // event streams flow as they are written
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			t := r.Context().Value(targetKey{}).(target)
			if errors.Is(err, context.Canceled) {
				return // the client went away
			}
			n.log.Warn().Err(err).Str("node", t.node).Str("room", t.room).Msg("proxying signaling")
			http.Error(w, fmt.Sprintf("cluster: node %s (%s), owner of room %q, is unreachable: %v", t.node, t.addr, t.room, err),
				http.StatusBadGateway)
		},
		ErrorLog: nil,
	}
	return s
}

func newProxyTransport(timeout time.Duration) *http.Transport {
	return &http.Transport{
		Proxy:                 nil, // nodes talk directly on the internal network
		DialContext:           (&net.Dialer{Timeout: min(timeout, 5*time.Second), KeepAlive: 30 * time.Second}).DialContext,
		ResponseHeaderTimeout: timeout,
		MaxIdleConnsPerHost:   32,
		IdleConnTimeout:       90 * time.Second,
		ExpectContinueTimeout: time.Second,
	}
}

func (s *signaling) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/api/cluster" && r.Method == http.MethodGet {
		s.n.serveClusterInfo(w)
		return
	}
	rt, ok := parseRoute(r.Method, r.URL.Path)
	if !ok {
		s.local.ServeHTTP(w, r)
		return
	}
	forwarded := r.Header.Get(ForwardedHeader) != ""
	self := s.n.cfg.NodeName
	if rt.id != "" {
		tag, ok := ResourceTag(rt.id)
		if forwarded || !ok || tag == s.n.cfg.Identity.Tag {
			s.local.ServeHTTP(w, r)
			return
		}
		m, ok := s.n.aliveMember("", tag)
		if !ok {
			http.Error(w, fmt.Sprintf("cluster: resource %q: the node that made it (tag %s) is not in the cluster", rt.id, tag),
				http.StatusNotFound)
			return
		}
		s.forward(w, r, m, rt.room)
		return
	}
	owner, owned := s.n.dir.owner(rt.room)
	switch {
	case owned && owner == self:
		s.local.ServeHTTP(w, r)
	case owned && !forwarded:
		s.forwardTo(w, r, owner, rt.room)
	case owned && rt.creates:
		// Sent here by a node that thought this one owns the room, or should
		// create it; this node knows an owner the sender did not. Serving it
		// would split the room, proxying again could loop: the client
		// retries, by when the views agree.
		w.Header().Set("Retry-After", "1")
		http.Error(w, fmt.Sprintf("cluster: room %q is owned by node %s; nodes disagreed, retry", rt.room, owner),
			http.StatusServiceUnavailable)
	case !rt.creates:
		s.local.ServeHTTP(w, r) // nothing to create: the local answer (404) stands
	case forwarded:
		s.claimAndServe(w, r, rt.room)
	default:
		pick, ok := place(rt.room, s.n.candidates())
		switch {
		case !ok:
			w.Header().Set("Retry-After", "5")
			http.Error(w, "cluster: no node takes new rooms (all draining)", http.StatusServiceUnavailable)
		case pick == self:
			s.claimAndServe(w, r, rt.room)
		default:
			s.forwardTo(w, r, pick, rt.room)
		}
	}
}

// claimAndServe makes this node the room's owner and serves the request,
// unless the claim finds another owner.
func (s *signaling) claimAndServe(w http.ResponseWriter, r *http.Request, room string) {
	s.n.mu.Lock()
	draining := s.n.draining
	s.n.mu.Unlock()
	if draining {
		w.Header().Set("Retry-After", "1")
		http.Error(w, fmt.Sprintf("cluster: node %s is draining and takes no new rooms", s.n.cfg.NodeName), http.StatusServiceUnavailable)
		return
	}
	owner, err := s.n.Claim(room)
	switch {
	case err != nil:
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
	case owner == s.n.cfg.NodeName:
		s.local.ServeHTTP(w, r)
	case r.Header.Get(ForwardedHeader) == "":
		s.forwardTo(w, r, owner, room)
	default:
		w.Header().Set("Retry-After", "1")
		http.Error(w, fmt.Sprintf("cluster: room %q is owned by node %s; nodes disagreed, retry", room, owner),
			http.StatusServiceUnavailable)
	}
}

func (s *signaling) forwardTo(w http.ResponseWriter, r *http.Request, node, room string) {
	m, ok := s.n.aliveMember(node, "")
	if !ok || m.Meta.HTTP == "" {
		http.Error(w, fmt.Sprintf("cluster: node %s, owner of room %q, is not reachable (no live member with an HTTP address)", node, room),
			http.StatusBadGateway)
		return
	}
	s.forward(w, r, m, room)
}

func (s *signaling) forward(w http.ResponseWriter, r *http.Request, m Member, room string) {
	ctx := context.WithValue(r.Context(), targetKey{}, target{node: m.Name, addr: m.Meta.HTTP, room: room})
	s.proxy.ServeHTTP(w, r.WithContext(ctx))
}

// ClusterInfo is GET /api/cluster.
type ClusterInfo struct {
	Self      string         `json:"self"`
	Members   []MemberInfo   `json:"members"`
	Directory DirectoryStats `json:"directory"`
}

// MemberInfo is one member as this node sees it.
type MemberInfo struct {
	Name     string   `json:"name"`
	Addr     string   `json:"addr"`
	State    string   `json:"state"`
	Tag      string   `json:"tag"`
	HTTP     string   `json:"http"`
	Load     Load     `json:"load"`
	Draining bool     `json:"draining"`
	Self     bool     `json:"self"`
	Version  string   `json:"version,omitempty"`
	Rooms    []string `json:"rooms"`      // the rooms it owns, at most maxListedRooms
	NumRooms int      `json:"room_count"` // all of them
}

const maxListedRooms = 1000

// Info describes the cluster as this node sees it.
func (n *Node) Info() ClusterInfo {
	byOwner := n.dir.roomsByOwner()
	info := ClusterInfo{Self: n.cfg.NodeName, Members: []MemberInfo{}, Directory: n.dir.statsSnapshot()}
	for _, m := range n.Members() {
		rooms := byOwner[m.Name]
		mi := MemberInfo{Name: m.Name, Addr: m.Addr.String(), State: m.State, Tag: m.Meta.Tag, HTTP: m.Meta.HTTP,
			Load: m.Meta.Load, Draining: m.Meta.Draining, Self: m.Self, Version: m.Meta.Build,
			Rooms: rooms[:min(len(rooms), maxListedRooms)], NumRooms: len(rooms)}
		if mi.Rooms == nil {
			mi.Rooms = []string{}
		}
		info.Members = append(info.Members, mi)
	}
	sort.Slice(info.Members, func(i, j int) bool { return info.Members[i].Name < info.Members[j].Name })
	return info
}

func (n *Node) serveClusterInfo(w http.ResponseWriter) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Access-Control-Allow-Origin", "*")
	_ = json.NewEncoder(w).Encode(n.Info())
}
