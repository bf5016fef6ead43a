package relay

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/memberd/memberd/internal/testpki"
)

// A rate_burst_bytes below one full-size packet with its frame header can
// never admit that packet (the bucket never holds its bytes: wait is -1),
// so the relay would drop every full-size packet of every member
// (rate_limit) while the tunnel keeps its 16 KiB MTU: TCP inside the
// tunnel stalls. A burst that carried every 4 KiB packet before issue #15
// (8192) is such a value. Found by review of f2d7279: the configuration
// must be refused, naming the key and the minimum.
func TestBurstBelowFullPacketRefused(t *testing.T) {
	now := time.Now()
	if b := newBucket(12_500_000, MinRateBurstBytes-1, now); b.wait(MinRateBurstBytes, now.Add(time.Hour)) != -1 {
		t.Fatal("premise: a bucket below MinRateBurstBytes admits a full-size packet, the floor is wrong")
	}
	if b := newBucket(12_500_000, MinRateBurstBytes, now); !b.allow(MinRateBurstBytes, now) {
		t.Fatal("a bucket of MinRateBurstBytes refuses a full-size packet")
	}
	auth, err := NewStaticAuthority(StaticPolicy{AllowAll: true})
	if err != nil {
		t.Fatal(err)
	}
	id := testpki.SelfSigned(t, "relay-1").TLS()
	for _, tc := range []struct {
		burst float64
		ok    bool
	}{
		{0, true}, // default 1 MiB
		{8192, false},
		{MinRateBurstBytes - 1, false},
		{MinRateBurstBytes, true},
		{1 << 20, true},
		{-1, false},
	} {
		t.Run(fmt.Sprint(tc.burst), func(t *testing.T) {
			err := (&ServerConfig{ID: "relay-1", Identity: id, Authority: auth, RateBurstBytes: tc.burst}).Validate()
			if tc.ok {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), "rate_burst_bytes") ||
				(tc.burst > 0 && !strings.Contains(err.Error(), fmt.Sprint(MinRateBurstBytes))) {
				t.Fatalf("Validate() = %v, want ErrConfig naming rate_burst_bytes and its minimum %d", err, MinRateBurstBytes)
			}
		})
	}
}
