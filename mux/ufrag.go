package mux

import (
	"crypto/rand"
	"fmt"
)

// MaxUfragLen is the longest local ufrag a session may have. Ours are 16 to
// 21 characters; pion's are 16. Longer ones are refused by GetConn so the
// ufrag table can use a fixed-size, comparable key.
const MaxUfragLen = 32

// ufragKey is a fixed-size, comparable ufrag: lookups build it on the stack.
type ufragKey struct {
	n uint8
	b [MaxUfragLen]byte
}

// makeUfragKey copies u into a key; ok is false when u is empty or too long.
func makeUfragKey[T string | []byte](u T) (k ufragKey, ok bool) {
	if len(u) == 0 || len(u) > MaxUfragLen {
		return k, false
	}
	k.n = uint8(len(u))
	copy(k.b[:], u)
	return k, true
}

func (k ufragKey) String() string { return string(k.b[:k.n]) }

// iceChars is RFC 8839's ice-char set: ALPHA / DIGIT / "+" / "/". Exactly 64
// characters, so every character carries 6 random bits.
const iceChars = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

// UfragRandomChars is how many random characters NewUfrag appends: 16 * 6 =
// 96 random bits, so two live sessions never share a ufrag.
const UfragRandomChars = 16

// NewUfrag returns prefix followed by UfragRandomChars random ice-chars. The
// prefix (a format character and an owner tag, in a cluster) must itself be
// ice-chars and short enough that the result fits MaxUfragLen.
func NewUfrag(prefix string) (string, error) {
	if len(prefix)+UfragRandomChars > MaxUfragLen {
		return "", fmt.Errorf("mux: ufrag prefix %q too long", prefix)
	}
	if !IsIceChars(prefix) {
		return "", fmt.Errorf("mux: ufrag prefix %q has a character outside ice-chars", prefix)
	}
	return prefix + randomIceChars(UfragRandomChars), nil
}

// NewPassword returns an ICE password of 32 random ice-chars (192 bits;
// RFC 8839 asks for at least 128).
func NewPassword() string { return randomIceChars(32) }

func randomIceChars(n int) string {
	b := make([]byte, n)
	// crypto/rand.Read never fails on supported platforms (Go 1.24+).
	_, _ = rand.Read(b)
	for i := range b {
		b[i] = iceChars[b[i]&63]
	}
	return string(b)
}

// IsIceChars reports whether s is made only of RFC 8839 ice-chars.
func IsIceChars(s string) bool {
	for i := 0; i < len(s); i++ {
		if !isIceChar(s[i]) {
			return false
		}
	}
	return true
}

func isIceChar(c byte) bool {
	return c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '+' || c == '/'
}
