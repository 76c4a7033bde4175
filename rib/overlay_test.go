package rib

import (
	"math/rand/v2"
	"testing"
)

// TestOvRoutesModel drives ovRoutes as the stage does (changes appended to
// ops in generation order, commits removing a prefix of them) against a
// map of each route's newest generation. Homes crowd a few slots at the
// table's end, so runs are long, wrap around and cross removals, and some
// routes share h[0], told apart by the change's full hash.
func TestOvRoutesModel(t *testing.T) {
	for seed := range uint64(20) {
		r := rand.New(rand.NewPCG(seed, 1))
		var tab ovRoutes
		var ops []op
		model := map[ixHash]uint64{} // h → generation of its newest change
		keys := make([]ixHash, 3000)
		for i := range keys {
			x := uint64(minOvSlots-1-r.IntN(8)) + uint64(r.IntN(4))*minOvSlots
			if r.IntN(4) == 0 {
				x = r.Uint64() >> 1
			}
			keys[i] = ixHash{x<<1 | 1, r.Uint64()}
			if i > 0 && r.IntN(10) == 0 {
				keys[i][0] = keys[i-1][0] // a shared h[0]
			}
		}
		gen := uint64(0)
		for step := range 40000 {
			switch r.IntN(10) {
			default:
				h := keys[r.IntN(len(keys))]
				gen++
				ops = append(ops, op{gen: gen, h: h, pos: r.Uint64()})
				_, had := model[h]
				if isNew := tab.put(h, gen, ops); isNew == had {
					t.Fatalf("seed %d step %d: put new %v, model had %v", seed, step, isNew, had)
				}
				model[h] = gen
			case 0:
				// A commit of a prefix: each change leaves the table if
				// it is its route's newest; an older one, tried again,
				// removes nothing.
				k := r.IntN(len(ops) + 1)
				for _, o := range ops[:k] {
					newest := model[o.h] == o.gen
					if removed := tab.removeGen(o.h, o.gen); removed != newest {
						t.Fatalf("seed %d step %d: removed gen %d %v, newest %v", seed, step, o.gen, removed, newest)
					}
					if newest {
						delete(model, o.h)
						if tab.removeGen(o.h, o.gen) {
							t.Fatalf("seed %d step %d: removed gen %d twice", seed, step, o.gen)
						}
					}
				}
				ops = ops[k:]
			}
			if step%997 == 0 || step == 39999 {
				if tab.len() != len(model) {
					t.Fatalf("seed %d step %d: %d routes, model %d", seed, step, tab.len(), len(model))
				}
				for _, k := range keys {
					o, ok := tab.get(k, ops)
					g, wok := model[k]
					if ok != wok || (ok && (o.gen != g || o.h != k)) || tab.gen(k, ops) != g {
						t.Fatalf("seed %d step %d: get %v = %+v %v, model gen %d %v", seed, step, k, o, ok, g, wok)
					}
				}
				n := 0
				tab.each(func(h0, g uint64) {
					n++
					if o := ops[g-ops[0].gen]; o.h[0] != h0 || model[o.h] != g {
						t.Fatalf("seed %d step %d: each gave %x gen %d, not a newest change", seed, step, h0, g)
					}
				})
				if n != len(model) {
					t.Fatalf("seed %d step %d: each gave %d, model %d", seed, step, n, len(model))
				}
			}
		}
	}
}
