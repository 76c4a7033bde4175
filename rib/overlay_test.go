package rib

import (
	"math/rand/v2"
	"testing"
)

// TestOvRoutesModel drives ovRoutes and a map with the same random puts,
// gets and removals. Homes crowd a few slots at the table's end, so runs
// are long, wrap around and cross removals.
func TestOvRoutesModel(t *testing.T) {
	for seed := range uint64(20) {
		r := rand.New(rand.NewPCG(seed, 1))
		var tab ovRoutes
		model := map[ixHash]ovEntry{}
		keys := make([]ixHash, 3000)
		for i := range keys {
			home := uint64(minOvSlots - 1 - r.IntN(8))
			if r.IntN(4) == 0 {
				home = r.Uint64()
			}
			keys[i] = ixHash{r.Uint64() | 1, home + uint64(r.IntN(4))*minOvSlots}
		}
		gen := uint64(0)
		for step := range 40000 {
			h := keys[r.IntN(len(keys))]
			switch r.IntN(3) {
			case 0, 1:
				gen++
				e := ovEntry{gen: gen, pos: r.Uint64(), del: r.IntN(2) == 0}
				_, had := model[h]
				if isNew := tab.put(h, e); isNew == had {
					t.Fatalf("seed %d step %d: put new %v, model had %v", seed, step, isNew, had)
				}
				model[h] = e
			case 2:
				// Remove the newest change, or try an older one, which stays.
				g := model[h].gen
				if r.IntN(3) == 0 {
					g--
				}
				removed := tab.removeGen(h, g)
				if want := model[h].gen != 0 && model[h].gen == g; removed != want {
					t.Fatalf("seed %d step %d: removed %v, want %v", seed, step, removed, want)
				}
				if removed {
					delete(model, h)
				}
			}
			if step%997 == 0 || step == 39999 {
				if tab.len() != len(model) {
					t.Fatalf("seed %d step %d: %d routes, model %d", seed, step, tab.len(), len(model))
				}
				for _, k := range keys {
					got, ok := tab.get(k)
					want, wok := model[k]
					if ok != wok || got != want {
						t.Fatalf("seed %d step %d: get %v = %+v %v, model %+v %v", seed, step, k, got, ok, want, wok)
					}
				}
				n := 0
				tab.each(func(h ixHash, e ovEntry) {
					n++
					if model[h] != e {
						t.Fatalf("seed %d step %d: each gave %v %+v, model %+v", seed, step, h, e, model[h])
					}
				})
				if n != len(model) {
					t.Fatalf("seed %d step %d: each gave %d, model %d", seed, step, n, len(model))
				}
			}
		}
	}
}
