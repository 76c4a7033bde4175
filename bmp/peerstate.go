package bmp

import (
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/osrg/gobgp/v4/pkg/packet/bgp"
	bolt "go.etcd.io/bbolt"
)

// What BGP leaves to session negotiation — Add-Path per family and
// direction, 4-octet AS — is learnt from the two OPENs of each Peer Up and
// needed to parse every later Route Monitoring message of that peer. Because
// decoding happens when the forwarder drains the spool, possibly after a
// restart and possibly re-delivering records, the state is:
//
//   - durable: a small bbolt file in the state directory, written before
//     the Peer Up's events are emitted (so before the forwarder can ack it);
//   - versioned by spool sequence number: a Route Monitoring record is
//     decoded with the newest Peer Up state older than itself, so records
//     re-delivered after a crash decode as they did the first time even if
//     a later Peer Up of the same peer changed its capabilities.

// peerStateVersions bounds the history kept per peer.
const peerStateVersions = 8

// peerVersion is the negotiated state from one Peer Up.
type peerVersion struct {
	Seq uint64 `json:"seq"`
	AS4 bool   `json:"as4"`
	// ASWidth is the ASN width of AS_PATH on this session (and with 2,
	// AS4_PATH and AS4_AGGREGATOR are merged): 4 when both OPENs carry the
	// 4-octet AS capability, 2 when one of them lacks it, 0 when that is
	// unknown because an OPEN could not be read (then the A flag decides). States stored before the field existed read as 0, which is
	// what decoded their records then, so re-delivered records keep
	// decoding the same.
	ASWidth uint8 `json:"as_width,omitempty"`
	// Families (gobgp Family values) with Add-Path path ids, per RIB direction.
	In     []uint32 `json:"in,omitempty"`      // Adj-RIB-In: peer sends, router receives
	Out    []uint32 `json:"out,omitempty"`     // Adj-RIB-Out: router sends, peer receives
	LocRIB []uint32 `json:"loc_rib,omitempty"` // Loc-RIB (RFC 9069): any Add-Path mention
	// Session is the BMP session (the router's address and port) whose
	// Peer Up made the version: Loc-RIB Peer Ups of one session add up,
	// a new session starts afresh.
	Session string `json:"session,omitempty"`
}

type peerRecord struct {
	Versions []peerVersion `json:"versions"`
}

// direction selects which Add-Path set applies to a message.
type direction uint8

const (
	dirIn direction = iota
	dirOut
	dirLocRIB
)

// twoByteAS reports whether AS_PATH is read with 2-byte ASNs: as the OPENs
// negotiated, or as the per-peer header's A flag says when they are unknown.
func (v *peerVersion) twoByteAS(aFlag bool) bool {
	switch v.ASWidth {
	case 2:
		return true
	case 4:
		return false
	}
	return aFlag
}

func (v *peerVersion) options(dir direction, as2 bool) pathOptions {
	var fams []uint32
	switch dir {
	case dirIn:
		fams = v.In
	case dirOut:
		fams = v.Out
	case dirLocRIB:
		fams = v.LocRIB
	}
	o := pathOptions{as2: as2}
	if len(fams) > 0 {
		o.addPath = make(map[bgp.Family]bool, len(fams))
		for _, f := range fams {
			o.addPath[bgp.Family(f)] = true
		}
	}
	return o
}

// negotiate derives a peer's state from the router's (sent) and the peer's
// (received) OPEN. Add-Path applies router←peer when the peer may send and
// the router may receive; router→peer (Adj-RIB-Out, RFC 8671) the reverse.
// 4-octet AS applies when both OPENs carry the capability (RFC 6793); a
// Loc-RIB Peer Up's OPENs are fabricated copies of each other (RFC 9069
// 5.2), so there either one carrying it is enough.
func negotiate(seq uint64, sent, recv openCaps, locRIB bool) peerVersion {
	v := peerVersion{Seq: seq, AS4: sent.as4 && recv.as4}
	switch {
	case locRIB && (sent.as4 || recv.as4):
		v.AS4, v.ASWidth = true, 4
	case locRIB && (sent.read || recv.read):
		v.ASWidth = 2
	case locRIB:
	case sent.read && !sent.as4, recv.read && !recv.as4:
		v.ASWidth = 2 // one side is an old (2-byte) speaker
	case v.AS4:
		v.ASWidth = 4
	}
	fams := map[bgp.Family]bool{}
	for f := range sent.addPath {
		fams[f] = true
	}
	for f := range recv.addPath {
		fams[f] = true
	}
	for f := range fams {
		s, r := sent.addPath[f], recv.addPath[f]
		if r&bgp.BGP_ADD_PATH_SEND != 0 && s&bgp.BGP_ADD_PATH_RECEIVE != 0 {
			v.In = append(v.In, uint32(f))
		}
		if s&bgp.BGP_ADD_PATH_SEND != 0 && r&bgp.BGP_ADD_PATH_RECEIVE != 0 {
			v.Out = append(v.Out, uint32(f))
		}
		if s != bgp.BGP_ADD_PATH_NONE || r != bgp.BGP_ADD_PATH_NONE {
			v.LocRIB = append(v.LocRIB, uint32(f))
		}
	}
	slices.Sort(v.In)
	slices.Sort(v.Out)
	slices.Sort(v.LocRIB)
	return v
}

// peerStore holds the per-peer state, in memory and (with a directory) on disk.
type peerStore struct {
	mu    sync.Mutex
	peers map[string]*peerRecord
	db    *bolt.DB // nil: memory only
	// gen counts the changes record made (under mu). A peerRecord's
	// Versions are never written in place, only replaced, so a reader
	// that took them at one gen may keep reading them until gen moves.
	gen atomic.Uint64
}

