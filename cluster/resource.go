package cluster

import (
	"crypto/rand"
	"encoding/base64"
	"strings"

	"github.com/oneport/oneport/mux"
)

// Resource ids (the {id} of /whip/{room}/{id}) carry their owner's tag, so
// PATCH and DELETE reach the owner whatever node they arrive at, without a
// directory lookup: "r", the tag with "+" and "/" written as "-" and "_"
// (URL-path safe), then 128 random bits in base64url.

const resourceFormat = 'r'

// ResourceIDLen is the length of the ids NewResourceID makes.
const ResourceIDLen = 1 + mux.TagLen + 22

var tagToURL = strings.NewReplacer("+", "-", "/", "_")
var tagFromURL = strings.NewReplacer("-", "+", "_", "/")

// NewResourceID returns a fresh resource id carrying tag, for
// sfu.Config.NewID.
func NewResourceID(tag string) string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails (Go >= 1.24)
	return string(resourceFormat) + tagToURL.Replace(tag) + base64.RawURLEncoding.EncodeToString(b[:])
}

// ResourceTag returns the owner tag an id made by NewResourceID carries.
func ResourceTag(id string) (string, bool) {
	if len(id) != ResourceIDLen || id[0] != resourceFormat {
		return "", false
	}
	tag := tagFromURL.Replace(id[1 : 1+mux.TagLen])
	if !mux.IsIceChars(tag) {
		return "", false
	}
	return tag, true
}
