package bench

import (
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"time"

	"github.com/pion/rtp"
)

// Stalled-session measurement: one session answers its check and then
// never reads again while StalledPackets packets are sent to it, in chunks
// small enough for the socket buffer, each chunk waited for until the mux
// has read it, so none is lost in the kernel and every one costs the mux
// whatever its queue costs.
const (
	stalledPacketSize = 100
	stalledChunk      = 256
	stalledChunkWait  = 5 * time.Second
)

func measureStalled(ctx context.Context, cfg MuxConfig, name string) StalledReport {
	rep := StalledReport{Receiver: name, Packets: cfg.StalledPackets, PacketSize: stalledPacketSize}
	if err := stalled(ctx, cfg, name, &rep); err != nil {
		rep.Error = err.Error()
	}
	return rep
}

func stalled(ctx context.Context, cfg MuxConfig, name string, rep *StalledReport) (err error) {
	specs := newSpecs(1)
	rcv, err := openReceiver(cfg, name, specs, true)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := rcv.close(); err == nil && cerr != nil {
			err = fmt.Errorf("bench: close: %w", cerr)
		}
	}()
	client, err := net.DialUDP(cfg.Network, nil, net.UDPAddrFromAddrPort(rcv.addr()))
	if err != nil {
		return fmt.Errorf("bench: stalled client: %w", err)
	}
	defer client.Close()
	cs := &clientSock{conn: client, spec: specs[0]}
	if !cs.check(time.Now().Add(cfg.HandshakeTimeout)) {
		return fmt.Errorf("bench: stalled session: STUN check not answered within %v", cfg.HandshakeTimeout)
	}

	pkt := make([]byte, stalledPacketSize)
	pt := rcv.nextRun()
	if _, err := (&rtp.Header{Version: 2, PayloadType: pt, SSRC: specs[0].SSRC}).MarshalTo(pkt); err != nil {
		return fmt.Errorf("bench: RTP header: %w", err)
	}
	in0, d0 := rcv.datagramsIn(), rcv.muxDrops()
	rep.HeapBeforeBytes = heapAfterGC()
	for sent := 0; sent < cfg.StalledPackets; {
		chunk := min(stalledChunk, cfg.StalledPackets-sent)
		for range chunk {
			binary.BigEndian.PutUint16(pkt[2:4], uint16(sent))
			if _, err := client.Write(pkt); err != nil {
				return fmt.Errorf("bench: stalled send: %w", err)
			}
			sent++
		}
		if err := waitDispatched(ctx, rcv, in0+uint64(sent)); err != nil {
			return err
		}
	}
	rep.HeapAfterBytes = heapAfterGC()
	rep.HeapGrowthBytes = int64(rep.HeapAfterBytes) - int64(rep.HeapBeforeBytes)
	rep.Dispatched = rcv.datagramsIn() - in0
	rep.MuxDrops = subCounts(rcv.muxDrops(), d0)
	return nil
}

// waitDispatched polls until the receiver has read want datagrams in all.
func waitDispatched(ctx context.Context, rcv receiver, want uint64) error {
	limit := time.Now().Add(stalledChunkWait)
	t := time.NewTicker(time.Millisecond)
	defer t.Stop()
	for rcv.datagramsIn() < want {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case now := <-t.C:
			if now.After(limit) {
				return fmt.Errorf("bench: stalled session: receiver read %d of %d datagrams within %v (lost in the kernel?)",
					rcv.datagramsIn(), want, stalledChunkWait)
			}
		}
	}
	return nil
}
