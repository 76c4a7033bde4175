package agent

import (
	"encoding"
	"errors"
	"fmt"
	"math"
	"os"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/go-viper/mapstructure/v2"
	"github.com/spf13/viper"
)

// DefaultConfigFile is where the packaged agent reads its bootstrap configuration.
const DefaultConfigFile = "/etc/bgpedge/bgpedge.yaml"

// EnvPrefix prefixes every environment variable that sets a configuration key:
// buffer.dir is BGPEDGE_BUFFER_DIR.
const EnvPrefix = "BGPEDGE_"

// keyDelim is viper's internal key separator. It is not "." because map keys
// (stream names such as "bmp.raw") contain dots.
const keyDelim = "::"

var (
	// ErrInvalidConfig wraps every decoding and validation failure.
	ErrInvalidConfig = errors.New("invalid configuration")
	// ErrNoConfigFile is returned when an explicitly named file does not exist.
	ErrNoConfigFile = errors.New("configuration file not found")
)

// LoadOptions says where Load reads from.
type LoadOptions struct {
	// File is the YAML file. Empty means DefaultConfigFile when it exists,
	// and defaults plus environment otherwise.
	File string
	// FileRequired makes a missing File an error (an explicit --config).
	FileRequired bool
	// Overrides are applied last, keyed by dotted key (from command-line flags).
	Overrides map[string]any
}

// Load reads the bootstrap configuration: defaults, then the YAML file, then
// BGPEDGE_* environment variables, then overrides. Decoding is strict: an
// unknown key or a value of the wrong shape is an error naming the key.
// Load does not validate; call Config.Validate.
func Load(opts LoadOptions) (Config, error) {
	v := viper.NewWithOptions(viper.KeyDelimiter(keyDelim))
	v.SetConfigType("yaml")

	file := opts.File
	if file == "" {
		file = DefaultConfigFile
	}
	f, err := os.Open(file)
	switch {
	case err == nil:
		defer f.Close()
		if err := v.ReadConfig(f); err != nil {
			return Config{}, fmt.Errorf("%w: %s: %w", ErrInvalidConfig, file, err)
		}
	case errors.Is(err, os.ErrNotExist) && (opts.File == "" || !opts.FileRequired):
		// No file: defaults and environment only.
	case errors.Is(err, os.ErrNotExist):
		return Config{}, fmt.Errorf("%w: %s", ErrNoConfigFile, file)
	default:
		return Config{}, readError(file, err)
	}
	return decode(v, opts.Overrides)
}

// readError reports a configuration file that exists but cannot be read.
// Permission denied is a configuration error (exit status 78): restarting
// does not change the file's mode.
func readError(file string, err error) error {
	if errors.Is(err, os.ErrPermission) {
		return fmt.Errorf("%w: %w", ErrInvalidConfig, err)
	}
	return fmt.Errorf("read config %s: %w", file, err)
}

// LoadBytes decodes a YAML document strictly (used for fleet documents and tests).
// Environment variables are not consulted.
func LoadBytes(doc []byte) (Config, error) {
	v := viper.NewWithOptions(viper.KeyDelimiter(keyDelim))
	v.SetConfigType("yaml")
	if err := v.ReadConfig(strings.NewReader(string(doc))); err != nil {
		return Config{}, fmt.Errorf("%w: %w", ErrInvalidConfig, err)
	}
	return decodeSettings(v.AllSettings())
}

func decode(v *viper.Viper, overrides map[string]any) (Config, error) {
	for _, k := range envKeys() {
		if err := v.BindEnv(k, envName(k)); err != nil {
			return Config{}, fmt.Errorf("bind env %s: %w", k, err)
		}
	}
	for k, val := range overrides {
		v.Set(strings.ReplaceAll(k, ".", keyDelim), val)
	}
	return decodeSettings(v.AllSettings())
}

// envName is the environment variable for a key: buffer::max_bytes → BGPEDGE_BUFFER_MAX_BYTES.
func envName(key string) string {
	return EnvPrefix + strings.ToUpper(strings.ReplaceAll(key, keyDelim, "_"))
}

