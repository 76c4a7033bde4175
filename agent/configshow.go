package agent

import (
	"bytes"
	"encoding"
	"fmt"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// masked replaces secret values in `config show` output.
const masked = "********"

// isSecretKey says whether a key holds a secret value (not a path to one:
// creds and key file paths are shown, so an operator can check them).
func isSecretKey(name string) bool {
	for _, s := range []string{"password", "token", "secret"} {
		if name == s || strings.HasSuffix(name, "_"+s) {
			return true
		}
	}
	return false
}

// RenderYAML writes cfg as YAML in the file's key order, secrets masked.
func RenderYAML(cfg Config) ([]byte, error) {
	n := toNode(reflect.ValueOf(cfg), "")
	doc := &yaml.Node{Kind: yaml.DocumentNode, Content: []*yaml.Node{n}}
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(doc); err != nil {
		return nil, fmt.Errorf("render config: %w", err)
	}
	if err := enc.Close(); err != nil {
		return nil, fmt.Errorf("render config: %w", err)
	}
	return buf.Bytes(), nil
}

var textMarshalerType = reflect.TypeOf((*encoding.TextMarshaler)(nil)).Elem()

func scalar(s string, tag string) *yaml.Node {
	return &yaml.Node{Kind: yaml.ScalarNode, Value: s, Tag: tag}
}

func toNode(v reflect.Value, name string) *yaml.Node {
	if isSecretKey(name) && v.Kind() == reflect.String {
		if v.String() == "" {
			return scalar("", "!!str")
		}
		return scalar(masked, "!!str")
	}
	if v.Kind() == reflect.Pointer {
		if v.IsNil() {
			return scalar("null", "!!null")
		}
		v = v.Elem()
	}
	if v.Type() == reflect.TypeOf(time.Duration(0)) {
		return scalar(time.Duration(v.Int()).String(), "!!str")
	}
	if v.Type().Implements(textMarshalerType) && v.Kind() != reflect.Struct || isLeafStruct(v.Type()) {
		if m, ok := v.Interface().(encoding.TextMarshaler); ok {
			b, err := m.MarshalText()
			if err == nil {
				return scalar(string(b), "!!str")
			}
		}
	}
	switch v.Kind() {
	case reflect.Struct:
		m := &yaml.Node{Kind: yaml.MappingNode}
		appendFields(m, v)
		return m
	case reflect.Map:
		m := &yaml.Node{Kind: yaml.MappingNode}
		keys := v.MapKeys()
		sort.Slice(keys, func(i, j int) bool { return fmt.Sprint(keys[i]) < fmt.Sprint(keys[j]) })
		for _, k := range keys {
			ks := fmt.Sprint(k.Interface())
			m.Content = append(m.Content, scalar(ks, "!!str"), toNode(v.MapIndex(k), ks))
		}
		return m
	case reflect.Slice, reflect.Array:
		s := &yaml.Node{Kind: yaml.SequenceNode, Style: yaml.FlowStyle}
		for i := range v.Len() {
			s.Content = append(s.Content, toNode(v.Index(i), name))
		}
		return s
	case reflect.String:
		return scalar(v.String(), "!!str")
	case reflect.Bool:
		return scalar(fmt.Sprint(v.Bool()), "!!bool")
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return scalar(fmt.Sprint(v.Int()), "!!int")
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return scalar(fmt.Sprint(v.Uint()), "!!int")
	case reflect.Float32, reflect.Float64:
		f := strconv.FormatFloat(v.Float(), 'g', -1, 64)
		if !strings.ContainsAny(f, ".eEn") {
			f += ".0"
		}
		return scalar(f, "!!float")
	}
	return scalar(fmt.Sprint(v.Interface()), "!!str")
}

func appendFields(m *yaml.Node, v reflect.Value) {
	t := v.Type()
	for i := range t.NumField() {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		key, squash := fieldKey(f)
		if key == "-" {
			continue
		}
		fv := v.Field(i)
		if squash && fv.Kind() == reflect.Struct {
			appendFields(m, fv)
			continue
		}
		m.Content = append(m.Content, scalar(key, "!!str"), toNode(fv, key))
	}
}
