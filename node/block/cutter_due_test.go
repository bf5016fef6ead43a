package block

import (
	"bytes"
	"reflect"
	"testing"
	"time"

	"github.com/hyperledger/fabric-protos-go-apiv2/common"
	"google.golang.org/protobuf/proto"
)

// dueStep is one step of an adaptive-cutting script: Ordered(env) when env
// is set, else Due(at, inFlight).
type dueStep struct {
	at       time.Duration // since t0
	env      []byte
	inFlight int
	cut      []string // batches expected, each as the ids of its envelopes
	pending  int      // envelopes pending after the step
}

func TestCutterDue(t *testing.T) {
	cfg := CutterConfig{MaxMessageCount: 3, PreferredMaxBytes: 100, AbsoluteMaxBytes: 200, BatchTimeout: time.Second}
	ms := time.Millisecond
	tests := []struct {
		name  string
		steps []dueStep
	}{
		{"nothing in flight: a single envelope is cut at once", []dueStep{
			{0, sizedEnv('a', 10), 0, nil, 1},
			{0, nil, 0, []string{"a"}, 0},
		}},
		{"nothing pending: nothing to cut, in flight or not", []dueStep{
			{0, nil, 0, nil, 0},
			{time.Hour, nil, 2, nil, 0},
		}},
		{"in flight: the batch waits and fills up", []dueStep{
			{0, sizedEnv('a', 10), 1, nil, 1},
			{1 * ms, nil, 1, nil, 1},
			{2 * ms, sizedEnv('b', 10), 1, nil, 2},
			{3 * ms, nil, 1, nil, 2},
			{4 * ms, nil, 0, []string{"ab"}, 0},
		}},
		{"in flight: MaxMessageCount still cuts (Ordered), the rest waits", []dueStep{
			{0, sizedEnv('a', 10), 1, nil, 1},
			{0, sizedEnv('b', 10), 1, nil, 2},
			{0, sizedEnv('c', 10), 1, []string{"abc"}, 0},
			{0, sizedEnv('d', 10), 2, nil, 1},
			{0, nil, 2, nil, 1},
			{5 * ms, nil, 0, []string{"d"}, 0},
		}},
		{"in flight: PreferredMaxBytes still cuts (Ordered)", []dueStep{
			{0, sizedEnv('a', 60), 1, nil, 1},
			{0, sizedEnv('b', 60), 1, []string{"a"}, 1},
			{0, nil, 2, nil, 1},
			{0, nil, 0, []string{"b"}, 0},
		}},
		{"in flight: BatchTimeout still cuts, never later", []dueStep{
			{100 * ms, sizedEnv('a', 10), 1, nil, 1},
			{1099 * ms, nil, 1, nil, 1},
			{1100 * ms, nil, 1, []string{"a"}, 0},
		}},
		{"in flight: a late Due cuts once", []dueStep{
			{0, sizedEnv('a', 10), 1, nil, 1},
			{time.Hour, nil, 5, []string{"a"}, 0},
			{2 * time.Hour, nil, 5, nil, 0},
		}},
		{"negative in flight counts as none", []dueStep{
			{0, sizedEnv('a', 10), 0, nil, 1},
			{0, nil, -1, []string{"a"}, 0},
		}},
	}
	t0 := time.Date(2026, 12, 7, 4, 0, 0, 0, time.UTC)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := NewCutter(cfg)
			if err != nil {
				t.Fatal(err)
			}
			for i, s := range tc.steps {
				now := t0.Add(s.at)
				var got [][][]byte
				if s.env != nil {
					got, _ = c.Ordered(s.env, now)
				} else if b := c.Due(now, s.inFlight); b != nil {
					got = [][][]byte{b}
				}
				if ids := batchIDs(got); !reflect.DeepEqual(ids, s.cut) {
					t.Fatalf("step %d: cut %q, want %q", i, ids, s.cut)
				}
				if n, _ := c.Pending(); n != s.pending {
					t.Fatalf("step %d: %d pending, want %d", i, n, s.pending)
				}
			}
		})
	}
}

// FuzzCutterDue drives Ordered and Due with arbitrary sizes, clock steps and
// in-flight counts, and checks Fabric's limits still hold with adaptive
// cutting: no batch above MaxMessageCount; a batch above PreferredMaxBytes
// holds one envelope; nothing pending past BatchTimeout after Due; nothing
// pending after Due with nothing in flight; nothing lost or reordered.
func FuzzCutterDue(f *testing.F) {
	f.Add([]byte{10, 0, 1, 10, 0, 1, 10, 0, 1, 10, 0, 0, 200, 5, 2, 60, 1, 0, 50, 0, 1, 0, 255, 3})
	f.Add([]byte{99, 0, 0, 101, 0, 1, 1, 250, 1, 0, 250, 0})
	f.Fuzz(func(t *testing.T, ops []byte) {
		var in, out []string
		now, cfg := time.Unix(0, 0), CutterConfig{MaxMessageCount: 4, PreferredMaxBytes: 100, AbsoluteMaxBytes: 200, BatchTimeout: time.Second}
		c, err := NewCutter(cfg)
		if err != nil {
			t.Fatal(err)
		}
		// emit checks a batch against Fabric's limits as it is cut.
		emit := func(b [][]byte) {
			var sum uint32
			for _, e := range b {
				sz, _ := MessageSize(e)
				sum += sz
				out = append(out, string(e))
			}
			switch {
			case len(b) == 0 || len(b) > int(cfg.MaxMessageCount):
				t.Fatalf("batch of %d envelopes, limit %d", len(b), cfg.MaxMessageCount)
			case len(b) > 1 && sum > cfg.PreferredMaxBytes:
				t.Fatalf("%d envelopes of %d bytes in one batch, above PreferredMaxBytes", len(b), sum)
			}
		}
		for i := 0; i+2 < len(ops); i += 3 {
			size, step, inFlight := int(ops[i]), time.Duration(ops[i+1])*10*time.Millisecond, int(ops[i+2]%3)
			now = now.Add(step)
			if size != 0 {
				env, _ := proto.Marshal(&common.Envelope{Payload: bytes.Repeat([]byte{0}, size), Signature: []byte{byte(i), byte(i >> 8)}})
				in = append(in, string(env))
				batches, _ := c.Ordered(env, now)
				for _, b := range batches {
					emit(b)
				}
			}
			if b := c.Due(now, inFlight); b != nil {
				emit(b)
			}
			if dl, ok := c.Deadline(); ok && (inFlight == 0 || !now.Before(dl)) {
				t.Fatalf("pending after Due (in flight %d, deadline in %v)", inFlight, dl.Sub(now))
			}
		}
		if b := c.Cut(); b != nil {
			emit(b)
		}
		if !reflect.DeepEqual(in, out) {
			t.Fatalf("%d envelopes in, %d out, or out of order", len(in), len(out))
		}
	})
}