// envKeys are the keys the environment can set: every leaf, and every map
// as a whole ("k=v,k=v"; it replaces the file's map).
func envKeys() []string {
	schema := configSchema(reflect.TypeOf(Config{}))
	keys := append([]string(nil), schema.leaves...)
	for m := range schema.maps {
		keys = append(keys, m)
	}
	sort.Strings(keys)
	return keys
}

// EnvNames lists every environment variable that sets a key, for documentation.
func EnvNames() []string {
	keys := envKeys()
	out := make([]string, 0, len(keys))
	for _, k := range keys {
		out = append(out, envName(k))
	}
	sort.Strings(out)
	return out
}

// renamedKeys maps keys of earlier versions to their names now, so that a
// file written for an earlier version fails with the key to use instead.
// Every NATS connection takes the same block (internal/natsconn).
var renamedKeys = map[string]string{
	"fleet.url":                      "fleet.nats.url",
	"fleet.creds_file":               "fleet.nats.creds_file",
	"fleet.token":                    "fleet.nats.token",
	"exabgp.commands.nats.nkey_file": "exabgp.commands.nats.nkey_seed_file",
	"exabgp.commands.nats.tls_ca":    "exabgp.commands.nats.tls.ca_file (with tls.enabled: true)",
	"exabgp.commands.nats.tls_cert":  "exabgp.commands.nats.tls.cert_file (with tls.enabled: true)",
	"exabgp.commands.nats.tls_key":   "exabgp.commands.nats.tls.key_file",
}

func decodeSettings(settings map[string]any) (Config, error) {
	schema := configSchema(reflect.TypeOf(Config{}))
	var errs []error
	for _, k := range flattenKeys(settings, "") {
		if schema.known(k) {
			continue
		}
		if to, ok := renamedKeys[displayKey(k)]; ok {
			errs = append(errs, fmt.Errorf("%s: renamed: use %s", displayKey(k), to))
			continue
		}
		errs = append(errs, fmt.Errorf("%s: unknown key", displayKey(k)))
	}
	cfg := DefaultConfig()
	dec, err := mapstructure.NewDecoder(&mapstructure.DecoderConfig{
		DecodeHook: mapstructure.ComposeDecodeHookFunc(
			scalarFromStringHook,
			exactNumberHook,
			mapstructure.StringToSliceHookFunc(","),
			mapstructure.TextUnmarshallerHookFunc(),
		),
		ErrorUnused:      true,
		WeaklyTypedInput: false,
		Result:           &cfg,
		TagName:          "mapstructure",
	})
	if err != nil {
		return Config{}, fmt.Errorf("config decoder: %w", err)
	}
	if err := dec.Decode(settings); err != nil {
		for _, e := range flattenDecodeErrors(err) {
			// Unknown keys are already reported above, one line each.
			if !strings.Contains(e.Error(), "has invalid keys") {
				errs = append(errs, e)
			}
		}
	}
	if len(errs) > 0 {
		return Config{}, fmt.Errorf("%w:\n%w", ErrInvalidConfig, errors.Join(errs...))
	}
	return cfg, nil
}

// flattenDecodeErrors turns mapstructure's nested errors into one
// "full.key: reason" line each.
func flattenDecodeErrors(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		var out []error
		for _, e := range j.Unwrap() {
			out = append(out, flattenDecodeErrors(e)...)
		}
		return out
	}
	de, ok := err.(*mapstructure.DecodeError)
	if !ok {
		if inner := errors.Unwrap(err); inner != nil {
			return flattenDecodeErrors(inner)
		}
		return []error{err}
	}
	inner := de.Unwrap()
	if _, ok := inner.(interface{ Unwrap() []error }); ok {
		return flattenDecodeErrors(inner)
	}
	var nested *mapstructure.DecodeError
	if errors.As(inner, &nested) {
		return flattenDecodeErrors(inner)
	}
	return []error{fmt.Errorf("%s: %s", displayKey(de.Name()), reason(inner))}
}

// reason shortens mapstructure's wording to what an operator needs.
func reason(err error) string {
	var pe *mapstructure.ParseError
	if errors.As(err, &pe) && pe.Err != nil {
		return fmt.Sprintf("invalid value %v: %v", quoteValue(pe.Value), pe.Err)
	}
	var ue *mapstructure.UnconvertibleTypeError
	if errors.As(err, &ue) {
		return fmt.Sprintf("invalid value %v: expected %s", quoteValue(ue.Value), friendlyType(ue.Expected.Type()))
	}
	return err.Error()
}

