package rib

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	bolt "go.etcd.io/bbolt"
)

// Query selects what Show reports; empty fields match everything.
type Query struct {
	Router string `json:"router,omitempty"` // router address
	Peer   string `json:"peer,omitempty"`   // peer address (0.0.0.0 for Loc-RIB)
	Table  string `json:"table,omitempty"`  // one of Tables()
	// Prefix asks for the routes matching it: per peer and table the
	// longest covering route (the longest match) and every more-specific.
	Prefix string `json:"prefix,omitempty"`
}

// Report is what `bgpedge rib show` prints.
type Report struct {
	// Source is "agent" (the running agent's committed state) or the
	// state file read while the agent is stopped.
	Source     string     `json:"source"`
	AppliedSeq uint64     `json:"applied_seq"` // the state holds the changes of every record up to this seq
	Counts     []CountRow `json:"counts"`
	Routes     []RouteRow `json:"routes,omitempty"`
}

// CountRow is the routes held for one router, peer and table.
type CountRow struct {
	Router   string `json:"router"`
	PeerType string `json:"peer_type"`
	PeerRD   string `json:"peer_rd,omitempty"`
	Peer     string `json:"peer"`
	Table    string `json:"table"`
	Routes   uint64 `json:"routes"`
}

// RouteRow is one route matching a prefix query.
type RouteRow struct {
	Router   string `json:"router"`
	PeerType string `json:"peer_type"`
	PeerRD   string `json:"peer_rd,omitempty"`
	Peer     string `json:"peer"`
	Table    string `json:"table"`
	Family   string `json:"family"`
	RD       string `json:"rd,omitempty"`
	Prefix   string `json:"prefix"`
	PathID   uint32 `json:"path_id,omitempty"`
	// Match is longest-match (the longest prefix covering the query) or
	// more-specific.
	Match string `json:"match"`
	// AttrHash is the hash of the route's attributes (the route object of
	// its last announcement), hex.
	AttrHash string `json:"attr_hash"`
	Stale    bool   `json:"stale,omitempty"`
}

// ErrBadQuery marks a query that cannot be answered (bad prefix or table).
var ErrBadQuery = errors.New("bad rib query")

func (q Query) check() (netip.Prefix, error) {
	if q.Table != "" && !slices.Contains(Tables(), q.Table) {
		return netip.Prefix{}, fmt.Errorf("%w: table %q is not one of %s", ErrBadQuery, q.Table, strings.Join(Tables(), ", "))
	}
	if q.Prefix == "" {
		return netip.Prefix{}, nil
	}
	p, err := netip.ParsePrefix(q.Prefix)
	if err != nil {
		a, aerr := netip.ParseAddr(q.Prefix)
		if aerr != nil {
			return netip.Prefix{}, fmt.Errorf("%w: prefix %q: %w", ErrBadQuery, q.Prefix, err)
		}
		p = netip.PrefixFrom(a, a.BitLen())
	}
	return p.Masked(), nil
}

func (q Query) peerMatches(peer string) bool {
	router, _, _, addr := splitPeer(peer)
	return (q.Router == "" || q.Router == router) && (q.Peer == "" || q.Peer == addr)
}

