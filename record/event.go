package record

import (
	"encoding/json"
	"time"
)

// EventSchemaVersion is the "v" of every JSON event; bump it on an incompatible change.
const EventSchemaVersion = 1

// Event is the envelope of every parsed JSON event bgpedge publishes, whatever
// its source (BMP or exaBGP), so downstream consumers read one schema.
// docs/schema.md documents every field with an example per event type.
type Event struct {
	V    int    `json:"v"`
	Type string `json:"type"` // route, peer-up, peer-down, stats, initiation, termination, route-mirroring, state, notification, decode-error, …
	// ID is "<agent-id>:<seq>[:<index>]", stable across re-deliveries, for deduplication.
	ID     string `json:"id"`
	Agent  string `json:"agent"`
	Source string `json:"source"` // "bmp" or "exabgp"
	// Router is the BMP router's address, or for exaBGP the local address of the session.
	Router     string     `json:"router,omitempty"`
	Seq        uint64     `json:"seq"`
	ReceivedAt time.Time  `json:"received_at"`         // when bgpedge received the message
	Timestamp  *time.Time `json:"timestamp,omitempty"` // the router's (BMP per-peer header) or exaBGP's time
	Peer       *Peer      `json:"peer,omitempty"`
	Route      *Route     `json:"route,omitempty"`
	// Data holds the body of non-route events (peer up/down, stats, …); its
	// shape depends on Type and is documented in docs/schema.md.
	Data any `json:"data,omitempty"`
}

// Peer identifies the BGP peer an event is about.
type Peer struct {
	Address string `json:"address"`
	AS      uint32 `json:"as"`
	BGPID   string `json:"bgp_id,omitempty"`
	RD      string `json:"rd,omitempty"`
	// Type is global, rd-instance, local-instance, loc-rib (BMP), or exabgp.
	Type  string `json:"type,omitempty"`
	Flags uint8  `json:"flags,omitempty"` // raw BMP per-peer flags
	IPv6  bool   `json:"ipv6,omitempty"`  // V flag
	// AS2 is the A flag: the AS_PATH in this message uses 2-byte ASNs.
	AS2      bool `json:"as2,omitempty"`
	Filtered bool `json:"filtered,omitempty"` // F flag (Loc-RIB)
	// Synthetic is set on events bgpedge generated itself, e.g. a peer-down
	// for a peer whose BMP session ended without one.
	Synthetic bool `json:"synthetic,omitempty"`
}

// Route is one prefix of one path: route monitoring gives one event per prefix.
type Route struct {
	Action string `json:"action"` // announce or withdraw
	// Prefix is a CIDR for IP families; for other families (EVPN, flowspec, …)
	// a readable form, with the raw NLRI in NLRI.
	Prefix string `json:"prefix,omitempty"`
	PathID uint32 `json:"path_id,omitempty"`
	AFI    uint16 `json:"afi"`
	SAFI   uint8  `json:"safi"`
	Family string `json:"family"` // e.g. ipv4-unicast, ipv6-unicast, vpnv4-unicast, l2vpn-evpn
	// EndOfRIB marks an End-of-RIB marker for the family (no prefix).
	EndOfRIB bool `json:"end_of_rib,omitempty"`

	NextHop          string           `json:"next_hop,omitempty"`
	Origin           string           `json:"origin,omitempty"`  // igp, egp, incomplete
	ASPath           []uint32         `json:"as_path,omitempty"` // flattened, in order
	ASPathSegments   []ASPathSegment  `json:"as_path_segments,omitempty"`
	Communities      []string         `json:"communities,omitempty"`          // "65001:100"
	ExtCommunities   []string         `json:"extended_communities,omitempty"` // "target:65001:100", …
	LargeCommunities []string         `json:"large_communities,omitempty"`    // "65001:1:2"
	MED              *uint32          `json:"med,omitempty"`
	LocalPref        *uint32          `json:"local_pref,omitempty"`
	AtomicAggregate  bool             `json:"atomic_aggregate,omitempty"`
	Aggregator       string           `json:"aggregator,omitempty"` // "AS:address"
	OriginatorID     string           `json:"originator_id,omitempty"`
	ClusterList      []string         `json:"cluster_list,omitempty"`
	Labels           []uint32         `json:"labels,omitempty"`
	RD               string           `json:"rd,omitempty"`
	Attributes       []OtherAttribute `json:"attributes,omitempty"` // attributes not broken out above
	NLRI             []byte           `json:"nlri,omitempty"`       // raw NLRI for families carried undecoded
	// ExaBGP keeps exaBGP's own JSON for what the fields above do not cover:
	// "nlri" holds the NLRI object of non-IP families (flowspec match
	// components, EVPN, VPLS, MUP, BGP-LS, …) and other keys are attributes
	// by exaBGP's name (e.g. "bgp-prefix-sid", "aigp"). Only set by exaBGP.
	ExaBGP map[string]json.RawMessage `json:"exabgp,omitempty"`

	Policy string `json:"policy,omitempty"` // pre-policy or post-policy
	RIB    string `json:"rib,omitempty"`    // adj-rib-in, adj-rib-out or loc-rib
}

// ASPathSegment is one AS_PATH segment, given when a path holds more than one
// plain AS_SEQUENCE (sets, confederations).
type ASPathSegment struct {
	Type string   `json:"type"` // sequence, set, confed-sequence, confed-set
	ASNs []uint32 `json:"asns"`
}

// OtherAttribute is a path attribute kept as received.
type OtherAttribute struct {
	Type  uint8  `json:"type"`
	Flags uint8  `json:"flags"`
	Value []byte `json:"value"` // base64 in JSON
}
