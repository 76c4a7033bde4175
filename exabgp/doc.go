// Package exabgp runs bgpedge as an exaBGP process: it ingests exaBGP's JSON events and writes policy-checked route commands back.
package exabgp
