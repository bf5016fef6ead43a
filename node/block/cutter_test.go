package block

import (
	"bytes"
	"errors"
	"fmt"
	"reflect"
	"testing"
	"time"

	"github.com/hyperledger/fabric-protos-go-apiv2/common"
	"github.com/hyperledger/fabric-protos-go-apiv2/orderer"
	"google.golang.org/protobuf/proto"
)

// sizedEnv returns an envelope named by id whose Fabric size
// (len(Payload)+len(Signature)) is size.
func sizedEnv(id byte, size int) []byte {
	raw, err := proto.Marshal(&common.Envelope{Payload: bytes.Repeat([]byte{id}, size)})
	if err != nil {
		panic(err)
	}
	return raw
}

func envID(raw []byte) string {
	e := new(common.Envelope)
	if err := proto.Unmarshal(raw, e); err != nil || len(e.Payload) == 0 {
		return fmt.Sprintf("raw%d", len(raw))
	}
	return string(e.Payload[:1])
}

func batchIDs(batches [][][]byte) []string {
	var out []string
	for _, b := range batches {
		s := ""
		for _, e := range b {
			s += envID(e)
		}
		out = append(out, s)
	}
	return out
}

type cutStep struct {
	at   time.Duration // since t0
	env  []byte        // nil: Tick(at) instead of Ordered
	cut  []string      // batches expected, each as the ids of its envelopes
	pend bool          // pending after the step (Ordered's result; for Tick, Deadline's ok)
	dl   time.Duration // expected deadline since t0 when pending
}

func TestCutterRules(t *testing.T) {
	cfg := CutterConfig{MaxMessageCount: 3, PreferredMaxBytes: 100, AbsoluteMaxBytes: 200, BatchTimeout: time.Second}
	ms := time.Millisecond
	tests := []struct {
		name  string
		cfg   CutterConfig
		steps []cutStep
	}{
		{"cut at MaxMessageCount", cfg, []cutStep{
			{0, sizedEnv('a', 10), nil, true, time.Second},
			{10 * ms, sizedEnv('b', 10), nil, true, time.Second},
			{20 * ms, sizedEnv('c', 10), []string{"abc"}, false, 0},
			{30 * ms, sizedEnv('d', 10), nil, true, 30*ms + time.Second},
		}},
		{"oversize message alone, nothing pending", cfg, []cutStep{
			{0, sizedEnv('x', 101), []string{"x"}, false, 0},
		}},
		{"oversize message: pending batch cut first, then the message alone", cfg, []cutStep{
			{0, sizedEnv('a', 10), nil, true, time.Second},
			{5 * ms, sizedEnv('b', 10), nil, true, time.Second},
			{9 * ms, sizedEnv('x', 150), []string{"ab", "x"}, false, 0},
		}},
		{"oversize beyond AbsoluteMaxBytes is still cut alone (admission rejects it earlier)", cfg, []cutStep{
			{0, sizedEnv('a', 10), nil, true, time.Second},
			{0, sizedEnv('x', 500), []string{"a", "x"}, false, 0},
		}},
		{"overflow of PreferredMaxBytes cuts the pending batch; timer restarts at the new first message", cfg, []cutStep{
			{0, sizedEnv('a', 60), nil, true, time.Second},
			{300 * ms, sizedEnv('b', 50), []string{"a"}, true, 300*ms + time.Second},
		}},
		{"exactly PreferredMaxBytes does not overflow", cfg, []cutStep{
			{0, sizedEnv('a', 50), nil, true, time.Second},
			{1 * ms, sizedEnv('b', 50), nil, true, time.Second},
			{2 * ms, sizedEnv('c', 1), []string{"ab"}, true, 2*ms + time.Second},
		}},
		{"a message of exactly PreferredMaxBytes is not oversize", cfg, []cutStep{
			{0, sizedEnv('a', 100), nil, true, time.Second},
			{1 * ms, sizedEnv('b', 1), []string{"a"}, true, 1*ms + time.Second},
		}},
		{"overflow then count in one call", CutterConfig{MaxMessageCount: 1, PreferredMaxBytes: 100, AbsoluteMaxBytes: 100, BatchTimeout: time.Second}, []cutStep{
			{0, sizedEnv('a', 60), []string{"a"}, false, 0},
			{0, sizedEnv('b', 60), []string{"b"}, false, 0},
		}},
		{"overflow cut plus count cut of the new message", CutterConfig{MaxMessageCount: 2, PreferredMaxBytes: 100, AbsoluteMaxBytes: 100, BatchTimeout: time.Second}, []cutStep{
			{0, sizedEnv('a', 10), nil, true, time.Second},
			{0, sizedEnv('b', 20), []string{"ab"}, false, 0},
			{0, sizedEnv('c', 70), nil, true, time.Second},
			{0, sizedEnv('d', 40), []string{"c"}, true, time.Second},
			{0, sizedEnv('e', 10), []string{"de"}, false, 0},
		}},
		{"timer starts at the first pending message and cuts at the deadline", cfg, []cutStep{
			{100 * ms, sizedEnv('a', 10), nil, true, 1100 * ms},
			{600 * ms, sizedEnv('b', 10), nil, true, 1100 * ms},
			{1099 * ms, nil, nil, true, 1100 * ms},
			{1100 * ms, nil, []string{"ab"}, false, 0},
			{5 * time.Second, nil, nil, false, 0},
		}},
		{"tick late still cuts once", cfg, []cutStep{
			{0, sizedEnv('a', 10), nil, true, time.Second},
			{time.Hour, nil, []string{"a"}, false, 0},
			{2 * time.Hour, nil, nil, false, 0},
		}},
		{"tick with nothing pending", cfg, []cutStep{
			{time.Hour, nil, nil, false, 0},
		}},
		{"bytes that are not an envelope count their full length", cfg, []cutStep{
			{0, bytes.Repeat([]byte{0xff}, 60), nil, true, time.Second},
			{0, bytes.Repeat([]byte{0xff}, 41), []string{"raw60"}, true, time.Second},
		}},
	}
	t0 := time.Date(2026, 11, 24, 8, 0, 0, 0, time.UTC)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := NewCutter(tc.cfg)
			if err != nil {
				t.Fatal(err)
			}
			for i, s := range tc.steps {
				now := t0.Add(s.at)
				var got [][][]byte
				pending := false
				if s.env != nil {
					got, pending = c.Ordered(s.env, now)
				} else {
					if b := c.Tick(now); b != nil {
						got = [][][]byte{b}
					}
					_, pending = c.Deadline()
				}
				if ids := batchIDs(got); !reflect.DeepEqual(ids, s.cut) {
					t.Fatalf("step %d: cut %q, want %q", i, ids, s.cut)
				}
				if pending != s.pend {
					t.Fatalf("step %d: pending %v, want %v", i, pending, s.pend)
				}
				dl, ok := c.Deadline()
				if ok != s.pend || (ok && !dl.Equal(t0.Add(s.dl))) {
					t.Fatalf("step %d: deadline %v (%v), want +%v", i, dl.Sub(t0), ok, s.dl)
				}
			}
		})
	}
}

