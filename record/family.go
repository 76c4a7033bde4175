package record

import "strconv"

// FamilyName is the name events give an AFI/SAFI pair (Route.Family), shared
// by every source so consumers can join BMP and exaBGP events on it. Unknown
// pairs get a stable generated name: a new code point must not stop decoding.
func FamilyName(afi uint16, safi uint8) string {
	switch afi {
	case 1, 2:
		v := "4"
		if afi == 2 {
			v = "6"
		}
		switch safi {
		case 1:
			return "ipv" + v + "-unicast"
		case 2:
			return "ipv" + v + "-multicast"
		case 4:
			return "ipv" + v + "-labeled-unicast"
		case 128:
			return "vpnv" + v + "-unicast"
		case 129:
			return "vpnv" + v + "-multicast"
		case 133:
			return "ipv" + v + "-flowspec"
		case 134:
			return "vpnv" + v + "-flowspec"
		case 132:
			if afi == 1 {
				return "ipv4-rtc"
			}
		case 73:
			return "ipv" + v + "-sr-policy"
		case 7:
			return "ipv" + v + "-encap"
		}
	case 25:
		switch safi {
		case 65:
			return "l2vpn-vpls"
		case 70:
			return "l2vpn-evpn"
		case 134:
			return "l2vpn-flowspec"
		}
	case 16388:
		switch safi {
		case 71:
			return "bgp-ls"
		case 72:
			return "bgp-ls-vpn"
		}
	}
	return "afi-" + strconv.Itoa(int(afi)) + "-safi-" + strconv.Itoa(int(safi))
}
