package bmp_test
import ("encoding/json";"testing";"fmt";"os";"github.com/prometheus/client_golang/prometheus";"github.com/prometheus/client_golang/prometheus/testutil")
func TestInf(t *testing.T){ reg:=prometheus.NewRegistry(); ms:=decodeStreams(t, os.Getenv("F"), reg)
 fmt.Println("inferred", testutil.ToFloat64(counterOf(t,reg,"bgpedge_bmp_addpath_inferred_total")))
 for i,m:=range ms { if i==91 || i==101 || i==19 { for _,e:=range m.events { fmt.Printf("%d %s %+v %+v\n", i+1, e.Type, *e.Peer, e.Route.PathID) } } }
 for i,m:=range ms { if m.typ==3 { for _,e:=range m.events { if e.Peer.Type=="loc-rib" || e.Peer.Address=="169.254.0.1" {fmt.Println(i+1, jsonOf2(e.Data)) }} } }
}
func jsonOf2(v any) string { b,_:=json.Marshal(v); s:=string(b); if len(s)>600 {s=s[:600]}; return s }
