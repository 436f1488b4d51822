package sfu

import (
	"errors"
	"time"

	"github.com/pion/webrtc/v4"
)

// errGatherTimeout: the mux gave no candidates in Config.GatherTimeout.
var errGatherTimeout = errors.New("sfu: candidate gathering timed out")

// gatherPoll is how often awaitGathering looks at the gathering state when
// the completion callback was missed.
const gatherPoll = 5 * time.Millisecond

// awaitGathering waits until pc's candidate gathering is complete, the
// timeout passes (errGatherTimeout) or stop is closed (ErrClosed). promise
// is webrtc.GatheringCompletePromise(pc), taken before SetLocalDescription.
//
// The promise alone can miss a gather that is already running when it is
// taken, as an ICE restart's is (pion restarts the agent and gathers inside
// SetRemoteDescription of a restart offer, or CreateOffer with ICERestart):
// pion's candidate callback loads the completion handler before it marks the
// gatherer complete, so a promise registered between the two sees
// "gathering" and is never called. The state is polled as well: once the
// restart has begun gathering, "complete" can only mean this gather.
func awaitGathering(pc *webrtc.PeerConnection, promise <-chan struct{}, timeout time.Duration, stop <-chan struct{}) error {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	poll := time.NewTicker(gatherPoll)
	defer poll.Stop()
	for {
		select {
		case <-promise:
			return nil
		case <-poll.C:
			if pc.ICEGatheringState() == webrtc.ICEGatheringStateComplete {
				return nil
			}
		case <-deadline.C:
			return errGatherTimeout
		case <-stop:
			return ErrClosed
		}
	}
}