// show reads the committed state.
func (s *store) show(q Query) (Report, error) {
	want, err := q.check()
	if err != nil {
		return Report{}, err
	}
	var rep Report
	err = s.db.View(func(tx *bolt.Tx) error {
		if v := tx.Bucket(metaBucket).Get(appliedKey); len(v) == 8 {
			rep.AppliedSeq = binary.BigEndian.Uint64(v)
		}
		if err := tx.Bucket(countsBucket).ForEach(func(k, v []byte) error {
			peer, table, _ := strings.Cut(string(k), "\x00")
			if !q.peerMatches(peer) || (q.Table != "" && q.Table != table) || len(v) != 8 {
				return nil
			}
			router, typ, rd, addr := splitPeer(peer)
			rep.Counts = append(rep.Counts, CountRow{Router: router, PeerType: typ, PeerRD: rd, Peer: addr, Table: table, Routes: binary.BigEndian.Uint64(v)})
			return nil
		}); err != nil {
			return err
		}
		if !want.IsValid() {
			return nil
		}
		peers := tx.Bucket(peersBucket)
		return tx.Bucket(routesBucket).ForEachBucket(func(pk []byte) error {
			peer := string(pk)
			if !q.peerMatches(peer) {
				return nil
			}
			meta := decodeMeta(peers.Get(pk))
			router, typ, peerRD, addr := splitPeer(peer)
			// Per table, family and route distinguisher: each VRF of a VPN
			// table (and unicast beside it) has its own covering route.
			longest := map[string][]RouteRow{}
			var more []RouteRow
			visit := func(rk string, rv routeValue) {
				// rk points into the file: what a row keeps is copied.
				table, _, _, prefix, _ := splitRoute(rk)
				if q.Table != "" && q.Table != table {
					return
				}
				p, err := netip.ParsePrefix(prefix)
				if err != nil || p.Addr().Is4() != want.Addr().Is4() {
					return // EVPN and other non-IP NLRI, other family
				}
				table, family, rd, prefix, pathID := splitRoute(strings.Clone(rk))
				row := RouteRow{Router: router, PeerType: typ, PeerRD: peerRD, Peer: addr, Table: table, Family: family, RD: rd,
					Prefix: prefix, PathID: pathID, AttrHash: strconv.FormatUint(rv.hash, 16), Stale: meta.stale && rv.epoch < meta.epoch}
				switch {
				case p.Bits() > want.Bits() && want.Contains(p.Addr()):
					row.Match = "more-specific"
					more = append(more, row)
				case p.Bits() <= want.Bits() && p.Contains(want.Addr()):
					row.Match = "longest-match"
					at := table + "|" + family + "|" + rd
					cur := longest[at]
					if len(cur) > 0 {
						best, _ := netip.ParsePrefix(cur[0].Prefix)
						if best.Bits() > p.Bits() {
							return
						}
						if best.Bits() < p.Bits() {
							cur = cur[:0]
						}
					}
					longest[at] = append(cur, row) // several: Add-Path paths
				}
			}
			var es []groupRoute
			err := tx.Bucket(routesBucket).Bucket(pk).ForEach(func(k, v []byte) error {
				var err error
				if es, err = decodeGroup(k, v, es[:0]); err != nil {
					return err
				}
				for _, e := range es {
					visit(e.rk, e.val)
				}
				return nil
			})
			// Tables in their order, then by family and distinguisher.
			ats := slices.Sorted(maps.Keys(longest))
			for _, t := range Tables() {
				for _, at := range ats {
					if strings.HasPrefix(at, t+"|") {
						rep.Routes = append(rep.Routes, longest[at]...)
					}
				}
			}
			rep.Routes = append(rep.Routes, more...)
			return err
		})
	})
	if err != nil {
		return Report{}, fmt.Errorf("rib: show: %w", err)
	}
	if rep.Counts == nil {
		rep.Counts = []CountRow{}
	}
	return rep, nil
}

// Show reports the running stage's committed state.
func (s *Stage) Show(q Query) (Report, error) {
	rep, err := s.st.show(q)
	rep.Source = "agent"
	return rep, err
}

// ShowDir reports the state in dir, read-only; it fails with ErrLocked
// while an agent holds it.
func ShowDir(dir string, q Query) (Report, error) {
	st, err := openStore(dir, true, 0, 0)
	if err != nil {
		return Report{}, err
	}
	defer st.close()
	rep, err := st.show(q)
	rep.Source = "state-dir"
	return rep, err
}

// Handler answers GET /rib?router=&peer=&table=&prefix= with a Report as
// JSON from the stage current returns (nil: the route state is off or not
// open: 503).
func Handler(current func() *Stage) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s := current()
		if s == nil {
			http.Error(w, "route state not running (bmp.rib.enabled false, or the forwarder is stopped)", http.StatusServiceUnavailable)
			return
		}
		v := r.URL.Query()
		rep, err := s.Show(Query{Router: v.Get("router"), Peer: v.Get("peer"), Table: v.Get("table"), Prefix: v.Get("prefix")})
		switch {
		case errors.Is(err, ErrBadQuery):
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		case err != nil:
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(rep)
	})
}
