package cluster

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"sort"
	"strconv"
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
//
// Only a request a member really proxied counts as forwarded: one that
// skips placement, and whose X-Forwarded-For names the client. With a
// cluster key the proxying node signs it (ForwardedAuthHeader); without one,
// it must come from a member's IP. Any other request carrying the headers is
// a client request like any other. Such a request may have been proxied by a
// node whose signature this one cannot check (clocks too far apart), so a
// hop count bounds how often one request is proxied (forwardedHopsHeader).

// ForwardedHeader marks a request proxied by another node (its name).
const ForwardedHeader = "Oneport-Forwarded-By"

// ForwardedAuthHeader carries, with a cluster key, the proxying node's
// signature over the request: "v1.<unix ms>.<mac>", the MAC being
// HMAC-SHA256 (base64url, unpadded) with a key derived from the cluster key
// for this purpose alone, over the node name, the timestamp, the method,
// path and query, the room, and the client address the node appended to
// X-Forwarded-For. So a signature cannot be moved to another request, and
// the client address under it cannot be changed.
const ForwardedAuthHeader = "Oneport-Forwarded-Auth"

// MaxForwardedSkew is how far a signature's timestamp may be from the
// receiver's clock, either way: it bounds replay of a captured signature, and
// must exceed the skew between the nodes' clocks and a request's transit
// (the signature is made as the proxy sends the headers).
const MaxForwardedSkew = 30 * time.Second

// Why a request's forwarded headers did not make it a proxied request.
var (
	// ErrNotForwarded: the request carries no ForwardedHeader.
	ErrNotForwarded = errors.New("cluster: not a forwarded request")
	// ErrForwardedUnauthenticated wraps every reason a request carrying
	// ForwardedHeader is not taken as proxied by a member.
	ErrForwardedUnauthenticated = errors.New("cluster: forwarded request not authenticated")
	errForwardedMalformed       = fmt.Errorf("%w: malformed %s", ErrForwardedUnauthenticated, ForwardedAuthHeader)
	errForwardedExpired         = fmt.Errorf("%w: timestamp outside the skew window", ErrForwardedUnauthenticated)
	errForwardedBadMAC          = fmt.Errorf("%w: bad signature", ErrForwardedUnauthenticated)
	errForwardedNotMember       = fmt.Errorf("%w: not from a member's IP (no cluster key)", ErrForwardedUnauthenticated)
)

const forwardedVersion = "v1"

// forwardedHopsHeader counts the times a request was proxied; a node
// proxies a request at most maxForwardedHops times over (see forward). It
// is not signed: it can only make a node refuse to proxy.
const (
	forwardedHopsHeader = "Oneport-Forwarded-Hops"
	maxForwardedHops    = 3
)

// forwardedHops reads forwardedHopsHeader; absent or unreadable is 0.
func forwardedHops(h http.Header) int {
	n, err := strconv.Atoi(h.Get(forwardedHopsHeader))
	if err != nil || n < 0 {
		return 0
	}
	return n
}

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

// forwardedMAC is the signature over a proxied request; see
// ForwardedAuthHeader. Every field is length-prefixed, so no two different
// requests sign the same bytes.
func forwardedMAC(key []byte, by string, ms int64, method, path, query, client string) []byte {
	room := ""
	if rt, ok := parseRoute(method, path); ok {
		room = rt.room
	}
	b := make([]byte, 0, 64+len(by)+len(method)+len(path)+len(query)+len(room)+len(client))
	b = append(b, forwardedVersion...)
	b = binary.BigEndian.AppendUint64(b, uint64(ms))
	for _, f := range [...]string{by, method, path, query, room, client} {
		b = binary.AppendUvarint(b, uint64(len(f)))
		b = append(b, f...)
	}
	m := hmac.New(sha256.New, key)
	m.Write(b)
	return m.Sum(nil)
}

