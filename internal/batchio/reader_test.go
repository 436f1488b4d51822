package batchio

import (
	"net"
	"testing"
	"time"
)

func TestReaderBatches(t *testing.T) {
	for _, network := range []string{"udp4", "udp6"} {
		t.Run(network, func(t *testing.T) {
			ip := net.IPv4(127, 0, 0, 1)
			if network == "udp6" {
				ip = net.IPv6loopback
			}
			srv, err := net.ListenUDP(network, &net.UDPAddr{IP: ip})
			if err != nil {
				t.Skipf("no %s loopback: %v", network, err)
			}
			defer srv.Close()
			cl, err := net.ListenUDP(network, &net.UDPAddr{IP: ip})
			if err != nil {
				t.Fatal(err)
			}
			defer cl.Close()
			bufs := make([][]byte, 8)
			for i := range bufs {
				bufs[i] = make([]byte, 100)
			}
			r, err := NewReader(srv, bufs)
			if err != nil {
				t.Fatal(err)
			}
			for i := 0; i < 5; i++ {
				cl.WriteTo([]byte{byte(i), 1, 2}, srv.LocalAddr())
			}
			cl.WriteTo(make([]byte, 150), srv.LocalAddr()) // truncated on Linux
			want := cl.LocalAddr().(*net.UDPAddr).AddrPort()
			got := 0
			srv.SetReadDeadline(time.Now().Add(2 * time.Second))
			for got < 6 {
				n, err := r.Read()
				if err != nil {
					t.Fatal(err)
				}
				for i := 0; i < n; i++ {
					b, from, trunc := r.Datagram(i)
					if from != want {
						t.Fatalf("from %v, want %v", from, want)
					}
					if got < 5 && (len(b) != 3 || b[0] != byte(got) || trunc) {
						t.Fatalf("datagram %d: %v trunc %v", got, b, trunc)
					}
					got++
				}
			}
			dst := srv.LocalAddr().(*net.UDPAddr).AddrPort()
			one := []byte{9}
			if n := testing.AllocsPerRun(100, func() {
				cl.WriteToUDPAddrPort(one, dst)
				if _, err := r.Read(); err != nil {
					t.Fatal(err)
				}
			}); n != 0 {
				t.Fatalf("%v allocs per read", n)
			}
		})
	}
}
