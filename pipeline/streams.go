package pipeline

import (
	"slices"

	"github.com/bgpedge/bgpedge/bmp"
	"github.com/bgpedge/bgpedge/exabgp"
	"github.com/bgpedge/bgpedge/forwarder"
	"github.com/bgpedge/bgpedge/record"
	"github.com/bgpedge/bgpedge/rib"
)

// Streams is every output stream bgpedge emits: those each source declares
// for its encoder, and the forwarder's own. A new source adds its
// declaration here.
func Streams() record.Streams {
	return slices.Concat(bmp.Streams(), rib.Streams(), exabgp.Streams(), forwarder.Streams())
}
