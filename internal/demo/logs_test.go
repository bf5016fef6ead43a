package demo

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/memberd/memberd/internal/logtest"
)

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
	L, err := Init(Options{Dir: filepath.Join(t.TempDir(), "demo"), Members: 3, Relays: 2, HSM: "soft"})
	if err != nil {
		t.Fatal(err)
	}
	var logs logtest.Buffer
	log := slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	d, err := Start(ctx, L, &RunOptions{Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Stop()
	if err := d.WaitConnected(ctx); err != nil {
		t.Fatal(err)
	}
	if err := d.ServeEcho(ctx, EchoPort); err != nil {
		t.Fatal(err)
	}
	for _, c := range d.CheckAll(ctx, EchoPort) {
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
	for _, c := range d.CheckAll(ctx, EchoPort) { // over the other relay
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
	sc := bufio.NewScanner(strings.NewReader(logs.String()))
	sc.Buffer(nil, 1<<20)
	n, bad := 0, 0
	for sc.Scan() {
		n++
		line := sc.Bytes()
		kv, err := logtest.JSONLine(line)
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
