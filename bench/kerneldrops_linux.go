package bench

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// kernelDrops sums the "drops" column of /proc/net/udp (udp6) over the
// sockets bound to port: datagrams the kernel discarded because a socket's
// receive buffer was full, i.e. because the receiver did not read fast
// enough. ok is false when the file cannot be read.
func kernelDrops(network string, port uint16) (drops uint64, ok bool) {
	path := "/proc/net/udp"
	if network == "udp6" {
		path = "/proc/net/udp6"
	}
	f, err := os.Open(path)
	if err != nil {
		return 0, false
	}
	defer f.Close()
	suffix := fmt.Sprintf(":%04X", port)
	sc := bufio.NewScanner(f)
	sc.Scan() // header
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 13 || !strings.HasSuffix(fields[1], suffix) {
			continue
		}
		if n, err := strconv.ParseUint(fields[12], 10, 64); err == nil {
			drops += n
		}
	}
	return drops, sc.Err() == nil
}