func quoteValue(v any) string {
	if s, ok := v.(string); ok {
		return strconv.Quote(s)
	}
	return fmt.Sprintf("%v", v)
}

func friendlyType(t reflect.Type) string {
	switch t {
	case reflect.TypeOf(time.Duration(0)):
		return "a duration such as 5s"
	case reflect.TypeOf(ByteSize(0)):
		return "a size such as 64MiB"
	}
	switch t.Kind() {
	case reflect.Slice:
		return "a list"
	case reflect.Map, reflect.Struct:
		return "a mapping"
	}
	return t.String()
}

func displayKey(k string) string { return strings.ReplaceAll(k, keyDelim, ".") }

// scalarFromStringHook parses strings (environment variables, quoted YAML)
// into booleans and numbers; integers accept size units ("64MiB").
func scalarFromStringHook(from, to reflect.Type, data any) (any, error) {
	s, ok := data.(string)
	if !ok || from.Kind() != reflect.String {
		return data, nil
	}
	if to == reflect.TypeOf(time.Duration(0)) {
		d, err := time.ParseDuration(strings.TrimSpace(s))
		if err != nil {
			return nil, fmt.Errorf("invalid duration %q (use e.g. 500ms, 30s, 5m)", s)
		}
		return d, nil
	}
	if reflect.PointerTo(to).Implements(reflect.TypeOf((*encoding.TextUnmarshaler)(nil)).Elem()) {
		return data, nil
	}
	s = strings.TrimSpace(s)
	switch to.Kind() {
	case reflect.Bool:
		b, err := strconv.ParseBool(s)
		if err != nil {
			return nil, fmt.Errorf("invalid value %q: expected true or false", s)
		}
		return b, nil
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		n, err := ParseByteSize(s)
		if err != nil {
			return nil, fmt.Errorf("invalid value %q: expected an integer", s)
		}
		return int64(n), nil
	case reflect.Float32, reflect.Float64:
		f, err := strconv.ParseFloat(s, 64)
		if err != nil {
			return nil, fmt.Errorf("invalid value %q: expected a number", s)
		}
		return f, nil
	case reflect.Map:
		// A map from the environment: "bmp.raw=t1,bmp.peer=t2".
		if to.Key().Kind() != reflect.String || to.Elem().Kind() != reflect.String {
			return data, nil
		}
		m := map[string]string{}
		for _, item := range strings.Split(s, ",") {
			k, val, ok := strings.Cut(strings.TrimSpace(item), "=")
			if k, val = strings.TrimSpace(k), strings.TrimSpace(val); !ok || k == "" || val == "" {
				return nil, fmt.Errorf("invalid value %q: expected key=value pairs, comma-separated", s)
			}
			m[k] = val
		}
		return m, nil
	}
	return data, nil
}

// exactNumberHook rejects numbers their field cannot hold as written, which
// the decoder would otherwise change silently: a bare number for a duration
// (YAML's 30 would be 30ns; 0 is accepted), a fraction for an integer, and an
// integer outside the field's range (it would wrap).
func exactNumberHook(from, to reflect.Type, data any) (any, error) {
	if from == reflect.TypeOf(time.Duration(0)) {
		return data, nil // parsed from text, with its unit
	}
	v := reflect.ValueOf(data)
	var n float64
	switch from.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		n = float64(v.Int())
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		n = float64(v.Uint())
	case reflect.Float32, reflect.Float64:
		n = v.Float()
	default:
		return data, nil
	}
	if to == reflect.TypeOf(time.Duration(0)) {
		if n != 0 {
			return nil, fmt.Errorf("duration %v has no unit (use e.g. %vs or %vms)", data, data, data)
		}
		return time.Duration(0), nil
	}
	switch to.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
	default:
		return data, nil
	}
	if n != math.Trunc(n) {
		return nil, fmt.Errorf("%v is not a whole number", data)
	}
	z := reflect.Zero(to)
	out := false
	if to.Kind() >= reflect.Uint && to.Kind() <= reflect.Uint64 {
		out = n < 0 || n >= 1<<64 || z.OverflowUint(uint64(n))
	} else {
		out = n < -(1<<63) || n >= 1<<63 || z.OverflowInt(int64(n))
	}
	if out {
		return nil, fmt.Errorf("%v is out of range for this setting", data)
	}
	return data, nil
}