// signForwarded marks h (the headers of a request to method, path and query
// going to another node) as proxied by node by, at now.
func signForwarded(h http.Header, key []byte, by string, now time.Time, method, path, query string) {
	h.Set(ForwardedHeader, by)
	if key == nil {
		h.Del(ForwardedAuthHeader) // whatever the client sent means nothing
		return
	}
	ms := now.UnixMilli()
	mac := forwardedMAC(key, by, ms, method, path, query, lastForwardedFor(h))
	h.Set(ForwardedAuthHeader, forwardedVersion+"."+strconv.FormatInt(ms, 10)+"."+base64.RawURLEncoding.EncodeToString(mac))
}

// verifyForwardedAuth checks ForwardedAuthHeader on a request to method,
// path and query with headers h, at now. It returns the proxying node.
func verifyForwardedAuth(h http.Header, key []byte, now time.Time, method, path, query string) (string, error) {
	by := h.Get(ForwardedHeader)
	if by == "" {
		return "", ErrNotForwarded
	}
	v, rest, ok1 := strings.Cut(h.Get(ForwardedAuthHeader), ".")
	ts, enc, ok2 := strings.Cut(rest, ".")
	if !ok1 || !ok2 || v != forwardedVersion {
		return "", errForwardedMalformed
	}
	ms, err := strconv.ParseInt(ts, 10, 64)
	if err != nil || strconv.FormatInt(ms, 10) != ts {
		return "", errForwardedMalformed // one spelling per signature
	}
	if d := now.UnixMilli() - ms; d > MaxForwardedSkew.Milliseconds() || d < -MaxForwardedSkew.Milliseconds() {
		return "", errForwardedExpired
	}
	got, err := base64.RawURLEncoding.Strict().DecodeString(enc)
	if err != nil || len(got) != sha256.Size {
		return "", errForwardedMalformed
	}
	if !hmac.Equal(got, forwardedMAC(key, by, ms, method, path, query, lastForwardedFor(h))) {
		return "", errForwardedBadMAC
	}
	return by, nil
}

// lastForwardedFor is the last X-Forwarded-For entry: the one the last proxy
// appended.
func lastForwardedFor(h http.Header) string {
	xff := h.Values("X-Forwarded-For")
	if len(xff) == 0 {
		return ""
	}
	last := xff[len(xff)-1]
	if i := strings.LastIndexByte(last, ','); i >= 0 {
		last = last[i+1:]
	}
	return strings.TrimSpace(last)
}

// forwardedKey is the context key of a request's forwarded verdict, which
// Signaling works out once and ClientIP reuses.
type forwardedKey struct{}

type forwardedVerdict struct {
	by  string
	err error // nil: proxied by member by
}

// forwarded works out whether a member proxied r: see the comment at the top
// of this file.
func (n *Node) forwarded(r *http.Request) forwardedVerdict {
	if v, ok := r.Context().Value(forwardedKey{}).(forwardedVerdict); ok {
		return v
	}
	if n.fwdKey != nil {
		by, err := verifyForwardedAuth(r.Header, n.fwdKey, n.cfg.Clock.Now(), r.Method, r.URL.Path, r.URL.RawQuery)
		return forwardedVerdict{by, err}
	}
	by := r.Header.Get(ForwardedHeader)
	switch {
	case by == "":
		return forwardedVerdict{err: ErrNotForwarded}
	case !n.isMemberIP(remoteIP(r)):
		return forwardedVerdict{err: errForwardedNotMember}
	}
	return forwardedVerdict{by: by}
}

func remoteIP(r *http.Request) netip.Addr {
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr().Unmap()
}

// ClientIP is the IP a signaling request is charged to (sfu.Config.ClientIP):
// the connection's remote address, except on a request a member proxied
// (with a cluster key: signed by it; without: carrying ForwardedHeader from
// a live member's gossip IP or the host of its announced HTTP address),
// where it is the client the member saw: the last X-Forwarded-For entry,
// the one the member's proxy appended (entries before it came from the
// public and are ignored). Without a cluster key nothing authenticates the
// member beyond its source IP: see SECURITY.md.
func (n *Node) ClientIP(r *http.Request) netip.Addr {
	remote := remoteIP(r)
	if !remote.IsValid() || n.forwarded(r).err != nil {
		return remote
	}
	client, err := netip.ParseAddr(lastForwardedFor(r.Header))
	if err != nil {
		return remote
	}
	return client.Unmap()
}

