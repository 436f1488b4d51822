package bench

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/pion/rtp"
	"github.com/pion/rtp/codecs"
	"github.com/pion/webrtc/v4"
	"github.com/pion/webrtc/v4/pkg/media/ivfreader"
	"github.com/pion/webrtc/v4/pkg/media/oggreader"
)

// Media files the load publishers replay, read whole into memory once per
// client process (and shared read-only by its publishers), then looped.

// Bounds on media files.
const (
	maxMediaFileBytes = 64 << 20
	maxMediaFrames    = 100_000
	loadMTU           = 1100 // RTP payload before the trailer
)

// loadMedia is what every publisher sends.
type loadMedia struct {
	VideoBitrate int    `json:"video_bitrate"`
	FPS          int    `json:"fps"`
	Audio        bool   `json:"audio"`
	Simulcast    bool   `json:"simulcast"`
	VideoFile    string `json:"video_file,omitempty"`
	AudioFile    string `json:"audio_file,omitempty"`
	// Idle publishers connect (ICE, DTLS) and send nothing: RunIdleMemory.
	Idle bool `json:"idle,omitempty"`
}

// mediaFrame is one frame (video) or packet (audio) of a file, with its
// presentation time from the file's start.
type mediaFrame struct {
	data []byte
	pts  time.Duration
}

// mediaFile is a whole file's frames.
type mediaFile struct {
	mime   string
	clock  uint32
	frames []mediaFrame
	length time.Duration // one loop: the last frame's pts plus one frame
}

// readIVF reads an IVF file (VP8, VP9 or AV1).
func readIVF(path string) (*mediaFile, error) {
	b, err := readBounded(path)
	if err != nil {
		return nil, err
	}
	rd, hdr, err := ivfreader.NewWith(bytes.NewReader(b))
	if err != nil {
		return nil, fmt.Errorf("bench: %s: %w", path, err)
	}
	f := &mediaFile{clock: 90000}
	switch hdr.FourCC {
	case "VP80":
		f.mime = webrtc.MimeTypeVP8
	case "VP90":
		f.mime = webrtc.MimeTypeVP9
	case "AV01":
		f.mime = webrtc.MimeTypeAV1
	default:
		return nil, fmt.Errorf("bench: %s: IVF codec %q: want VP80, VP90 or AV01", path, hdr.FourCC)
	}
	if hdr.TimebaseDenominator == 0 || hdr.TimebaseNumerator == 0 {
		return nil, fmt.Errorf("bench: %s: IVF timebase %d/%d", path, hdr.TimebaseNumerator, hdr.TimebaseDenominator)
	}
	for len(f.frames) < maxMediaFrames {
		data, fh, err := rd.ParseNextFrame()
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) && len(f.frames) > 0 {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("bench: %s: frame %d: %w", path, len(f.frames), err)
		}
		// ivfreader (v4.2.19) reports the frame's pts times den/num (its
		// "Timestamp"); the pts is in units of num/den seconds.
		tb := float64(hdr.TimebaseNumerator) / float64(hdr.TimebaseDenominator)
		pts := time.Duration(float64(fh.Timestamp) * tb * tb * float64(time.Second))
		f.frames = append(f.frames, mediaFrame{data: data, pts: pts})
	}
	return f.finish(path, 33*time.Millisecond)
}

// readOgg reads an Ogg/Opus file: each page's payload is one packet, timed
// by the page's granule position (48 kHz), as pion's play-from-disk does.
func readOgg(path string) (*mediaFile, error) {
	b, err := readBounded(path)
	if err != nil {
		return nil, err
	}
	rd, _, err := oggreader.NewWith(bytes.NewReader(b))
	if err != nil {
		return nil, fmt.Errorf("bench: %s: %w", path, err)
	}
	f := &mediaFile{mime: webrtc.MimeTypeOpus, clock: 48000}
	var first uint64
	for len(f.frames) < maxMediaFrames {
		data, ph, err := rd.ParseNextPage()
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) && len(f.frames) > 0 {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("bench: %s: page %d: %w", path, len(f.frames), err)
		}
		if ph.GranulePosition == 0 || bytes.HasPrefix(data, []byte("OpusTags")) {
			continue // the comment header
		}
		if len(f.frames) == 0 {
			first = ph.GranulePosition
		}
		pts := time.Duration(ph.GranulePosition-first) * time.Second / 48000
		f.frames = append(f.frames, mediaFrame{data: data, pts: pts})
	}
	return f.finish(path, 20*time.Millisecond)
}

func (f *mediaFile) finish(path string, lastFrame time.Duration) (*mediaFile, error) {
	if len(f.frames) == 0 {
		return nil, fmt.Errorf("bench: %s: no frames", path)
	}
	f.length = f.frames[len(f.frames)-1].pts + lastFrame
	return f, nil
}

func readBounded(path string) ([]byte, error) {
	fh, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	defer fh.Close()
	b, err := io.ReadAll(io.LimitReader(fh, maxMediaFileBytes+1))
	if err != nil {
		return nil, fmt.Errorf("bench: %s: %w", path, err)
	}
	if len(b) > maxMediaFileBytes {
		return nil, fmt.Errorf("bench: %s: larger than %d bytes", path, maxMediaFileBytes)
	}
	return b, nil
}

// payloaderFor packetizes one codec's frames.
func payloaderFor(mime string) rtp.Payloader {
	switch mime {
	case webrtc.MimeTypeVP9:
		return &codecs.VP9Payloader{}
	case webrtc.MimeTypeAV1:
		return &codecs.AV1Payloader{}
	case webrtc.MimeTypeOpus:
		return &codecs.OpusPayloader{}
	default:
		return &codecs.VP8Payloader{EnablePictureID: true}
	}
}

// synthVideoPlan is the synthetic video's shape at a bitrate: frames of
// perFrame packets of size payload bytes (trailer included), sent back to
// back as an encoder's packetizer would.
func synthVideoPlan(bitrate, fps int) (perFrame, size int) {
	perFrameBytes := max(bitrate/8/fps, 1)
	perFrame = max((perFrameBytes+loadMTU-1)/loadMTU, 1)
	return perFrame, max(perFrameBytes/perFrame, 4+loadTrailerLen)
}

// Synthetic Opus: 50 packets/s of 80 bytes (32 kbit/s).
const (
	synthAudioPPS  = 50
	synthAudioSize = 80
)
