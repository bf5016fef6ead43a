package logtest_test

import (
	"strings"
	"testing"

	"github.com/memberd/memberd/internal/logtest"
)

func TestJSONLine(t *testing.T) {
	for _, tc := range []struct {
		name, line, err string
	}{
		{"flat", `{"time":"t","level":"INFO","msg":"m","component":"tunnel","member":"m1"}`, ""},
		{"nested", `{"a":{"b":1,"c":[{"d":1},{"d":2}]},"b":2}`, ""},
		{"top-level duplicate", `{"component":"appliance","member":"m1","component":"tunnel"}`, `key "component" appears twice in the line`},
		{"nested duplicate", `{"err":{"x":1,"x":2}}`, `key "x" appears twice in .err`},
		{"duplicate in array", `{"relays":[{"id":"r1","id":"r2"}]}`, `key "id" appears twice in .relays[0]`},
		{"not JSON", `time=x level=INFO`, "not a JSON object"},
		{"broken JSON", `{"a":1,"b"}`, "expected colon after object key"},
		{"not an object", `["a","a"]`, "not a JSON object"},
		{"two values", `{"a":1}{"b":2}`, "more than one JSON value"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := logtest.JSONLine([]byte(tc.line))
			if tc.err == "" && err != nil || tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)) {
				t.Fatalf("logtest.JSONLine(%s) = %v, want %q", tc.line, err, tc.err)
			}
		})
	}
	got, err := logtest.JSONLine([]byte(`{"msg":"m","n":3,"o":{"p":true}}`))
	if err != nil || got["msg"] != "m" || got["n"] != "3" || got["o"] != `{"p":true}` {
		t.Fatalf("top-level keys: %v %v", got, err)
	}
}
