package app

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"
)

// uniqueKeys decodes one JSON value from line, walking its tokens, and
// fails on any object that holds a key twice (encoding/json's Unmarshal
// keeps the last one silently, as jq and most log shippers do). It returns
// the top-level object's keys and values (strings as strings, other values
// as their JSON text).
func uniqueKeys(line []byte) (map[string]string, error) {
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.UseNumber()
	top := map[string]string{}
	if err := uniqueValue(dec, "", top); err != nil {
		return nil, err
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("more than one JSON value on the line")
	}
	return top, nil
}

// uniqueValue reads one value at path; top, when set, collects the keys of
// the object read.
func uniqueValue(dec *json.Decoder, path string, top map[string]string) error {
	tok, err := dec.Token()
	if err != nil {
		return err
	}
	switch tok {
	case json.Delim('{'):
		seen := map[string]bool{}
		for dec.More() {
			k, err := dec.Token()
			if err != nil {
				return err
			}
			key, _ := k.(string)
			if seen[key] {
				return fmt.Errorf("key %q appears twice in %s", key, cmp(path, "the line"))
			}
			seen[key] = true
			if top == nil {
				if err := uniqueValue(dec, path+"."+key, nil); err != nil {
					return err
				}
				continue
			}
			var raw json.RawMessage
			if err := dec.Decode(&raw); err != nil {
				return err
			}
			if err := uniqueValue(json.NewDecoder(bytes.NewReader(raw)), path+"."+key, nil); err != nil {
				return err
			}
			var s string
			if json.Unmarshal(raw, &s) == nil {
				top[key] = s
			} else {
				top[key] = string(raw)
			}
		}
		_, err = dec.Token() // '}'
		return err
	case json.Delim('['):
		for i := 0; dec.More(); i++ {
			if err := uniqueValue(dec, fmt.Sprintf("%s[%d]", path, i), nil); err != nil {
				return err
			}
		}
		_, err = dec.Token() // ']'
		return err
	}
	return nil // a scalar
}

func cmp(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

func TestUniqueKeys(t *testing.T) {
	for _, tc := range []struct {
		name, line, err string
	}{
		{"flat", `{"time":"t","level":"INFO","msg":"m","component":"tunnel","member":"m1"}`, ""},
		{"nested", `{"a":{"b":1,"c":[{"d":1},{"d":2}]},"b":2}`, ""},
		{"top-level duplicate", `{"component":"appliance","member":"m1","component":"tunnel"}`, `key "component" appears twice in the line`},
		{"nested duplicate", `{"err":{"x":1,"x":2}}`, `key "x" appears twice in .err`},
		{"duplicate in array", `{"relays":[{"id":"r1","id":"r2"}]}`, `key "id" appears twice in .relays[0]`},
		{"not JSON", `time=x level=INFO`, "invalid character"},
		{"two values", `{"a":1}{"b":2}`, "more than one JSON value"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := uniqueKeys([]byte(tc.line))
			if tc.err == "" && err != nil || tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)) {
				t.Fatalf("uniqueKeys(%s) = %v, want %q", tc.line, err, tc.err)
			}
		})
	}
	got, err := uniqueKeys([]byte(`{"msg":"m","n":3,"o":{"p":true}}`))
	if err != nil || got["msg"] != "m" || got["n"] != "3" || got["o"] != `{"p":true}` {
		t.Fatalf("top-level keys: %v %v", got, err)
	}
}

// lockedBuffer is an io.Writer safe for the goroutines of a whole demo.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) Bytes() []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	return bytes.Clone(b.buf.Bytes())
}

// TestDemoLogsOneKeyPerLine runs the demo consortium (3 members with their
// ledger, 2 relays) with a JSON logger at debug level, as 'memberd run
// --log-format json' logs under systemd, drives it through the tunnel, the
// ledger, a policy push and a relay loss, and parses every line it logged:
// each must be one JSON object with every key once (at every depth), and
// name its component; every appliance line names its member.
func TestDemoLogsOneKeyPerLine(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a consortium")
	}
	L, err := DemoInit(DemoOptions{Dir: filepath.Join(t.TempDir(), "demo"), Members: 3, Relays: 2, HSM: "soft"})
	if err != nil {
		t.Fatal(err)
	}
	var logs lockedBuffer
	log := slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	d, err := StartDemo(ctx, L, &DemoRunOptions{Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Stop()
	if err := d.WaitConnected(ctx); err != nil {
		t.Fatal(err)
	}
	if err := d.ServeEcho(ctx, demoEchoPort); err != nil {
		t.Fatal(err)
	}
	for _, c := range d.CheckAll(ctx, demoEchoPort) {
		if c.Err != nil {
			t.Fatalf("%s → %s: %v", c.From, c.To, c.Err)
		}
	}
	if _, err := d.CheckLedger(ctx, L.Members[1], 5); err != nil {
		t.Fatal(err)
	}
	if _, err := d.PushPolicy(ctx, L.Members[0], L.Genesis.Marshal()); err != nil {
		t.Fatal(err)
	}
	if err := d.StopRelay(L.Relays[0]); err != nil {
		t.Fatal(err)
	}
	for _, c := range d.CheckAll(ctx, demoEchoPort) { // over the other relay
		if c.Err != nil {
			t.Fatalf("after relay %s stopped: %s → %s: %v", L.Relays[0], c.From, c.To, c.Err)
		}
	}
	if err := d.Stop(); err != nil {
		t.Fatal(err)
	}

	members := map[string]bool{}
	for _, m := range L.Members {
		members[m] = true
	}
	perComponent := map[string]int{}
	sc := bufio.NewScanner(bytes.NewReader(logs.Bytes()))
	sc.Buffer(nil, 1<<20)
	n, bad := 0, 0
	for sc.Scan() {
		n++
		line := sc.Bytes()
		kv, err := uniqueKeys(line)
		if err == nil && kv["component"] == "" {
			err = errors.New("no component key")
		}
		if err == nil && kv["component"] != "relay" && !members[kv["member"]] {
			err = fmt.Errorf("an appliance line without a member key (member=%q)", kv["member"])
		}
		if err != nil {
			if bad++; bad <= 20 {
				t.Errorf("log line %d: %v\n%s", n, err, line)
			}
			continue
		}
		perComponent[kv["component"]+sub(kv["sub"])]++
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if bad > 0 {
		t.Fatalf("%d of %d log lines are not JSON with unique keys", bad, n)
	}
	names := make([]string, 0, len(perComponent))
	for c, k := range perComponent {
		names = append(names, fmt.Sprintf("%s=%d", c, k))
	}
	sort.Strings(names)
	t.Logf("%d log lines, each JSON with unique keys; per component: %s", n, strings.Join(names, " "))
	for _, want := range []string{"appliance", "relay", "relay_client", "tunnel", "ledger"} {
		if perComponent[want] == 0 {
			t.Errorf("no log line from component %q: the test did not exercise it", want)
		}
	}
}

func sub(s string) string {
	if s == "" {
		return ""
	}
	return "/" + s
}
