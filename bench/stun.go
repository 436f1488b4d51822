package bench

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"github.com/pion/stun/v3"
)

// errNotBindingRequest and errWrongUfrag say why a session refused to answer
// a STUN message; integrity failures come from pion/stun.
var (
	errNotBindingRequest = errors.New("bench: not a STUN Binding request")
	errWrongUfrag        = errors.New("bench: USERNAME names another ufrag")
)

// bindingRequest builds an ICE connectivity check as a controlling client
// would send it: USERNAME "<server ufrag>:<client ufrag>", signed with the
// server's password, with a FINGERPRINT.
func bindingRequest(tid [stun.TransactionIDSize]byte, serverUfrag, clientUfrag, serverPwd string) ([]byte, error) {
	m, err := stun.Build(
		stun.BindingRequest,
		stun.NewTransactionIDSetter(tid),
		stun.NewUsername(serverUfrag+":"+clientUfrag),
		stun.NewShortTermIntegrity(serverPwd),
		stun.Fingerprint,
	)
	if err != nil {
		return nil, fmt.Errorf("bench: build binding request: %w", err)
	}
	return m.Raw, nil
}

// isSTUN reports whether b looks like STUN by RFC 7983's first byte and the
// magic cookie, without decoding it.
func isSTUN(b []byte) bool { return len(b) >= 20 && b[0] < 4 && stun.IsMessage(b) }

// answerBinding checks a Binding request the way an ICE agent does (USERNAME
// names one of our ufrags, MESSAGE-INTEGRITY with that ufrag's password,
// FINGERPRINT) and returns the success response to send to from. pwdOf
// returns the password of a local ufrag. Runs once per check, not per media
// packet, so it may allocate.
func answerBinding(req []byte, from netip.AddrPort, pwdOf func(ufrag string) (string, bool)) ([]byte, error) {
	m := &stun.Message{Raw: append([]byte(nil), req...)}
	if err := m.Decode(); err != nil {
		return nil, fmt.Errorf("bench: decode STUN: %w", err)
	}
	if m.Type != stun.BindingRequest {
		return nil, errNotBindingRequest
	}
	var user stun.Username
	if err := user.GetFrom(m); err != nil {
		return nil, fmt.Errorf("bench: USERNAME: %w", err)
	}
	local, _, _ := strings.Cut(user.String(), ":")
	pwd, ok := pwdOf(local)
	if !ok {
		return nil, errWrongUfrag
	}
	if err := stun.NewShortTermIntegrity(pwd).Check(m); err != nil {
		return nil, fmt.Errorf("bench: MESSAGE-INTEGRITY: %w", err)
	}
	if err := stun.Fingerprint.Check(m); err != nil {
		return nil, fmt.Errorf("bench: FINGERPRINT: %w", err)
	}
	resp, err := stun.Build(
		stun.NewTransactionIDSetter(m.TransactionID),
		stun.BindingSuccess,
		&stun.XORMappedAddress{IP: from.Addr().Unmap().AsSlice(), Port: int(from.Port())},
		stun.NewShortTermIntegrity(pwd),
		stun.Fingerprint,
	)
	if err != nil {
		return nil, fmt.Errorf("bench: build binding response: %w", err)
	}
	return resp.Raw, nil
}

// checkBindingResponse reports whether b is the signed success response to
// the request with transaction id tid.
func checkBindingResponse(b []byte, tid [stun.TransactionIDSize]byte, serverPwd string) bool {
	if !isSTUN(b) {
		return false
	}
	m := &stun.Message{Raw: append([]byte(nil), b...)}
	if m.Decode() != nil || m.Type != stun.BindingSuccess || m.TransactionID != tid {
		return false
	}
	return stun.NewShortTermIntegrity(serverPwd).Check(m) == nil && stun.Fingerprint.Check(m) == nil
}
