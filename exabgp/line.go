package exabgp

import (
	"bytes"
	"encoding/json"
	"net/netip"
)

// LineKind says which path a line read from exaBGP belongs to.
type LineKind uint8

const (
	// LineEmpty is a blank line; it carries nothing.
	LineEmpty LineKind = iota
	// LineEvent is a JSON event (state, update, open, …): it is spooled.
	LineEvent
	// LineAck is exaBGP's answer to a command: "done", "error", "shutdown"
	// in text, or the 5.x JSON answer object. It belongs to the command path.
	LineAck
	// LineOutput is any other command output (e.g. the answer to "version"):
	// command path, never spooled.
	LineOutput
)

// String is the stable label used in metrics.
func (k LineKind) String() string {
	switch k {
	case LineEmpty:
		return "empty"
	case LineEvent:
		return "event"
	case LineAck:
		return "ack"
	default:
		return "output"
	}
}

// Ack is the meaning of an acknowledgement line.
type Ack uint8

const (
	AckNone Ack = iota
	AckDone
	AckError
	// AckShutdown is exaBGP telling a command it is exiting.
	AckShutdown
)

func (a Ack) String() string {
	switch a {
	case AckDone:
		return "done"
	case AckError:
		return "error"
	case AckShutdown:
		return "shutdown"
	default:
		return "none"
	}
}

// ClassifyLine decides whether a line is an event for the spool or belongs
// to the command path. It runs on the stdin reader's hot path, so for events
// it only looks at a few bytes; only answers (one per command) are decoded.
func ClassifyLine(line []byte) (LineKind, Ack) {
	line = bytes.TrimSpace(line)
	if len(line) == 0 {
		return LineEmpty, AckNone
	}
	if line[0] != '{' {
		switch string(line) {
		case "done":
			return LineAck, AckDone
		case "error":
			return LineAck, AckError
		case "shutdown":
			return LineAck, AckShutdown
		}
		return LineOutput, AckNone
	}
	// Every event starts with the "exabgp" version key (4.x and 5.x alike);
	// 5.x JSON answers start with "answer".
	head := line[1:]
	if len(head) > 48 {
		head = head[:48]
	}
	head = bytes.TrimLeft(head, " \t")
	switch {
	case bytes.HasPrefix(head, []byte(`"exabgp"`)):
		return LineEvent, AckNone
	case bytes.HasPrefix(head, []byte(`"answer"`)):
		// Answers are rare (one per command): decoded, so a message text
		// that happens to contain "done" is not taken for success.
		var a struct {
			Answer string `json:"answer"`
		}
		_ = json.Unmarshal(line, &a)
		switch a.Answer {
		case "done":
			return LineAck, AckDone
		case "shutdown":
			return LineAck, AckShutdown
		default:
			return LineAck, AckError
		}
	}
	return LineOutput, AckNone
}

// peerOf extracts the neighbor's peer address from an event line with a byte
// scan, for the record key, without decoding the JSON. It returns nil for
// events without a neighbor (exaBGP's own shutdown notification).
func peerOf(line []byte) []byte {
	i := bytes.Index(line, []byte(`"peer"`))
	if i < 0 {
		return nil
	}
	rest := line[i+len(`"peer"`):]
	j := bytes.IndexByte(rest, '"')
	if j < 0 || j > 4 { // only `: "` or `:"` may sit between key and value
		return nil
	}
	rest = rest[j+1:]
	k := bytes.IndexByte(rest, '"')
	if k <= 0 || k > 64 {
		return nil
	}
	return rest[:k]
}

// stateUpPeer reports the neighbor of a `state up` event, which triggers the
// replay of injected routes towards it. Cheap byte checks first.
func stateUpPeer(line []byte) (string, bool) {
	if !bytes.Contains(line, []byte(`"state"`)) || !bytes.Contains(line, []byte(`"up"`)) {
		return "", false
	}
	m, err := ParseEvent(line)
	if err != nil || m.Type != "state" || m.Neighbor == nil || m.Neighbor.State != "up" {
		return "", false
	}
	// The address goes into a command line ("neighbor <addr> announce ..."):
	// only a valid address is used, in the form the journal keeps.
	a, err := netip.ParseAddr(m.Neighbor.Address.Peer)
	if err != nil {
		return "", false
	}
	return a.String(), true
}
