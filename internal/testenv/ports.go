package testenv

import (
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
)

// FreePorts returns n distinct TCP ports on host that were free a moment
// ago, for servers a test starts as separate processes. They are held open
// together, so none is handed out twice, and taken below the kernel's
// ephemeral range: a port from there (what ":0" gives) can become the source
// port of any outgoing connection before the server binds it, and tests of
// other packages, run in parallel, make such connections by the thousand.
func FreePorts(t testing.TB, host string, n int) []int {
	t.Helper()
	lo := 32768
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			if v, err := strconv.Atoi(f[0]); err == nil && v > 12000 {
				lo = v
			}
		}
	}
	ports := make([]int, 0, n)
	for tries := 0; len(ports) < n; tries++ {
		if tries == 1000 {
			t.Fatalf("find %d free ports on %s in [10000, %d): found %v", n, host, lo, ports)
		}
		port := 10000 + rand.IntN(lo-10000)
		l, err := net.Listen("tcp", net.JoinHostPort(host, strconv.Itoa(port)))
		if err != nil {
			continue
		}
		defer l.Close()
		ports = append(ports, port)
	}
	return ports
}
