package bmp

import (
	"strconv"
)

// Names for the registries the JSON events spell out. Unknown values get a
// stable generated name rather than an error: new code points must not
// stop decoding.

func originName(o uint8) string {
	switch o {
	case 0:
		return "igp"
	case 1:
		return "egp"
	case 2:
		return "incomplete"
	}
	return "unknown-" + strconv.Itoa(int(o))
}

func peerTypeName(t uint8) string {
	switch t {
	case PeerTypeGlobal:
		return "global"
	case PeerTypeRDInstance:
		return "rd-instance"
	case PeerTypeLocalInstance:
		return "local-instance"
	case PeerTypeLocRIB:
		return "loc-rib"
	}
	return "unknown-" + strconv.Itoa(int(t))
}

// capabilityName follows the IANA "Capability Codes" registry.
func capabilityName(c uint8) string {
	switch c {
	case 1:
		return "multiprotocol"
	case 2:
		return "route-refresh"
	case 3:
		return "outbound-route-filtering"
	case 5:
		return "extended-next-hop"
	case 6:
		return "extended-message"
	case 7:
		return "bgpsec"
	case 8:
		return "multiple-labels"
	case 9:
		return "bgp-role"
	case 64:
		return "graceful-restart"
	case 65:
		return "4-octet-as"
	case 67:
		return "dynamic-capability"
	case 69:
		return "add-path"
	case 70:
		return "enhanced-route-refresh"
	case 71:
		return "long-lived-graceful-restart"
	case 73:
		return "fqdn"
	case 74:
		return "bfd"
	case 75:
		return "software-version"
	case 128:
		return "route-refresh-cisco"
	}
	return "unknown-" + strconv.Itoa(int(c))
}

func notificationName(code uint8) string {
	switch code {
	case 1:
		return "message-header-error"
	case 2:
		return "open-message-error"
	case 3:
		return "update-message-error"
	case 4:
		return "hold-timer-expired"
	case 5:
		return "fsm-error"
	case 6:
		return "cease"
	case 7:
		return "route-refresh-message-error"
	}
	return "unknown-" + strconv.Itoa(int(code))
}

func notificationSubcodeName(code, sub uint8) string {
	if code == 6 { // Cease subcodes (RFC 4486, RFC 8203, RFC 9003)
		switch sub {
		case 1:
			return "maximum-prefixes-reached"
		case 2:
			return "administrative-shutdown"
		case 3:
			return "peer-de-configured"
		case 4:
			return "administrative-reset"
		case 5:
			return "connection-rejected"
		case 6:
			return "other-configuration-change"
		case 7:
			return "connection-collision-resolution"
		case 8:
			return "out-of-resources"
		case 9:
			return "hard-reset"
		case 10:
			return "bfd-down"
		}
	}
	return ""
}

// peerDownReasonName follows RFC 7854 §4.9 and RFC 9069 (reason 6).
func peerDownReasonName(r uint8) string {
	switch r {
	case 1:
		return "local-notification"
	case 2:
		return "local-no-notification"
	case 3:
		return "remote-notification"
	case 4:
		return "remote-no-notification"
	case 5:
		return "peer-de-configured"
	case 6:
		return "local-system-closed"
	}
	return "unknown-" + strconv.Itoa(int(r))
}

// statName follows the IANA "BMP Statistics Types" registry (RFC 7854, RFC 8671).
func statName(t uint16) string {
	switch t {
	case 0:
		return "rejected-prefixes"
	case 1:
		return "duplicate-prefix-advertisements"
	case 2:
		return "duplicate-withdraws"
	case 3:
		return "updates-invalidated-cluster-list-loop"
	case 4:
		return "updates-invalidated-as-path-loop"
	case 5:
		return "updates-invalidated-originator-id"
	case 6:
		return "updates-invalidated-as-confed-loop"
	case 7:
		return "routes-adj-rib-in"
	case 8:
		return "routes-loc-rib"
	case 9:
		return "routes-adj-rib-in-per-afi-safi"
	case 10:
		return "routes-loc-rib-per-afi-safi"
	case 11:
		return "updates-treated-as-withdraw"
	case 12:
		return "prefixes-treated-as-withdraw"
	case 13:
		return "duplicate-update-messages"
	case 14:
		return "routes-pre-policy-adj-rib-out"
	case 15:
		return "routes-post-policy-adj-rib-out"
	case 16:
		return "routes-pre-policy-adj-rib-out-per-afi-safi"
	case 17:
		return "routes-post-policy-adj-rib-out-per-afi-safi"
	}
	if t >= 65531 {
		return "experimental-" + strconv.Itoa(int(t))
	}
	return "unknown-" + strconv.Itoa(int(t))
}

// statPerFamily reports the stats types whose value is AFI, SAFI and a 64-bit gauge.
func statPerFamily(t uint16) bool { return t == 9 || t == 10 || t == 16 || t == 17 }

// statKnown reports the types whose value layout is defined.
func statKnown(t uint16) bool { return t <= 17 }

// infoTLVName covers Initiation and Peer Up information TLVs (RFC 7854,
// RFC 9069 VRF/table name, RFC 8671/9736 admin label).
func infoTLVName(t uint16) string {
	switch t {
	case 0:
		return "string"
	case 1:
		return "sys-descr"
	case 2:
		return "sys-name"
	case 3:
		return "vrf-table-name"
	case 4:
		return "admin-label"
	}
	return "unknown-" + strconv.Itoa(int(t))
}

func terminationTLVName(t uint16) string {
	switch t {
	case 0:
		return "string"
	case 1:
		return "reason"
	}
	return "unknown-" + strconv.Itoa(int(t))
}

func terminationReasonName(r uint16) string {
	switch r {
	case 0:
		return "administratively-closed"
	case 1:
		return "unspecified"
	case 2:
		return "out-of-resources"
	case 3:
		return "redundant-connection"
	case 4:
		return "permanently-administratively-closed"
	}
	return "unknown-" + strconv.Itoa(int(r))
}

func mirrorTLVName(t uint16) string {
	switch t {
	case 0:
		return "bgp-message"
	case 1:
		return "information"
	}
	return "unknown-" + strconv.Itoa(int(t))
}

func mirrorInfoName(c uint16) string {
	switch c {
	case 0:
		return "errored-pdu"
	case 1:
		return "messages-lost"
	}
	return "unknown-" + strconv.Itoa(int(c))
}
