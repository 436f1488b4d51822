package mux

import (
	"bytes"
	"encoding/hex"
	"strings"
	"testing"

	"github.com/pion/stun/v3"
)

// rfc5769Request is RFC 5769 section 2.1's sample request: USERNAME
// "evtj:h6vY", MESSAGE-INTEGRITY, FINGERPRINT.
var rfc5769Request = mustHex(`
000100582112a442b7e7a701bc34d686fa87dfae
802200105354554e207465737420636c69656e74
002400046e0001ff80290008932ff9b151263b36
000600096576746a3a68367659202020
00080014 9aeaa70cbfd8cb56781ef2b5b2d3f249c1b571a2
80280004e57a3bcf`)

// rfc5769LongTermRequest is section 2.4's request: USERNAME
// "<U+30DE><U+30C8><U+30EA><U+30C3><U+30AF><U+30B9>" (no ':'), with
// NONCE and REALM.
var rfc5769LongTermRequest = mustHex(`
00010060 2112a442 78ad3433 c6ad72c0 29da412e
00060012 e3839ee3 8388e383 aae38383 e382afe3 82b90000
0015001c 662f2f34 39396b39 35346436 4f4c3334 6f4c3946 53547679 36347341
0014000b 6578616d 706c652e 6f726700
00080014 f6702465 6dd64a3e 02b8e0b1 d9f0b115 ca3787c1`)

func mustHex(s string) []byte {
	s = strings.Join(strings.Fields(s), "")
	b, err := hex.DecodeString(s)
	if err != nil {
		panic(err)
	}
	return b
}

func bindingRequest(t testing.TB, username string, extra ...stun.Setter) []byte {
	t.Helper()
	setters := []stun.Setter{stun.TransactionID, stun.BindingRequest}
	if username != "" {
		setters = append(setters, stun.NewUsername(username))
	}
	setters = append(setters, extra...)
	m, err := stun.Build(setters...)
	if err != nil {
		t.Fatal(err)
	}
	return m.Raw
}

