package agent

import (
	"net"
	"os"
)

// SDNotify sends a state ("READY=1", "RELOADING=1", "STOPPING=1") to the
// service manager when it asked for notifications ($NOTIFY_SOCKET, set for
// Type=notify units); elsewhere it does nothing. It is the whole of the
// sd_notify protocol bgpedge needs, so no library is pulled in for it.
func SDNotify(state string) error {
	path := os.Getenv("NOTIFY_SOCKET")
	if path == "" {
		return nil
	}
	if path[0] == '@' {
		path = "\x00" + path[1:] // abstract socket
	}
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return err
	}
	defer c.Close()
	_, err = c.Write([]byte(state))
	return err
}
