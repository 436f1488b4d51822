package sfu

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/pion/webrtc/v4"
)

// awaitGathering sees a gather complete even when the completion callback
// never reaches its promise (the race with an ICE restart's gather it exists
// for; TestICERestart* run the restarts), and reports a timeout and a stop as
// their errors.
func TestAwaitGathering(t *testing.T) {
	pc := newClientPC(t)
	if _, err := pc.AddTransceiverFromKind(webrtc.RTPCodecTypeVideo, webrtc.RTPTransceiverInit{Direction: webrtc.RTPTransceiverDirectionRecvonly}); err != nil {
		t.Fatal(err)
	}

	// Nothing gathers before SetLocalDescription.
	never := make(chan struct{})
	if err := awaitGathering(pc, never, 20*time.Millisecond, nil); !errors.Is(err, errGatherTimeout) {
		t.Fatalf("before SetLocalDescription: %v, want errGatherTimeout", err)
	}
	stop := make(chan struct{})
	close(stop)
	if err := awaitGathering(pc, never, time.Minute, stop); !errors.Is(err, ErrClosed) {
		t.Fatalf("stopped: %v, want ErrClosed", err)
	}

	// A gather whose completion callback never reaches the promise is seen
	// by its state (an ICE restart's, in the race; here a missed promise).
	offer, err := pc.CreateOffer(nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := pc.SetLocalDescription(offer); err != nil {
		t.Fatal(err)
	}
	if err := awaitGathering(pc, never, 10*time.Second, nil); err != nil {
		t.Fatalf("gather with a missed promise: %v", err)
	}
	if pc.ICEGatheringState() != webrtc.ICEGatheringStateComplete {
		t.Fatalf("returned in state %s", pc.ICEGatheringState())
	}
	if !strings.Contains(pc.LocalDescription().SDP, "a=candidate:") {
		t.Fatalf("complete without candidates:\n%s", pc.LocalDescription().SDP)
	}
}
