package block

import (
	"errors"
	"fmt"
	"time"

	"github.com/hyperledger/fabric-protos-go-apiv2/orderer"
)

// ErrConfig: an invalid block cutter configuration.
var ErrConfig = errors.New("invalid batch configuration")

// Defaults of CutterConfig, those of Fabric's sample configtx.yaml.
const (
	DefaultMaxMessageCount   = 500
	DefaultAbsoluteMaxBytes  = 10 << 20
	DefaultPreferredMaxBytes = 2 << 20
	DefaultBatchTimeout      = 2 * time.Second
)

// CutterConfig is a channel's Orderer BatchSize and BatchTimeout. The zero
// value means Fabric's defaults; a zero field means that field's default.
type CutterConfig struct {
	// MaxMessageCount: a batch is cut when it holds this many envelopes. Default 500.
	MaxMessageCount uint32
	// AbsoluteMaxBytes: no envelope may be larger (enforced at admission, see
	// AdmitConfig). Default 10 MiB.
	AbsoluteMaxBytes uint32
	// PreferredMaxBytes: a batch is cut before it would exceed this size; a
	// larger envelope is cut alone. Default 2 MiB.
	PreferredMaxBytes uint32
	// BatchTimeout: a pending batch is cut this long after its first
	// envelope arrived. Default 2s.
	BatchTimeout time.Duration
}

func (c CutterConfig) withDefaults() CutterConfig {
	if c.MaxMessageCount == 0 {
		c.MaxMessageCount = DefaultMaxMessageCount
	}
	if c.AbsoluteMaxBytes == 0 {
		c.AbsoluteMaxBytes = DefaultAbsoluteMaxBytes
	}
	if c.PreferredMaxBytes == 0 {
		c.PreferredMaxBytes = min(DefaultPreferredMaxBytes, c.AbsoluteMaxBytes)
	}
	if c.BatchTimeout == 0 {
		c.BatchTimeout = DefaultBatchTimeout
	}
	return c
}

// Validate reports whether c (after defaults) is usable, with Fabric's
// constraints: PreferredMaxBytes <= AbsoluteMaxBytes, positive timeout.
func (c CutterConfig) Validate() error {
	d := c.withDefaults()
	if d.PreferredMaxBytes > d.AbsoluteMaxBytes {
		return fmt.Errorf("%w: PreferredMaxBytes %d is larger than AbsoluteMaxBytes %d: lower PreferredMaxBytes", ErrConfig, d.PreferredMaxBytes, d.AbsoluteMaxBytes)
	}
	if d.BatchTimeout < 0 {
		return fmt.Errorf("%w: BatchTimeout %s is negative", ErrConfig, d.BatchTimeout)
	}
	return nil
}

// CutterConfigFromFabric converts a channel config's Orderer BatchSize and
// BatchTimeout values.
func CutterConfigFromFabric(bs *orderer.BatchSize, bt *orderer.BatchTimeout) (CutterConfig, error) {
	if bs == nil || bt == nil {
		return CutterConfig{}, fmt.Errorf("%w: channel config lacks BatchSize or BatchTimeout", ErrConfig)
	}
	d, err := time.ParseDuration(bt.Timeout)
	if err != nil || d <= 0 {
		return CutterConfig{}, fmt.Errorf("%w: BatchTimeout %q is not a positive duration", ErrConfig, bt.Timeout)
	}
	if bs.MaxMessageCount == 0 || bs.AbsoluteMaxBytes == 0 || bs.PreferredMaxBytes == 0 {
		return CutterConfig{}, fmt.Errorf("%w: BatchSize has a zero field (%d/%d/%d)", ErrConfig, bs.MaxMessageCount, bs.AbsoluteMaxBytes, bs.PreferredMaxBytes)
	}
	c := CutterConfig{MaxMessageCount: bs.MaxMessageCount, AbsoluteMaxBytes: bs.AbsoluteMaxBytes, PreferredMaxBytes: bs.PreferredMaxBytes, BatchTimeout: d}
	return c, c.Validate()
}

