//go:build !linux

package mux

import "net"

// reusePortBalances is false: elsewhere SO_REUSEPORT does not spread unicast
// datagrams over sockets, so the mux opens one.
const reusePortBalances = false

func listenUDP(addr *net.UDPAddr, bufSize int) (*net.UDPConn, bool, error) {
	uc, err := net.ListenUDP("udp", addr)
	if err != nil {
		return nil, false, err
	}
	if bufSize > 0 {
		_ = uc.SetReadBuffer(bufSize)
		_ = uc.SetWriteBuffer(bufSize)
	}
	la := uc.LocalAddr().(*net.UDPAddr)
	return uc, la.IP.To4() == nil, nil
}