func TestCutterCutAndSetConfig(t *testing.T) {
	c, err := NewCutter(CutterConfig{MaxMessageCount: 10, PreferredMaxBytes: 100, AbsoluteMaxBytes: 100})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Unix(0, 0)
	c.Ordered(sizedEnv('a', 10), now)
	c.Ordered(sizedEnv('b', 10), now)
	if n, sz := c.Pending(); n != 2 || sz != 20 {
		t.Errorf("Pending = %d, %d", n, sz)
	}
	// A config envelope goes alone: the driver cuts what is pending first.
	if ids := batchIDs([][][]byte{c.Cut()}); !reflect.DeepEqual(ids, []string{"ab"}) {
		t.Errorf("Cut = %q", ids)
	}
	if b := c.Cut(); b != nil {
		t.Errorf("second Cut = %d envelopes, want none", len(b))
	}
	c.Ordered(sizedEnv('a', 10), now)
	if err := c.SetConfig(CutterConfig{MaxMessageCount: 2, PreferredMaxBytes: 100, AbsoluteMaxBytes: 100}); err != nil {
		t.Fatal(err)
	}
	if got, _ := c.Ordered(sizedEnv('b', 10), now); !reflect.DeepEqual(batchIDs(got), []string{"ab"}) {
		t.Errorf("after SetConfig: %q, want the new count limit to cut [ab]", batchIDs(got))
	}
	if err := c.SetConfig(CutterConfig{PreferredMaxBytes: 10, AbsoluteMaxBytes: 5}); !errors.Is(err, ErrConfig) {
		t.Errorf("SetConfig invalid: %v", err)
	}
}

func TestCutterConfig(t *testing.T) {
	c, err := NewCutter(CutterConfig{})
	if err != nil {
		t.Fatal(err)
	}
	want := CutterConfig{MaxMessageCount: 500, AbsoluteMaxBytes: 10 << 20, PreferredMaxBytes: 2 << 20, BatchTimeout: 2 * time.Second}
	if c.Config() != want {
		t.Errorf("defaults %+v, want %+v", c.Config(), want)
	}
	bad := []CutterConfig{
		{PreferredMaxBytes: 11, AbsoluteMaxBytes: 10},
		{PreferredMaxBytes: 11 << 20}, // above the default AbsoluteMaxBytes
		{BatchTimeout: -time.Second},
	}
	for _, b := range bad {
		if _, err := NewCutter(b); !errors.Is(err, ErrConfig) {
			t.Errorf("NewCutter(%+v) = %v, want ErrConfig", b, err)
		}
	}
	for _, tc := range []struct {
		bs *orderer.BatchSize
		bt string
	}{
		{&orderer.BatchSize{MaxMessageCount: 1, AbsoluteMaxBytes: 1, PreferredMaxBytes: 1}, "soon"},
		{&orderer.BatchSize{MaxMessageCount: 1, AbsoluteMaxBytes: 1, PreferredMaxBytes: 1}, "-1s"},
		{&orderer.BatchSize{MaxMessageCount: 0, AbsoluteMaxBytes: 1, PreferredMaxBytes: 1}, "1s"},
		{nil, "1s"},
	} {
		if _, err := CutterConfigFromFabric(tc.bs, &orderer.BatchTimeout{Timeout: tc.bt}); !errors.Is(err, ErrConfig) {
			t.Errorf("CutterConfigFromFabric(%v, %q) = %v, want ErrConfig", tc.bs, tc.bt, err)
		}
	}
}