// Cutter groups envelopes into batches (future blocks) with the rules of
// Fabric's orderer/common/blockcutter:
//
//  1. An envelope larger than PreferredMaxBytes is cut alone in its own batch;
//     a pending batch is cut first.
//  2. An envelope that would make the pending batch exceed PreferredMaxBytes
//     cuts the pending batch first, then starts the next one.
//  3. A batch is cut when it reaches MaxMessageCount envelopes.
//  4. A pending batch is cut BatchTimeout after its first envelope (Tick).
//
// A driver may also cut adaptively (Due): a pending batch is cut at once
// when no earlier batch is still in flight, which keeps latency low under
// light load without changing the limits above.
//
// Sizes are Fabric's: len(Payload)+len(Signature) of each envelope
// (MessageSize); bytes that are not an envelope count their full length.
// Time is an input: the cutter reads no clock and starts no timer; the
// driver calls Tick at or after Deadline. A Cutter is not safe for
// concurrent use.
type Cutter struct {
	cfg          CutterConfig
	pending      [][]byte
	pendingBytes uint32
	start        time.Time // arrival of the first pending envelope
}

// NewCutter returns a Cutter for cfg (zero fields take defaults).
func NewCutter(cfg CutterConfig) (*Cutter, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &Cutter{cfg: cfg.withDefaults()}, nil
}

// Config returns the configuration in force, defaults applied.
func (c *Cutter) Config() CutterConfig { return c.cfg }

// SetConfig changes the batch limits (after a channel config update). As in
// Fabric, the new limits apply from the next envelope; the pending batch is
// kept.
func (c *Cutter) SetConfig(cfg CutterConfig) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	c.cfg = cfg.withDefaults()
	return nil
}

// Ordered adds env, received at now, and returns the batches that are cut as
// a result (zero, one or two, oldest first) and whether envelopes remain
// pending. The returned batches are owned by the caller.
func (c *Cutter) Ordered(env []byte, now time.Time) (batches [][][]byte, pending bool) {
	size, err := MessageSize(env)
	if err != nil {
		size = uint32(min(len(env), 1<<32-1))
	}
	if size > c.cfg.PreferredMaxBytes {
		if len(c.pending) > 0 {
			batches = append(batches, c.Cut())
		}
		return append(batches, [][]byte{env}), false
	}
	if len(c.pending) > 0 && uint64(c.pendingBytes)+uint64(size) > uint64(c.cfg.PreferredMaxBytes) {
		batches = append(batches, c.Cut())
	}
	if len(c.pending) == 0 {
		c.start = now
	}
	c.pending = append(c.pending, env)
	c.pendingBytes += size
	if uint32(len(c.pending)) >= c.cfg.MaxMessageCount {
		return append(batches, c.Cut()), false
	}
	return batches, true
}

// Cut returns the pending batch (nil if none) and empties it. The driver
// calls it before ordering a config envelope, which Fabric always puts in a
// block of its own.
func (c *Cutter) Cut() [][]byte {
	b := c.pending
	c.pending, c.pendingBytes, c.start = nil, 0, time.Time{}
	return b
}

// Deadline returns when the pending batch times out; ok is false when
// nothing is pending.
func (c *Cutter) Deadline() (deadline time.Time, ok bool) {
	if len(c.pending) == 0 {
		return time.Time{}, false
	}
	return c.start.Add(c.cfg.BatchTimeout), true
}

// Tick cuts the pending batch if its deadline is at or before now, and
// returns it; otherwise it returns nil.
func (c *Cutter) Tick(now time.Time) [][]byte {
	if d, ok := c.Deadline(); ok && !now.Before(d) {
		return c.Cut()
	}
	return nil
}

// Due returns the pending batch if it is due at now, nil otherwise; it is
// the adaptive form of Tick. inFlight is the number of batches the driver
// cut earlier that are not yet committed and applied. The pending batch is
// due when:
//
//   - its BatchTimeout has passed (as Tick), whatever inFlight; or
//   - inFlight is 0, however few envelopes it holds: nothing is being
//     committed, so waiting for more envelopes adds latency and saves
//     nothing. While a batch is in flight the pending one keeps filling up
//     to Fabric's limits, so under load blocks stay as large as they are
//     without this rule.
//
// Due cuts only what Ordered kept pending, so no batch it returns breaks
// MaxMessageCount or PreferredMaxBytes. Nothing pending: nil.
func (c *Cutter) Due(now time.Time, inFlight int) [][]byte {
	if len(c.pending) == 0 {
		return nil
	}
	if inFlight <= 0 {
		return c.Cut()
	}
	return c.Tick(now)
}

// Pending returns the number of pending envelopes and their total size.
func (c *Cutter) Pending() (count int, bytes uint32) { return len(c.pending), c.pendingBytes }