const peersBucket = "peers"

// peerStateFile is the state file's name inside the state directory.
const peerStateFile = "bmp-peers.db"

func openPeerStore(dir string) (*peerStore, error) {
	s := &peerStore{peers: map[string]*peerRecord{}}
	if dir == "" {
		return s, nil
	}
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("bmp peer state: %w", err)
	}
	db, err := bolt.Open(filepath.Join(dir, peerStateFile), 0o640, &bolt.Options{Timeout: 5 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("bmp peer state: open: %w", err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists([]byte(peersBucket))
		if err != nil {
			return err
		}
		return b.ForEach(func(k, v []byte) error {
			var r peerRecord
			if err := json.Unmarshal(v, &r); err != nil {
				return nil // an unreadable entry is dropped: its next Peer Up restores it
			}
			s.peers[string(k)] = &r
			return nil
		})
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("bmp peer state: load: %w", err)
	}
	s.db = db
	return s, nil
}

func (s *peerStore) close() error {
	if s.db == nil {
		return nil
	}
	return s.db.Close()
}

func peerStoreKey(router string, k PeerKey) string {
	return router + "|" + peerTypeName(k.Type) + "|" + hex.EncodeToString(k.Distinguisher[:]) + "|" + k.Address.String()
}

// lookup returns the state in force for a record with sequence seq (the
// newest version older than seq; with seq 0, the newest).
func (s *peerStore) lookup(key string, seq uint64) (peerVersion, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.peers[key].at(seq)
}

// at is the version of r in force for a record with sequence seq.
func (r *peerRecord) at(seq uint64) (peerVersion, bool) {
	if r == nil {
		return peerVersion{}, false
	}
	return versionAt(r.Versions, seq)
}

// versionAt is the version of vs (oldest first) in force for a record
// with sequence seq.
func versionAt(vs []peerVersion, seq uint64) (peerVersion, bool) {
	for i := len(vs) - 1; i >= 0; i-- {
		if seq == 0 || vs[i].Seq < seq {
			return vs[i], true
		}
	}
	return peerVersion{}, false
}

// record stores a Peer Up's state, durably when a directory is configured.
// A re-delivered Peer Up (same seq) replaces its earlier version.
func (s *peerStore) record(key string, v peerVersion) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.peers[key]
	if r == nil {
		r = &peerRecord{}
		s.peers[key] = r
	}
	i, found := slices.BinarySearchFunc(r.Versions, v.Seq, func(a peerVersion, seq uint64) int {
		switch {
		case a.Seq < seq:
			return -1
		case a.Seq > seq:
			return 1
		}
		return 0
	})
	// Versions are replaced, never written in place: the fast path reads
	// the ones it looked up without the lock (lookupPeer).
	if found {
		if equalVersion(r.Versions[i], v) {
			return nil
		}
		vs := slices.Clone(r.Versions)
		vs[i] = v
		r.Versions = vs
	} else {
		vs := slices.Insert(slices.Clip(slices.Clone(r.Versions)), i, v)
		if len(vs) > peerStateVersions {
			vs = vs[len(vs)-peerStateVersions:]
		}
		r.Versions = vs
	}
	s.gen.Add(1)
	if s.db == nil {
		return nil
	}
	val, err := json.Marshal(r)
	if err != nil {
		return err
	}
	return s.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket([]byte(peersBucket)).Put([]byte(key), val)
	})
}

// mergeVersions adds b's families to a's; the result has b's sequence number.
func mergeVersions(a, b peerVersion) peerVersion {
	union := func(x, y []uint32) []uint32 {
		out := slices.Concat(x, y)
		slices.Sort(out)
		return slices.Compact(out)
	}
	return peerVersion{Seq: b.Seq, AS4: a.AS4 || b.AS4, ASWidth: max(a.ASWidth, b.ASWidth), In: union(a.In, b.In), Out: union(a.Out, b.Out), LocRIB: union(a.LocRIB, b.LocRIB), Session: b.Session}
}

func equalVersion(a, b peerVersion) bool {
	return a.Seq == b.Seq && a.AS4 == b.AS4 && a.ASWidth == b.ASWidth && slices.Equal(a.In, b.In) && slices.Equal(a.Out, b.Out) && slices.Equal(a.LocRIB, b.LocRIB) && a.Session == b.Session
}

// appendPeerStoreKey is peerStoreKey, appended, for lookups that do not
// allocate.
func appendPeerStoreKey(b []byte, router string, ph *PeerHeader) []byte {
	b = append(b, router...)
	b = append(b, '|')
	b = append(b, peerTypeName(ph.Type)...)
	b = append(b, '|')
	b = hex.AppendEncode(b, ph.Distinguisher[:])
	b = append(b, '|')
	return ph.Address.AppendTo(b)
}

// lookupPeer is lookup for the fast path's current peer p, whose versions
// it keeps: they are taken again under the lock only once the store
// changed (gen), not for every message. The encoder goroutines, on
// different CPUs, contended for the lock and its cache line.
func (s *peerStore) lookupPeer(p *fastPeer, seq uint64) (peerVersion, bool) {
	if !p.versOK || p.gen != s.gen.Load() {
		s.mu.Lock()
		p.vers = nil
		if r := s.peers[string(p.storeKey)]; r != nil {
			p.vers = r.Versions
		}
		p.gen, p.versOK = s.gen.Load(), true
		s.mu.Unlock()
	}
	return versionAt(p.vers, seq)
}
