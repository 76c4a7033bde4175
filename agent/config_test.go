package agent

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/bgpedge/bgpedge/bmp"
	"github.com/bgpedge/bgpedge/exabgp"
	"github.com/bgpedge/bgpedge/forwarder"
	"github.com/bgpedge/bgpedge/internal/testenv"
	"github.com/bgpedge/bgpedge/record"
)

func TestExampleConfigsValidate(t *testing.T) {
	files, err := filepath.Glob(filepath.Join(testenv.RepoRoot(t), "configs", "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) < 2 {
		t.Fatalf("expected configs/bgpedge.yaml and configs/local.yaml, found %v", files)
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			cfg, err := Load(LoadOptions{File: f, FileRequired: true})
			if err != nil {
				t.Fatalf("load: %v", err)
			}
			if err := cfg.Validate(); err != nil {
				t.Fatalf("validate: %v", err)
			}
		})
	}
}

// TestExampleDocumentsEveryKey keeps configs/bgpedge.yaml complete: every key
// the agent accepts appears in it.
func TestExampleDocumentsEveryKey(t *testing.T) {
	doc, err := os.ReadFile(filepath.Join(testenv.RepoRoot(t), "configs", "bgpedge.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	s := configSchema(reflect.TypeOf(Config{}))
	keys := append([]string{}, s.leaves...)
	for m := range s.maps {
		keys = append(keys, m)
	}
	for _, k := range keys {
		parts := strings.Split(k, keyDelim)
		leaf := parts[len(parts)-1]
		if !bytes.Contains(doc, []byte(leaf+":")) {
			t.Errorf("configs/bgpedge.yaml does not document %s", displayKey(k))
		}
	}
}

func TestBadConfigs(t *testing.T) {
	tests := []struct {
		name string
		yaml string
		want []string // every substring must appear in the error
	}{
		{"unknown key", "buffer:\n  dirr: /x\n", []string{"buffer.dirr: unknown key"}},
		{"unknown section", "bufer:\n  dir: /x\n", []string{"bufer.dir: unknown key"}},
		{"wrong type bool", "http:\n  pprof: 3\n", []string{"http.pprof:", "expected bool"}},
		{"wrong type string list", "bmp:\n  listen: [1, 2]\n", []string{"bmp.listen:"}},
		{"section not a mapping", "agent: 7\n", []string{"agent:"}},
		{"bad CIDR", "bmp:\n  allow: [10.0.0.0/8, 10.0.0/8]\n", []string{"bmp.allow[1]:", "10.0.0/8"}},
		{"bad duration", "bmp:\n  tcp_keepalive: 5y\n", []string{"bmp.tcp_keepalive:", `"5y"`}},
		{"bad duration in forwarder", "forwarder:\n  failover_after: soon\n", []string{"forwarder.failover_after:"}},
		{"duration without unit", "agent:\n  shutdown_timeout: 30\n", []string{"agent.shutdown_timeout:", "has no unit"}},
		{"fraction for an integer", "bmp:\n  max_sessions: 10.7\n", []string{"bmp.max_sessions:", "not a whole number"}},
		{"integer that would wrap", "forwarder:\n  kafka:\n    partitions: 3000000000\n", []string{"forwarder.kafka.partitions:", "out of range"}},
		{"integer written as text that would wrap", "forwarder:\n  kafka:\n    replication_factor: \"70000\"\n", []string{"forwarder.kafka.replication_factor:", "out of range"}},
		{"bad size", "buffer:\n  max_bytes: lots\n", []string{"buffer.max_bytes:", "lots"}},
		{"size too small", "buffer:\n  segment_bytes: 1KiB\n", []string{"buffer.segment_bytes:"}},
		{"missing broker when forwarder enabled", "forwarder:\n  enabled: true\n  kafka:\n    brokers: []\n", []string{"forwarder.kafka.brokers:"}},
		{"bad log level", "log:\n  level: loud\n", []string{"log.level:", "loud"}},
		{"bad log format", "log:\n  format: xml\n", []string{"log.format:"}},
		{"bad http listen", "http:\n  listen: nope\n", []string{"http.listen:"}},
		{"bad agent id", "agent:\n  id: a.b\n", []string{"agent.id:"}},
		{"agent id with a quote", "agent:\n  id: 'edge\"1'\n", []string{"agent.id:", "written into every event's id"}},
		{"agent id with a backslash", "agent:\n  id: 'edge\\1'\n", []string{"agent.id:", "written into every event's id"}},
		{"agent id with a control character", "agent:\n  id: \"edge\\x071\"\n", []string{"agent.id:", "unprintable"}},
		{"bad policy", "buffer:\n  policy: maybe\n", []string{"buffer.policy:"}},
		{"exabgp spool below two segments", "exabgp:\n  spool_max_bytes: 64MiB\n", []string{"exabgp.spool_max_bytes:", "twice buffer.segment_bytes"}},
		{"exabgp spool tiny", "exabgp:\n  spool_max_bytes: 1KiB\n", []string{"exabgp.spool_max_bytes:"}},
		{"bad rib duplicates", "bmp:\n  rib:\n    duplicates: hide\n", []string{"bmp.rib.duplicates:", "hide"}},
		{"rib without json", "bmp:\n  encoding:\n    json: false\n  rib:\n    enabled: true\n", []string{"bmp.rib.enabled:", "bmp.encoding.json"}},
		{"several errors at once", "buffer:\n  dirr: /x\nbmp:\n  tcp_keepalive: 5y\n", []string{"buffer.dirr: unknown key", "bmp.tcp_keepalive:"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := filepath.Join(t.TempDir(), "c.yaml")
			if err := os.WriteFile(f, []byte(tt.yaml), 0o600); err != nil {
				t.Fatal(err)
			}
			cfg, err := Load(LoadOptions{File: f, FileRequired: true})
			if err == nil {
				err = cfg.Validate()
			}
			if err == nil {
				t.Fatal("accepted a bad configuration")
			}
			if !errors.Is(err, ErrInvalidConfig) {
				t.Errorf("error does not wrap ErrInvalidConfig: %v", err)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

func TestForwarderDisabledSkipsItsValidation(t *testing.T) {
	cfg, err := LoadBytes([]byte("forwarder:\n  enabled: false\n  kafka:\n    brokers: []\n"))
	if err != nil {
		t.Fatal(err)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatalf("a disabled forwarder's section should not be required: %v", err)
	}
}

func TestEnvironmentOverridesFileAndSetsAbsentKeys(t *testing.T) {
	f := filepath.Join(t.TempDir(), "c.yaml")
	doc := "buffer:\n  dir: /from/file\nbmp:\n  listen: 127.0.0.1:1\n"
	if err := os.WriteFile(f, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("BGPEDGE_BUFFER_DIR", "/from/env")                                                        // in the file
	t.Setenv("BGPEDGE_BUFFER_MAX_BYTES", "2GiB")                                                       // absent from the file, unit
	t.Setenv("BGPEDGE_HTTP_PPROF", "true")                                                             // bool
	t.Setenv("BGPEDGE_BMP_ALLOW", "10.0.0.0/8,192.0.2.1")                                              // list
	t.Setenv("BGPEDGE_FORWARDER_FAILOVER_AFTER", "45s")                                                // duration
	t.Setenv("BGPEDGE_FORWARDER_KAFKA_BROKERS", "k1:9092,k2:9092")                                     // nested list
	t.Setenv("BGPEDGE_FORWARDER_KAFKA_SASL_PASSWORD", "hunter2-secret")                                // deep key
	t.Setenv("BGPEDGE_FORWARDER_TOPICS_OVERRIDES", "bmp.raw=openbmp.bmp_raw, bmp.peer = openbmp.peer") // map
	cfg, err := Load(LoadOptions{File: f, FileRequired: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	checks := []struct {
		name      string
		got, want any
	}{
		{"buffer.dir", cfg.Buffer.Dir, "/from/env"},
		{"buffer.max_bytes", cfg.Buffer.MaxBytes, int64(2 << 30)},
		{"http.pprof", cfg.HTTP.Pprof, true},
		{"bmp.allow", cfg.BMP.Allow, []string{"10.0.0.0/8", "192.0.2.1"}},
		{"bmp.listen (file)", cfg.BMP.Listen, "127.0.0.1:1"},
		{"forwarder.failover_after", cfg.Forwarder.FailoverAfter, 45 * time.Second},
		{"forwarder.kafka.brokers", cfg.Forwarder.Kafka.Brokers, []string{"k1:9092", "k2:9092"}},
		{"forwarder.kafka.sasl.password", cfg.Forwarder.Kafka.SASL.Password, "hunter2-secret"},
		{"forwarder.topics.overrides", cfg.Forwarder.Topics.Overrides, map[string]string{"bmp.raw": "openbmp.bmp_raw", "bmp.peer": "openbmp.peer"}},
	}
	for _, c := range checks {
		if !reflect.DeepEqual(c.got, c.want) {
			t.Errorf("%s = %#v, want %#v", c.name, c.got, c.want)
		}
	}
	for _, n := range []string{"BGPEDGE_BUFFER_DIR", "BGPEDGE_FORWARDER_KAFKA_SASL_PASSWORD", "BGPEDGE_FORWARDER_TOPICS_PREFIX", "BGPEDGE_FORWARDER_TOPICS_OVERRIDES"} {
		found := false
		for _, e := range EnvNames() {
			found = found || e == n
		}
		if !found {
			t.Errorf("EnvNames lacks %s", n)
		}
	}

	t.Setenv("BGPEDGE_BUFFER_SEGMENT_BYTES", "big")
	if _, err := Load(LoadOptions{File: f, FileRequired: true}); err == nil || !strings.Contains(err.Error(), "buffer.segment_bytes") {
		t.Errorf("a bad environment value should name its key, got %v", err)
	}
	t.Setenv("BGPEDGE_BUFFER_SEGMENT_BYTES", "64MiB")
	t.Setenv("BGPEDGE_FORWARDER_TOPICS_OVERRIDES", "bmp.raw")
	if _, err := Load(LoadOptions{File: f, FileRequired: true}); err == nil || !strings.Contains(err.Error(), "forwarder.topics.overrides") || !strings.Contains(err.Error(), "key=value") {
		t.Errorf("a map without '=' should name its key and the form, got %v", err)
	}
}

func TestMissingExplicitFile(t *testing.T) {
	_, err := Load(LoadOptions{File: filepath.Join(t.TempDir(), "nope.yaml"), FileRequired: true})
	if !errors.Is(err, ErrNoConfigFile) {
		t.Fatalf("want ErrNoConfigFile, got %v", err)
	}
}

func TestMapKeysWithDots(t *testing.T) {
	cfg, err := LoadBytes([]byte("forwarder:\n  topics:\n    overrides:\n      bmp.raw: raw-bmp\n      bmp.route.loc-rib: locrib\n"))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"bmp.raw": "raw-bmp", "bmp.route.loc-rib": "locrib"}
	if !reflect.DeepEqual(cfg.Forwarder.Topics.Overrides, want) {
		t.Fatalf("overrides = %v, want %v", cfg.Forwarder.Topics.Overrides, want)
	}
}

func TestRenderYAMLMasksSecretsAndRoundTrips(t *testing.T) {
	in := DefaultConfig()
	in.Agent.ID = "edge-1"
	in.Forwarder.Kafka.SASL.Mechanism = "PLAIN"
	in.Forwarder.Kafka.SASL.User = "bgpedge"
	in.Forwarder.Kafka.SASL.Password = "s3cret-kafka"
	in.Forwarder.NATS.Token = "s3cret-nats"
	in.Forwarder.NATS.CredsFile = "/etc/bgpedge/nats.creds"
	in.Forwarder.Topics.Overrides = map[string]string{"bmp.raw": "raw"}
	in.BMP.Allow = []string{"192.0.2.0/24"}
	out, err := RenderYAML(in)
	if err != nil {
		t.Fatal(err)
	}
	for _, secret := range []string{"s3cret-kafka", "s3cret-nats"} {
		if bytes.Contains(out, []byte(secret)) {
			t.Errorf("rendered config leaks %q:\n%s", secret, out)
		}
	}
	if !bytes.Contains(out, []byte("/etc/bgpedge/nats.creds")) {
		t.Errorf("paths are not secrets and should be shown:\n%s", out)
	}
	back, err := LoadBytes(out)
	if err != nil {
		t.Fatalf("rendered config does not load back: %v\n%s", err, out)
	}
	again, err := RenderYAML(back)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(again, out) {
		t.Errorf("round trip differs:\n got %s\nwant %s", again, out)
	}
	if back.Agent.ID != "edge-1" || back.Forwarder.Topics.Overrides["bmp.raw"] != "raw" || back.BMP.Allow[0] != "192.0.2.0/24" {
		t.Errorf("round trip lost values: %+v", back)
	}
}

func TestParseByteSize(t *testing.T) {
	tests := []struct {
		in   string
		want ByteSize
		err  bool
	}{
		{"4096", 4096, false},
		{"64MiB", 64 << 20, false},
		{"64mib", 64 << 20, false},
		{"1GiB", 1 << 30, false},
		{"512KiB", 512 << 10, false},
		{"10MB", 10_000_000, false},
		{"1.5GiB", 3 << 29, false},
		{"2 MiB", 2 << 20, false},
		{"", 0, true},
		{"MiB", 0, true},
		{"lots", 0, true},
		{"99999999999TiB", 0, true},
	}
	for _, tt := range tests {
		got, err := ParseByteSize(tt.in)
		if (err != nil) != tt.err || got != tt.want {
			t.Errorf("ParseByteSize(%q) = %d, %v; want %d, err %v", tt.in, got, err, tt.want, tt.err)
		}
	}
	if s := ByteSize(64 << 20).String(); s != "64MiB" {
		t.Errorf("String = %q", s)
	}
}

func TestConfigCommands(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.yaml")
	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(good, []byte("agent:\n  id: edge-7\nforwarder:\n  enabled: false\n  kafka:\n    sasl:\n      password: pw-123\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bad, []byte("bmp:\n  allow: [300.0.0.0/8]\n  nope: 1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	invalid := filepath.Join(dir, "invalid.yaml") // decodes, does not validate
	if err := os.WriteFile(invalid, []byte("bmp:\n  max_sessions: 0\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		args       []string
		code       int
		stdout     string
		stderr     string
		notInOuput string
	}{
		{[]string{"config", "validate", "--config", good}, 0, "configuration OK", "", ""},
		{[]string{"config", "validate", "--config", bad}, ExitConfig, "", "bmp.nope: unknown key", ""},
		{[]string{"config", "validate", "--config", invalid}, ExitConfig, "", "bmp.max_sessions", ""},
		{[]string{"config", "validate", "--config", filepath.Join(dir, "missing.yaml")}, ExitConfig, "", "not found", ""},
		{[]string{"config", "show", "--config", good}, 0, "id: edge-7", "", "pw-123"},
		{[]string{"config", "show", "--env"}, 0, "BGPEDGE_BUFFER_DIR", "", ""},
		{[]string{"run", "--config", bad}, ExitConfig, "", "bmp.nope: unknown key", ""},
		{[]string{"run", "--config", invalid}, ExitConfig, "", "bmp.max_sessions", ""},
		{[]string{"run", "--config", filepath.Join(dir, "missing.yaml")}, ExitConfig, "", "not found", ""},
		{[]string{"buffer", "stats", "--dir", filepath.Join(dir, "no-spool")}, 1, "", "", ""},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args[:2], " "), func(t *testing.T) {
			t.Chdir(t.TempDir()) // nothing may be created in the checkout
			var stdout, stderr bytes.Buffer
			code := Main(t.Context(), tt.args, strings.NewReader(""), &stdout, &stderr)
			if code != tt.code {
				t.Errorf("exit code %d, want %d (stderr %q)", code, tt.code, stderr.String())
			}
			if !strings.Contains(stdout.String(), tt.stdout) {
				t.Errorf("stdout %q lacks %q", stdout.String(), tt.stdout)
			}
			if !strings.Contains(stderr.String(), tt.stderr) {
				t.Errorf("stderr %q lacks %q", stderr.String(), tt.stderr)
			}
			if tt.notInOuput != "" && strings.Contains(stdout.String()+stderr.String(), tt.notInOuput) {
				t.Errorf("output shows %q", tt.notInOuput)
			}
		})
	}
}

// Every stream a source declares reaches the forwarder's settings, and the
// default `topics.ensure` creates its topic: the list comes from the
// declarations, not from a copy kept by hand.
func TestDefaultStreamsCoverEncoders(t *testing.T) {
	cfg := DefaultConfig()
	want := append(append(bmp.Streams().Names(), exabgp.Streams().Names()...), forwarder.StreamDLQ)
	for _, s := range want {
		if _, ok := cfg.ForwarderSettings().Topics.Streams.Lookup(s); !ok {
			t.Errorf("forwarder settings lack stream %q", s)
		}
		if !slices.Contains(cfg.Forwarder.Topics.Ensure, s) {
			t.Errorf("forwarder.topics.ensure default lacks %q", s)
		}
	}
	cfg.Forwarder.Topics.Overrides = map[string]string{"exabgp.rout": "x"}
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "forwarder.topics.overrides.exabgp.rout: no stream") {
		t.Fatalf("override of an undeclared stream: %v", err)
	}
}

// configs/bgpedge.yaml claims to show every key with its default: loading
// it must give exactly DefaultConfig().
func TestExampleShowsDefaults(t *testing.T) {
	cfg, err := Load(LoadOptions{File: filepath.Join(testenv.RepoRoot(t), "configs", "bgpedge.yaml"), FileRequired: true})
	if err != nil {
		t.Fatal(err)
	}
	// %+v prints nil and empty slices and maps alike, as YAML cannot tell them apart.
	if got, want := fmt.Sprintf("%+v", cfg), fmt.Sprintf("%+v", DefaultConfig()); got != want {
		t.Errorf("configs/bgpedge.yaml differs from DefaultConfig():\nfile:     %s\ndefaults: %s", got, want)
	}
}

// TestEnvWarnings: a BGPEDGE_* variable that sets nothing is reported, with
// the variable it was probably meant to be, and so is an empty one; the
// variables that set keys, and other programs' variables, are not.
func TestEnvWarnings(t *testing.T) {
	got := EnvWarnings([]string{
		"BGPEDGE_BUFFER_DIR=/var/lib/bgpedge/spool",
		"BGPEDGE_BUFER_DIR=/x",                // one letter missing
		"BGPEDGE_FORWARDER_KAFKA_BROKER=k1:1", // plural missing
		"BGPEDGE_SOMETHING_ELSE=1",            // nothing near
		"BGPEDGE_BMP_LISTEN=",                 // empty
		"PATH=/usr/bin",
		"BGPEDGE_HTTP_LISTEN=127.0.0.1:1=2", // '=' in a value
	})
	want := []string{
		"BGPEDGE_BMP_LISTEN is empty and ignored: unset it, or set the key in the file",
		"BGPEDGE_BUFER_DIR sets no configuration key (did you mean BGPEDGE_BUFFER_DIR?)",
		"BGPEDGE_FORWARDER_KAFKA_BROKER sets no configuration key (did you mean BGPEDGE_FORWARDER_KAFKA_BROKERS?)",
		"BGPEDGE_SOMETHING_ELSE sets no configuration key",
	}
	if !slices.Equal(got, want) {
		t.Fatalf("EnvWarnings =\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}

	// config validate prints them and still passes.
	t.Setenv("BGPEDGE_BUFER_DIR", "/x")
	t.Chdir(t.TempDir())
	var stdout, stderr bytes.Buffer
	f := filepath.Join(t.TempDir(), "c.yaml")
	if err := os.WriteFile(f, []byte("forwarder:\n  enabled: false\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if code := Main(t.Context(), []string{"config", "validate", "--config", f}, strings.NewReader(""), &stdout, &stderr); code != 0 {
		t.Fatalf("exit code %d (stderr %q)", code, stderr.String())
	}
	if w := "bgpedge: warning: BGPEDGE_BUFER_DIR sets no configuration key (did you mean BGPEDGE_BUFFER_DIR?)"; !strings.Contains(stderr.String(), w) {
		t.Fatalf("stderr %q lacks %q", stderr.String(), w)
	}
}

// TestStreamsDeclared: every stream is declared once, and every raw stream
// names the record kind it carries, so the raw encoder needs no list of
// sources.
func TestStreamsDeclared(t *testing.T) {
	seen := map[string]bool{}
	for _, s := range Streams() {
		if seen[s.Name] {
			t.Errorf("stream %q declared twice", s.Name)
		}
		seen[s.Name] = true
		if s.Format == record.FormatRaw && s.Kind != 0 {
			if r, ok := Streams().RawOf(s.Kind); !ok || r.Name != s.Name {
				t.Errorf("RawOf(%s) = %+v, want %s", s.Kind, r, s.Name)
			}
		}
	}
	for _, k := range []record.Kind{record.KindBMP, record.KindExaBGP} {
		if _, ok := Streams().RawOf(k); !ok {
			t.Errorf("no raw stream declared for %s", k)
		}
	}
}
