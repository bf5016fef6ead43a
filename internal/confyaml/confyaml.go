// Package confyaml decodes memberd's YAML configuration files (memberd.yaml,
// relay.yaml) strictly: unknown keys are errors, and every error names the
// key path, the line and what the value should look like, never Go types.
package confyaml

import (
	"bytes"
	"errors"
	"fmt"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// Decode decodes a YAML config file into out (a pointer to a config
// struct), refusing unknown keys. Its errors name the key path, the line
// and what the value should look like, not Go types:
//
//	relay.quic_timeot: line 12: unknown key; did you mean quic_timeout? (keys of relay: proxy, no_env_proxy, quic_timeout, reprobe_interval)
//	ledger.snapshot_bytes: line 12: want a size like 4MiB or 4194304, got "4 megs"
//
// An empty file is io.EOF, as from yaml.Decoder.
func Decode(b []byte, out any) error {
	var root yaml.Node
	if err := yaml.Unmarshal(b, &root); err != nil {
		return err // syntax: yaml's own "yaml: line N: ..." names the line
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	err := dec.Decode(out)
	if err == nil {
		return nil
	}
	t := reflect.TypeOf(out).Elem()
	var te *yaml.TypeError
	if errors.As(err, &te) {
		msgs := make([]string, 0, len(te.Errors))
		for _, m := range te.Errors {
			msgs = append(msgs, explainConfigError(m, &root, t))
		}
		return errors.New(strings.Join(msgs, "; "))
	}
	if m := lineMsg.FindStringSubmatch(err.Error()); m != nil {
		return errors.New(explainConfigError(err.Error(), &root, t))
	}
	return err
}

var (
	lineMsg      = regexp.MustCompile(`^(?:yaml: )?line (\d+): (.*)$`)
	unknownField = regexp.MustCompile(`^field (\S+) not found in type`)
	cannotDecode = regexp.MustCompile("^cannot unmarshal !!(\\w+)(?: `(.*)`)? into (\\S+)$")
)

// explainConfigError rewrites one of yaml's "line N: ..." messages.
func explainConfigError(msg string, root *yaml.Node, t reflect.Type) string {
	m := lineMsg.FindStringSubmatch(msg)
	if m == nil {
		return msg
	}
	line, _ := strconv.Atoi(m[1])
	rest := m[2]
	at := func(path string) string {
		if path == "" {
			return fmt.Sprintf("line %d", line)
		}
		return fmt.Sprintf("%s: line %d", path, line)
	}
	if u := unknownField.FindStringSubmatch(rest); u != nil {
		path := nodePath(root, func(k, _ *yaml.Node) bool { return k != nil && k.Line == line && k.Value == u[1] })
		return at(path) + ": unknown key" + knownKeysHint(t, path, u[1])
	}
	if c := cannotDecode.FindStringSubmatch(rest); c != nil {
		kind, got := yaml.ScalarNode, fmt.Sprintf("%q", c[2])
		switch c[1] {
		case "map":
			kind, got = yaml.MappingNode, "a mapping (key: value lines)"
		case "seq":
			kind, got = yaml.SequenceNode, "a list"
		}
		path := nodePath(root, func(_, v *yaml.Node) bool {
			return v.Line == line && v.Kind == kind && (kind != yaml.ScalarNode || v.Value == c[2])
		})
		return fmt.Sprintf("%s: want %s, got %s", at(path), wantFor(fieldType(t, path)), got)
	}
	// Our own UnmarshalYAML errors ("line N: want ..."): the scalar on line.
	path := nodePath(root, func(_, v *yaml.Node) bool { return v.Line == line && v.Kind == yaml.ScalarNode })
	return at(path) + ": " + rest
}

// nodePath returns the key path (a.b[2].c) of the first key/value pair
// (k is nil for list items) that match accepts, or "".
func nodePath(n *yaml.Node, match func(k, v *yaml.Node) bool) string {
	var walk func(n *yaml.Node, prefix string) (string, bool)
	walk = func(n *yaml.Node, prefix string) (string, bool) {
		switch n.Kind {
		case yaml.DocumentNode:
			for _, c := range n.Content {
				if p, ok := walk(c, prefix); ok {
					return p, true
				}
			}
		case yaml.MappingNode:
			for i := 0; i+1 < len(n.Content); i += 2 {
				k, v := n.Content[i], n.Content[i+1]
				p := k.Value
				if prefix != "" {
					p = prefix + "." + k.Value
				}
				if match(k, v) {
					return p, true
				}
				if sub, ok := walk(v, p); ok {
					return sub, true
				}
			}
		case yaml.SequenceNode:
			for i, c := range n.Content {
				p := fmt.Sprintf("%s[%d]", prefix, i)
				if match(nil, c) {
					return p, true
				}
				if sub, ok := walk(c, p); ok {
					return sub, true
				}
			}
		}
		return "", false
	}
	p, _ := walk(n, "")
	return p
}

// fieldType is the Go type of the config key at path (nil if unknown).
func fieldType(t reflect.Type, path string) reflect.Type {
	if path == "" {
		return t
	}
	for _, part := range strings.Split(path, ".") {
		name, idx, _ := strings.Cut(part, "[")
		t = structField(t, name)
		if t == nil {
			return nil
		}
		for ; idx != ""; _, idx, _ = strings.Cut(idx, "[") {
			for t.Kind() == reflect.Pointer {
				t = t.Elem()
			}
			if t.Kind() != reflect.Slice && t.Kind() != reflect.Array {
				return nil
			}
			t = t.Elem()
		}
	}
	return t
}

func structField(t reflect.Type, name string) reflect.Type {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.Map:
		return t.Elem()
	case reflect.Struct:
		for i := range t.NumField() {
			if f := t.Field(i); yamlName(f) == name {
				return f.Type
			}
		}
	}
	return nil
}

func yamlName(f reflect.StructField) string {
	tag, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
	if tag == "-" || !f.IsExported() {
		return ""
	}
	if tag == "" {
		return strings.ToLower(f.Name)
	}
	return tag
}

// knownKeysHint lists the keys of the mapping holding path, with the
// closest one to the unknown key first.
func knownKeysHint(t reflect.Type, path, unknown string) string {
	parent := ""
	if i := strings.LastIndexByte(path, '.'); i >= 0 {
		parent = path[:i]
	}
	pt := fieldType(t, parent)
	for pt != nil && (pt.Kind() == reflect.Pointer || pt.Kind() == reflect.Slice) {
		pt = pt.Elem()
	}
	if pt == nil || pt.Kind() != reflect.Struct {
		return ""
	}
	var keys []string
	for i := range pt.NumField() {
		if n := yamlName(pt.Field(i)); n != "" {
			keys = append(keys, n)
		}
	}
	best, bestD := "", 3 // suggest only close names
	for _, k := range keys {
		if d := editDistance(unknown, k); d < bestD {
			best, bestD = k, d
		}
	}
	of := "the top level"
	if parent != "" {
		of = parent
	}
	hint := ""
	if best != "" {
		hint = "; did you mean " + best + "?"
	}
	sort.Strings(keys)
	return fmt.Sprintf("%s (keys of %s: %s)", hint, of, strings.Join(keys, ", "))
}

// wantFor describes the values a Go type accepts, for a user.
func wantFor(t reflect.Type) string {
	if t == nil {
		return "another kind of value"
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch {
	case t == reflect.TypeOf(time.Duration(0)):
		return "a duration like 500ms, 1s or 2m"
	case t == reflect.TypeOf(ByteSize(0)):
		return byteSizeWant
	}
	switch t.Kind() {
	case reflect.Bool:
		return "true or false"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return "a whole number"
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		if t.Bits() == 16 {
			return "a whole number 0..65535 (a port)"
		}
		return "a whole number, 0 or more"
	case reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.String:
		return "a single value (text)"
	case reflect.Slice, reflect.Array:
		return "a list (lines starting with '- ')"
	case reflect.Map, reflect.Struct:
		return "a mapping (indented key: value lines)"
	}
	return "another kind of value"
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
