package exabgp

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// ErrNotEvent is returned by ParseEvent for a line that is no exaBGP event.
var ErrNotEvent = errors.New("not an exabgp event")

// Message is one exaBGP JSON event, decoded enough to normalise it. Parts
// whose shape varies by version or family stay json.RawMessage.
type Message struct {
	Version string      `json:"exabgp"`
	Time    json.Number `json:"time"`
	Host    string      `json:"host"`
	PID     int64       `json:"pid"`
	PPID    int64       `json:"ppid"`
	Counter uint64      `json:"counter"`
	Type    string      `json:"type"`
	Header  string      `json:"header"`
	Body    string      `json:"body"`
	// Notification is set at the top level only on exaBGP's own shutdown.
	Notification json.RawMessage `json:"notification"`
	Neighbor     *Neighbor       `json:"neighbor"`

	// Repaired is set when the line was invalid JSON (4.2's `""ipv4""`) and
	// was repaired before decoding.
	Repaired bool `json:"-"`
}

// Neighbor is the "neighbor" object of every per-session event.
type Neighbor struct {
	Address struct {
		Local string `json:"local"`
		Peer  string `json:"peer"`
	} `json:"address"`
	ASN struct {
		Local uint32 `json:"local"`
		Peer  uint32 `json:"peer"`
	} `json:"asn"`
	// RouterID is exaBGP 5.x's configured (local) router-id of the session.
	RouterID  string `json:"router-id"`
	Direction string `json:"direction"`
	// State is the session state (type state) or the FSM state (type fsm).
	State  string `json:"state"`
	Reason string `json:"reason"`
	// Code and Name describe a signal (type signal).
	Code json.RawMessage `json:"code"`
	Name string          `json:"name"`

	Message      *UpdateMessage  `json:"message"`
	Open         json.RawMessage `json:"open"`
	Negotiated   json.RawMessage `json:"negotiated"`
	Notification json.RawMessage `json:"notification"`
	RouteRefresh json.RawMessage `json:"route-refresh"`
	Operational  json.RawMessage `json:"operational"`
}

// UpdateMessage is neighbor.message: a parsed UPDATE, an End-of-RIB, or (with
// the `packets` api option) the raw category/header/body of any message.
type UpdateMessage struct {
	Update *Update `json:"update"`
	EOR    *struct {
		AFI  string `json:"afi"`
		SAFI string `json:"safi"`
	} `json:"eor"`
	Category *int   `json:"category"`
	Header   string `json:"header"`
	Body     string `json:"body"`
}

// Update holds attributes and NLRI. Announce is family → next hop → NLRIs;
// Withdraw is family → NLRIs. An NLRI is an object, or a bare prefix string
// in compact mode (api.compact).
type Update struct {
	Attribute map[string]json.RawMessage              `json:"attribute"`
	Announce  map[string]map[string][]json.RawMessage `json:"announce"`
	Withdraw  map[string][]json.RawMessage            `json:"withdraw"`
}

// Timestamp is exaBGP's event time, if it sent one.
func (m *Message) Timestamp() (time.Time, bool) {
	if m.Time == "" {
		return time.Time{}, false
	}
	// Parse the decimal text, not a float64, to keep exaBGP's microseconds exact.
	secs, frac, _ := strings.Cut(m.Time.String(), ".")
	sec, err := strconv.ParseInt(secs, 10, 64)
	if err != nil || sec <= 0 || sec > 1<<40 {
		return time.Time{}, false
	}
	if len(frac) > 9 {
		frac = frac[:9]
	}
	var nsec int64
	if frac != "" {
		nsec, err = strconv.ParseInt(frac+strings.Repeat("0", 9-len(frac)), 10, 64)
		if err != nil || nsec < 0 {
			return time.Time{}, false
		}
	}
	return time.Unix(sec, nsec).UTC(), true
}

// 4.2.x quotes some strings twice (refresh and operational events):
// `"afi": ""ipv4""`. It also prints an operational router-id unquoted.
var (
	doubleQuoted = regexp.MustCompile(`""([^"\\]*)""`)
	bareIPv4     = regexp.MustCompile(`(:\s*)([0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3})(\s*[,}])`)
)

// ParseEvent decodes one JSON event line. Invalid JSON of a shape exaBGP is
// known to produce is repaired (Message.Repaired); anything else is an error
// and the caller keeps the line raw.
func ParseEvent(line []byte) (*Message, error) {
	line = bytes.TrimSpace(line)
	if len(line) == 0 || line[0] != '{' {
		return nil, ErrNotEvent
	}
	m, err := decodeMessage(line)
	if err != nil {
		fixed := doubleQuoted.ReplaceAll(line, []byte(`"$1"`))
		fixed = bareIPv4.ReplaceAll(fixed, []byte(`$1"$2"$3`))
		if bytes.Equal(fixed, line) {
			return nil, err
		}
		m2, err2 := decodeMessage(fixed)
		if err2 != nil {
			return nil, err
		}
		m2.Repaired = true
		m = m2
	}
	if m.Version == "" || m.Type == "" {
		return nil, ErrNotEvent
	}
	return m, nil
}

func decodeMessage(b []byte) (*Message, error) {
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	var m Message
	if err := d.Decode(&m); err != nil {
		return nil, fmt.Errorf("decode event: %w", err)
	}
	if d.More() {
		return nil, errors.New("decode event: trailing data")
	}
	return &m, nil
}
