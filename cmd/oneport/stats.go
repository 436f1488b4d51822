package main

import (
	"github.com/oneport/oneport/cluster"
	"github.com/oneport/oneport/internal/connlimit"
	"github.com/oneport/oneport/lbhealth"
	"github.com/oneport/oneport/mux"
	"github.com/oneport/oneport/sfu"
)

// mediaStats maps the mux's counters onto what lbhealth exports.
func mediaStats(st mux.Stats) lbhealth.MediaStats {
	var out lbhealth.MediaStats
	for lc := lbhealth.Class(0); lc < lbhealth.NumClasses; lc++ {
		for c := mux.Class(0); c < mux.NumClasses; c++ {
			if c.String() == lc.String() {
				out.In[lc] = lbhealth.Traffic{Packets: st.PacketsIn[c], Bytes: st.BytesIn[c]}
				out.Out[lc] = lbhealth.Traffic{Packets: st.PacketsOut[c], Bytes: st.BytesOut[c]}
			}
		}
	}
	for r := mux.DropReason(0); r < mux.NumDropReasons; r++ {
		if st.Drops[r] != 0 {
			out.Drops = append(out.Drops, lbhealth.DropCount{Reason: r.String(), Packets: st.Drops[r]})
		}
	}
	out.Flows = uint64(st.Flows)
	return out
}

func sfuStats(st sfu.Stats) lbhealth.SFUStats {
	var refused []lbhealth.DropCount
	for i, n := range st.Refused.Counts() {
		refused = append(refused, lbhealth.DropCount{Reason: sfu.RefusalReasons[i], Packets: n})
	}
	return lbhealth.SFUStats{
		Refused:      refused,
		Rooms:        uint64(st.Rooms),
		Participants: uint64(st.Participants),
		Tracks:       uint64(st.Tracks),
		Subscribers:  uint64(st.Subscribers),
		Forwarded:    lbhealth.Traffic{Packets: st.ForwardedPackets, Bytes: st.ForwardedBytes},
		Drops: []lbhealth.DropCount{
			{Reason: "queue_full", Packets: st.SubscriberDrops - st.LateDrops},
			{Reason: "late", Packets: st.LateDrops},
			{Reason: "duplicate", Packets: st.Duplicates},
		},
		Retransmits:    st.Retransmits,
		NACKMisses:     st.NACKMisses,
		NACKSuppressed: st.NACKSuppressed,
	}
}

// clusterStats maps the membership and the mux's relay counters onto what
// lbhealth exports.
func clusterStats(members []cluster.Member, st mux.Stats) lbhealth.ClusterStats {
	var out lbhealth.ClusterStats
	for _, m := range members {
		for s := lbhealth.MemberState(0); s < lbhealth.NumMemberStates; s++ {
			if s.String() == m.State {
				out.Members[s]++
			}
		}
		if m.State == "alive" && m.Meta.Draining {
			out.Draining++
		}
	}
	out.RelayIn = lbhealth.Traffic{Packets: st.RelayFramesIn, Bytes: st.RelayBytesIn}
	out.RelayOut = lbhealth.Traffic{Packets: st.RelayFramesOut, Bytes: st.RelayBytesOut}
	return out
}

// withHTTPStats adds the signaling listener's connection counts.
func withHTTPStats(st lbhealth.SFUStats, hs connlimit.Stats) lbhealth.SFUStats {
	st.HTTPConns = uint64(hs.Open)
	st.HTTPRefused = []lbhealth.DropCount{
		{Reason: connlimit.ReasonMaxConns, Packets: hs.RefusedTotal},
		{Reason: connlimit.ReasonMaxPerIP, Packets: hs.RefusedPerIP},
	}
	return st
}