// SignalingStats counts what the signaling wrapper refused.
type SignalingStats struct {
	// ForwardedRefused counts requests that carried the forwarded headers
	// but were not proxied by a member (bad or missing signature, or not
	// from a member's IP): each was served as a client request.
	ForwardedRefused uint64 `json:"forwarded_refused"`
	// Proxied counts requests this node proxied to another.
	Proxied uint64 `json:"proxied"`
}

// SignalingStats returns the signaling wrapper's counters.
func (n *Node) SignalingStats() SignalingStats {
	return SignalingStats{ForwardedRefused: n.fwdBad.Load(), Proxied: n.proxied.Load()}
}

// IsMemberIP reports whether ip (unmapped) is a live member's gossip IP or
// the host of its HTTP address (this node included). It walks the member
// list: for a connection or a request, not for a packet.
func (n *Node) IsMemberIP(ip netip.Addr) bool { return n.isMemberIP(ip) }

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
			pr.Out.Header.Set(forwardedHopsHeader, strconv.Itoa(forwardedHops(pr.In.Header)+1))
			// Signed last, over what the owner will see.
			signForwarded(pr.Out.Header, n.fwdKey, n.cfg.NodeName, n.cfg.Clock.Now(), pr.Out.Method, pr.Out.URL.Path, pr.Out.URL.RawQuery)
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
	fv := s.n.forwarded(r)
	if fv.err != nil && !errors.Is(fv.err, ErrNotForwarded) {
		s.n.fwdBad.Add(1)
	}
	forwarded := fv.err == nil
	// The local handler's ClientIP reuses the verdict.
	r = r.WithContext(context.WithValue(r.Context(), forwardedKey{}, fv))
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
		s.claimAndServe(w, r, rt.room, true)
	default:
		pick, ok := place(rt.room, s.n.candidates())
		switch {
		case !ok:
			w.Header().Set("Retry-After", "5")
			http.Error(w, "cluster: no node takes new rooms (all draining)", http.StatusServiceUnavailable)
		case pick == self:
			s.claimAndServe(w, r, rt.room, false)
		default:
			s.forwardTo(w, r, pick, rt.room)
		}
	}
}

// claimAndServe makes this node the room's owner and serves the request,
// unless the claim finds another owner: then a client request goes there, and
// a forwarded one is refused (proxying it again could loop).
func (s *signaling) claimAndServe(w http.ResponseWriter, r *http.Request, room string, forwarded bool) {
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
	case !forwarded:
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
	if hops := forwardedHops(r.Header); hops >= maxForwardedHops {
		// Only requests whose forwarded headers did not verify get here
		// proxied already (clocks over MaxForwardedSkew apart, a node
		// without the key): while the nodes' views disagree they could
		// ping-pong. A client that sets the count only refuses itself.
		w.Header().Set("Retry-After", "1")
		http.Error(w, fmt.Sprintf("cluster: request for room %q already proxied %d times; nodes disagree, retry", room, hops),
			http.StatusLoopDetected)
		return
	}
	ctx := context.WithValue(r.Context(), targetKey{}, target{node: m.Name, addr: m.Meta.HTTP, room: room})
	s.n.proxied.Add(1)
	s.proxy.ServeHTTP(w, r.WithContext(ctx))
}

// ClusterInfo is GET /api/cluster.
type ClusterInfo struct {
	Self      string         `json:"self"`
	Members   []MemberInfo   `json:"members"`
	Directory DirectoryStats `json:"directory"`
	Signaling SignalingStats `json:"signaling"`
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
	info := ClusterInfo{Self: n.cfg.NodeName, Members: []MemberInfo{}, Directory: n.dir.statsSnapshot(), Signaling: n.SignalingStats()}
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
