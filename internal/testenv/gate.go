package testenv

import (
	"io"
	"net"
	"sync"
	"testing"
)

// Gate is a TCP proxy on loopback that a test opens and closes to take a
// server away from its clients in an instant, as a network partition or a
// dead host would, without stopping the server. Closed, it refuses new
// connections and has cut every open one.
type Gate struct {
	t      testing.TB
	addr   string // where clients connect
	target string

	mu    sync.Mutex
	ln    net.Listener
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
}

// NewGate returns an open gate on addr that forwards to target; it is
// closed when the test ends.
func NewGate(t testing.TB, addr, target string) *Gate {
	t.Helper()
	g := &Gate{t: t, addr: addr, target: target, conns: map[net.Conn]struct{}{}}
	g.Open()
	t.Cleanup(func() {
		g.Close()
		g.wg.Wait()
	})
	return g
}

// Addr is where clients connect.
func (g *Gate) Addr() string { return g.addr }

// Open starts accepting again; opening an open gate does nothing.
func (g *Gate) Open() {
	g.t.Helper()
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.ln != nil {
		return
	}
	ln, err := net.Listen("tcp", g.addr)
	if err != nil {
		g.t.Fatalf("gate: listen on %s: %v", g.addr, err)
	}
	g.ln = ln
	g.wg.Add(1)
	go g.accept(ln)
}

// Close refuses new connections and cuts the open ones.
func (g *Gate) Close() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.ln == nil {
		return
	}
	_ = g.ln.Close()
	g.ln = nil
	for c := range g.conns {
		_ = c.Close()
	}
	clear(g.conns)
}

func (g *Gate) accept(ln net.Listener) {
	defer g.wg.Done()
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		up, err := net.Dial("tcp", g.target)
		if err != nil {
			_ = c.Close()
			continue
		}
		g.mu.Lock()
		if g.ln != ln { // closed meanwhile
			g.mu.Unlock()
			_ = c.Close()
			_ = up.Close()
			continue
		}
		g.conns[c], g.conns[up] = struct{}{}, struct{}{}
		g.mu.Unlock()
		g.wg.Add(2)
		go g.pipe(c, up)
		go g.pipe(up, c)
	}
}

func (g *Gate) pipe(dst, src net.Conn) {
	defer g.wg.Done()
	_, _ = io.Copy(dst, src)
	_ = dst.Close()
	_ = src.Close()
	g.mu.Lock()
	delete(g.conns, dst)
	delete(g.conns, src)
	g.mu.Unlock()
}