// schema is the set of keys a config type accepts.
type schema struct {
	leaves   []string        // scalar or list keys, bindable to env
	maps     map[string]bool // keys whose children are free-form (map fields)
	sections map[string]bool // struct keys
}

func (s schema) known(key string) bool {
	for _, l := range s.leaves {
		if l == key {
			return true
		}
	}
	if s.sections[key] {
		return true
	}
	for m := range s.maps {
		if key == m || strings.HasPrefix(key, m+keyDelim) {
			return true
		}
	}
	return false
}

var textUnmarshalerType = reflect.TypeOf((*encoding.TextUnmarshaler)(nil)).Elem()

func configSchema(t reflect.Type) schema {
	s := schema{maps: map[string]bool{}, sections: map[string]bool{}}
	walkSchema(t, "", &s)
	sort.Strings(s.leaves)
	return s
}

func walkSchema(t reflect.Type, prefix string, s *schema) {
	for i := range t.NumField() {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		name, squash := fieldKey(f)
		if name == "-" {
			continue
		}
		ft := f.Type
		if ft.Kind() == reflect.Pointer {
			ft = ft.Elem()
		}
		if squash && ft.Kind() == reflect.Struct {
			walkSchema(ft, prefix, s)
			continue
		}
		key := name
		if prefix != "" {
			key = prefix + keyDelim + name
		}
		switch {
		case isLeafStruct(ft):
			s.leaves = append(s.leaves, key)
		case ft.Kind() == reflect.Struct:
			s.sections[key] = true
			walkSchema(ft, key, s)
		case ft.Kind() == reflect.Map:
			s.maps[key] = true
		default:
			s.leaves = append(s.leaves, key)
		}
	}
}

func fieldKey(f reflect.StructField) (name string, squash bool) {
	tag := f.Tag.Get("mapstructure")
	parts := strings.Split(tag, ",")
	for _, p := range parts[1:] {
		if p == "squash" {
			squash = true
		}
	}
	if f.Anonymous && tag == "" {
		squash = true
	}
	name = parts[0]
	if name == "" {
		name = strings.ToLower(f.Name)
	}
	return name, squash
}

func isLeafStruct(t reflect.Type) bool {
	if t.Kind() != reflect.Struct {
		return false
	}
	return reflect.PointerTo(t).Implements(textUnmarshalerType) || t == reflect.TypeOf(time.Time{})
}

// flattenKeys lists the leaf keys present in viper's nested settings.
func flattenKeys(m map[string]any, prefix string) []string {
	var out []string
	for k, v := range m {
		key := k
		if prefix != "" {
			key = prefix + keyDelim + k
		}
		if sub, ok := v.(map[string]any); ok && len(sub) > 0 {
			out = append(out, flattenKeys(sub, key)...)
			continue
		}
		out = append(out, key)
	}
	sort.Strings(out)
	return out
}

// EnvWarnings names the BGPEDGE_* variables of environ that Load ignores:
// a name that sets no key (a mistyped variable would otherwise change
// nothing, silently), and an empty value (which does not clear a key).
// The environment is not an error source: it also carries variables of
// other tools that share the prefix.
func EnvWarnings(environ []string) []string {
	known := map[string]bool{}
	names := EnvNames()
	for _, n := range names {
		known[n] = true
	}
	var out []string
	for _, kv := range environ {
		name, val, _ := strings.Cut(kv, "=")
		if !strings.HasPrefix(name, EnvPrefix) {
			continue
		}
		switch {
		case !known[name]:
			w := name + " sets no configuration key"
			if m := closestName(name, names); m != "" {
				w += " (did you mean " + m + "?)"
			}
			out = append(out, w)
		case val == "":
			out = append(out, name+" is empty and ignored: unset it, or set the key in the file")
		}
	}
	sort.Strings(out)
	return out
}

// closestName returns the candidate nearest to name by edit distance, if it
// is near enough to be a typo (at most one edit in four characters).
func closestName(name string, candidates []string) string {
	best, bestD := "", len(name)/4+1
	for _, c := range candidates {
		if d := editDistance(name, c); d < bestD {
			best, bestD = c, d
		}
	}
	return best
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
