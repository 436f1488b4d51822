//go:build linux

package netnstest

import (
	"errors"
	"fmt"
	"path/filepath"
	"runtime"
	"strconv"
)

// defaultScript finds deploy/nftables-lb.sh from this source file's
// directory (internal/netnstest), which tests always have.
func defaultScript() (string, error) {
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		return "", errors.New("netnstest: cannot locate the package source to find deploy/nftables-lb.sh; set Config.Script")
	}
	return filepath.Join(filepath.Dir(file), "..", "..", "deploy", "nftables-lb.sh"), nil
}

// script runs nftables-lb.sh with args in the LB namespace.
func (t *Topology) script(args ...string) (string, error) {
	return t.lb.Run("sh", append([]string{t.cfg.Script}, args...)...)
}

// lbArgs is the LB's configuration as nftables-lb.sh options and backends
// (the nodes of t.backends, or all of them).
func (t *Topology) lbArgs() []string {
	args := []string{"--vip", vip.String(), "--udp-port", strconv.Itoa(int(t.cfg.UDPPort))}
	if t.cfg.TCPPort != 0 {
		args = append(args, "--tcp-port", strconv.Itoa(int(t.cfg.TCPPort)))
	}
	if t.cfg.Seed != 0 {
		args = append(args, "--seed", seedArg(t.cfg.Seed))
	}
	t.mu.Lock()
	backends := t.backends
	t.mu.Unlock()
	if backends == nil {
		for i := range t.nodes {
			backends = append(backends, i)
		}
	}
	for _, i := range backends {
		args = append(args, t.NodeAddr(i).String())
	}
	return args
}

func seedArg(s uint32) string { return fmt.Sprintf("0x%08x", s) }

func (t *Topology) lbUpCmd() error {
	if _, err := t.script(append([]string{"up"}, t.lbArgs()...)...); err != nil {
		return err
	}
	t.mu.Lock()
	t.lbUp = true
	t.mu.Unlock()
	return nil
}

// errNoLB is returned by the LB methods of an LBNone topology.
var errNoLB = errors.New("netnstest: topology has no nftables LB (Config.LB is LBNone)")

// Rehash gives the nftables rule a new random seed and deletes the UDP
// conntrack entries of the VIP, so every live UDP flow is hashed again and
// about (N-1)/N of them move to another node, as when an LB restarts or its
// backend set changes. Live TCP connections stay. Needs conntrack(8).
func (t *Topology) Rehash() error { return t.rehash() }

// RehashSeed is Rehash with a given seed.
func (t *Topology) RehashSeed(seed uint32) error { return t.rehash("--seed", seedArg(seed)) }

func (t *Topology) rehash(args ...string) error {
	if t.cfg.LB != LBNFTables {
		return errNoLB
	}
	_, err := t.script(append([]string{"rehash"}, args...)...)
	return err
}

// LBStatus returns `nftables-lb.sh status`: the table and the tracked
// flows per node.
func (t *Topology) LBStatus() (string, error) {
	if t.cfg.LB != LBNFTables {
		return "", errNoLB
	}
	return t.script("status")
}

// LBDown removes the LB table (`nftables-lb.sh down`): new flows to the VIP
// are no longer balanced. LBUp installs it again.
func (t *Topology) LBDown() error {
	if t.cfg.LB != LBNFTables {
		return errNoLB
	}
	if _, err := t.script("down"); err != nil {
		return err
	}
	t.mu.Lock()
	t.lbUp = false
	t.mu.Unlock()
	return nil
}

// SetBackends reinstalls the LB table with only the given nodes as
// backends (`nftables-lb.sh up`), as when nodes leave or join the LB's pool:
// live flows on a remaining node stay there, flows of a removed node are
// deleted from conntrack and re-hash over the rest at their next packet, and
// new flows hash over the new set (jhash mod the new count). With no
// arguments, every node is a backend again.
func (t *Topology) SetBackends(nodes ...int) error {
	if t.cfg.LB != LBNFTables {
		return errNoLB
	}
	for _, i := range nodes {
		if i < 0 || i >= len(t.nodes) {
			return fmt.Errorf("netnstest: SetBackends: node %d of %d", i, len(t.nodes))
		}
	}
	t.mu.Lock()
	t.backends = nil
	if len(nodes) > 0 {
		t.backends = append([]int(nil), nodes...)
	}
	t.mu.Unlock()
	return t.lbUpCmd()
}

// LBUp installs (or reinstalls, unchanged) the LB table.
func (t *Topology) LBUp() error {
	if t.cfg.LB != LBNFTables {
		return errNoLB
	}
	return t.lbUpCmd()
}