// The batch settings of a real configtxgen genesis block convert.
func TestCutterConfigFromGenesis(t *testing.T) {
	e, err := ParseEnvelope(loadBlock(t, "vectors-0.block").Data.Data[0])
	if err != nil {
		t.Fatal(err)
	}
	ce := new(common.ConfigEnvelope)
	if err := proto.Unmarshal(e.Data, ce); err != nil {
		t.Fatal(err)
	}
	og := ce.GetConfig().GetChannelGroup().GetGroups()["Orderer"]
	bs, bt := new(orderer.BatchSize), new(orderer.BatchTimeout)
	if err := proto.Unmarshal(og.GetValues()["BatchSize"].GetValue(), bs); err != nil {
		t.Fatal(err)
	}
	if err := proto.Unmarshal(og.GetValues()["BatchTimeout"].GetValue(), bt); err != nil {
		t.Fatal(err)
	}
	got, err := CutterConfigFromFabric(bs, bt)
	if err != nil {
		t.Fatal(err)
	}
	// README: BatchTimeout 2s, MaxMessageCount 10, AbsoluteMaxBytes 99 MB, PreferredMaxBytes 2 MB.
	want := CutterConfig{MaxMessageCount: 10, AbsoluteMaxBytes: 99 << 20, PreferredMaxBytes: 2 << 20, BatchTimeout: 2 * time.Second}
	if got != want {
		t.Errorf("got %+v, want %+v", got, want)
	}
}

func BenchmarkCutterOrdered(b *testing.B) {
	c, _ := NewCutter(CutterConfig{MaxMessageCount: 500})
	env := sizedEnv('a', 1024)
	now := time.Unix(0, 0)
	b.ReportAllocs()
	for b.Loop() {
		c.Ordered(env, now)
	}
}

// FuzzCutter drives the cutter with arbitrary sizes and clock steps and
// checks its invariants: nothing lost, duplicated or reordered; no empty
// batch; at most MaxMessageCount per batch; a batch above PreferredMaxBytes
// holds a single envelope; nothing stays pending past its deadline after Tick.
func FuzzCutter(f *testing.F) {
	f.Add([]byte{10, 0, 10, 0, 10, 0, 200, 5, 60, 1, 50, 0, 0, 255})
	f.Add([]byte{99, 0, 101, 0, 1, 250, 0, 250})
	f.Fuzz(func(t *testing.T, ops []byte) {
		cfg := CutterConfig{MaxMessageCount: 4, PreferredMaxBytes: 100, AbsoluteMaxBytes: 200, BatchTimeout: time.Second}
		c, err := NewCutter(cfg)
		if err != nil {
			t.Fatal(err)
		}
		now := time.Unix(0, 0)
		var in []string
		var out [][][]byte
		id := 0
		for i := 0; i+1 < len(ops); i += 2 {
			size, step := int(ops[i]), time.Duration(ops[i+1])*10*time.Millisecond
			now = now.Add(step)
			if b := c.Tick(now); b != nil {
				out = append(out, b)
			}
			if dl, ok := c.Deadline(); ok && !now.Before(dl) {
				t.Fatalf("pending past its deadline after Tick")
			}
			if size == 0 {
				continue // a pure clock step
			}
			env, _ := proto.Marshal(&common.Envelope{Payload: bytes.Repeat([]byte{0}, size), Signature: []byte{byte(id), byte(id >> 8)}})
			in = append(in, string(env))
			id++
			batches, pending := c.Ordered(env, now)
			out = append(out, batches...)
			if n, _ := c.Pending(); (n > 0) != pending {
				t.Fatalf("Ordered says pending=%v with %d pending", pending, n)
			}
		}
		if b := c.Cut(); b != nil {
			out = append(out, b)
		}
		var got []string
		for _, b := range out {
			if len(b) == 0 || len(b) > int(cfg.MaxMessageCount) {
				t.Fatalf("batch of %d envelopes", len(b))
			}
			var sum uint32
			for _, e := range b {
				sz, _ := MessageSize(e)
				sum += sz
				got = append(got, string(e))
			}
			if len(b) > 1 && sum > cfg.PreferredMaxBytes {
				t.Fatalf("batch of %d envelopes and %d bytes exceeds PreferredMaxBytes", len(b), sum)
			}
		}
		if len(got) != len(in) {
			t.Fatalf("%d envelopes in, %d out", len(in), len(got))
		}
		for i := range in {
			if got[i] != in[i] {
				t.Fatalf("envelope %d out of order", i)
			}
		}
	})
}