func TestClassify(t *testing.T) {
	stunHdr := bindingRequest(t, "a:b")
	tests := []struct {
		name string
		b    []byte
		want Class
	}{
		{"empty", nil, ClassOther},
		{"stun", stunHdr, ClassSTUN},
		{"stun without cookie", append([]byte{0, 1, 0, 0, 1, 2, 3, 4}, make([]byte, 12)...), ClassOther},
		{"stun short", stunHdr[:19], ClassOther},
		{"dtls low", []byte{20, 0xfe, 0xfd}, ClassDTLS},
		{"dtls high", []byte{63}, ClassDTLS},
		{"zrtp", []byte{16}, ClassOther},
		{"turn channel", []byte{64, 0}, ClassOther},
		{"rtp low", []byte{128, 96}, ClassRTP},
		{"rtcp", []byte{0x80, 200}, ClassRTP},
		{"rtp high", []byte{191}, ClassRTP},
		{"above rtp", []byte{192}, ClassOther},
		{"four", []byte{4, 0, 0, 0, 0x21, 0x12, 0xa4, 0x42}, ClassOther},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Classify(tt.b); got != tt.want {
				t.Fatalf("Classify = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestParseSTUN(t *testing.T) {
	resp, err := stun.Build(stun.TransactionID, stun.BindingSuccess, stun.NewUsername("x:y"))
	if err != nil {
		t.Fatal(err)
	}
	withIntegrity := bindingRequest(t, "srvUfrag:cli", stun.NewShortTermIntegrity("pwd"), stun.Fingerprint)
	badLen := bytes.Clone(withIntegrity)
	badLen[3] += 4 // length beyond the datagram
	oddLen := bytes.Clone(withIntegrity)
	oddLen[3]-- // not a multiple of 4
	overrun := bindingRequest(t, "abc:def")
	overrun[22], overrun[23] = 0x01, 0x00 // USERNAME length 256 > attribute area
	emptyUser := mustHex("000100042112a442000000000000000000000000 00060000")
	tests := []struct {
		name  string
		b     []byte
		kind  StunKind
		ufrag string
	}{
		{"rfc5769 short-term", rfc5769Request, StunBinding, "evtj"},
		{"rfc5769 long-term, no colon", rfc5769LongTermRequest, StunBinding, "\u30de\u30c8\u30ea\u30c3\u30af\u30b9"},
		{"pion request", withIntegrity, StunBinding, "srvUfrag"},
		{"no colon", bindingRequest(t, "lonely"), StunBinding, "lonely"},
		{"empty local part", bindingRequest(t, ":remote"), StunBinding, ""},
		{"probe", bindingRequest(t, ""), StunBindingProbe, ""},
		{"response", resp.Raw, StunOther, ""},
		{"length past end", badLen, StunInvalid, ""},
		{"length not aligned", oddLen, StunInvalid, ""},
		{"attribute overrun", overrun, StunInvalid, ""},
		{"empty username", emptyUser, StunInvalid, ""},
		{"truncated header", withIntegrity[:10], StunInvalid, ""},
		{"rtp", []byte{0x80, 0x60, 0, 1}, StunInvalid, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			kind, u := ParseSTUN(tt.b)
			if kind != tt.kind || string(u) != tt.ufrag {
				t.Fatalf("ParseSTUN = %v %q, want %v %q", kind, u, tt.kind, tt.ufrag)
			}
		})
	}
}

func TestParseSTUNAllocs(t *testing.T) {
	b := bindingRequest(t, "srvUfrag:cli", stun.NewShortTermIntegrity("pwd"), stun.Fingerprint)
	if n := testing.AllocsPerRun(1000, func() { ParseSTUN(b) }); n != 0 {
		t.Fatalf("ParseSTUN allocates %v per call", n)
	}
}

func TestNewUfrag(t *testing.T) {
	seen := map[string]bool{}
	for i := 0; i < 1000; i++ {
		u, err := NewUfrag("aTAG1")
		if err != nil {
			t.Fatal(err)
		}
		if len(u) != 5+UfragRandomChars || !strings.HasPrefix(u, "aTAG1") || seen[u] {
			t.Fatalf("bad or repeated ufrag %q", u)
		}
		for j := 0; j < len(u); j++ {
			if !isIceChar(u[j]) {
				t.Fatalf("ufrag %q has a non ice-char", u)
			}
		}
		seen[u] = true
	}
	if _, err := NewUfrag("bad:prefix"); err == nil {
		t.Fatal("prefix with ':' accepted")
	}
	if _, err := NewUfrag(strings.Repeat("a", MaxUfragLen)); err == nil {
		t.Fatal("overlong prefix accepted")
	}
	if p := NewPassword(); len(p) != 32 {
		t.Fatalf("password %q", p)
	}
}

// FuzzParseSTUN checks that the in-place reader never panics, that the ufrag
// it returns lies inside the datagram, and that it agrees with pion's full
// decoder on every message pion accepts.
func FuzzParseSTUN(f *testing.F) {
	f.Add(rfc5769Request)
	f.Add(rfc5769LongTermRequest)
	f.Add(rfc5769Request[:30])
	f.Add(bindingRequest(f, "srv:cli", stun.NewShortTermIntegrity("pwd"), stun.Fingerprint))
	f.Add(bindingRequest(f, ""))
	f.Add([]byte{0, 1, 0, 4, 0x21, 0x12, 0xa4, 0x42, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 6, 0xff, 0xff})
	f.Add([]byte{0x80, 0x60, 0, 1})
	f.Add([]byte{22, 0xfe, 0xfd})
	f.Fuzz(func(t *testing.T, b []byte) {
		kind, u := ParseSTUN(b)
		if len(u) > 0 {
			if kind != StunBinding || bytes.IndexByte(u, ':') >= 0 || len(u) > maxUsernameLen {
				t.Fatalf("bad ufrag %q kind %v", u, kind)
			}
		}
		var m stun.Message
		// RFC 7983 demultiplexes by the first byte; pion's decoder ignores
		// the two top bits of the type, so only compare real STUN.
		if len(b) == 0 || b[0] > 3 {
			return
		}
		if err := m.UnmarshalBinary(b); err != nil || len(m.Raw) != len(b) {
			return
		}
		if m.Type != stun.BindingRequest {
			if kind == StunBinding || kind == StunBindingProbe {
				t.Fatalf("pion says %v, we say %v", m.Type, kind)
			}
			return
		}
		var user stun.Username
		if err := user.GetFrom(&m); err != nil {
			return
		}
		if kind != StunBinding && len(user) > 0 && len(user) <= maxUsernameLen {
			t.Fatalf("pion found USERNAME %q, we say %v", user, kind)
		}
		if kind == StunBinding && !bytes.HasPrefix(user, u) {
			t.Fatalf("pion USERNAME %q, our ufrag %q", user, u)
		}
	})
}
