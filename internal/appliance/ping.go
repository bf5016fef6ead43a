package appliance

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/memberd/memberd/tunnel"
)

// PingAnswer is the admin endpoint's answer to GET /ping.
type PingAnswer struct {
	Member string        `json:"member"`
	RTT    time.Duration `json:"rtt_ns,omitempty"`
	Error  string        `json:"error,omitempty"`
}

// MaxPingTimeout bounds what a /ping request may ask for.
const MaxPingTimeout = 30 * time.Second

// pingHandler serves GET /ping?member=ID&timeout=DURATION: one ICMP echo
// through the tunnel (tunnel.Device.Ping). 200 with rtt_ns when the reply
// came; 404 when the member is not in the policy; 400 for a bad request;
// 504 when no reply came in time; 502 for other tunnel errors.
func pingHandler(dev *tunnel.Device) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		answer := func(code int, a PingAnswer) {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(code)
			_ = json.NewEncoder(w).Encode(a)
		}
		member := r.URL.Query().Get("member")
		if r.Method != http.MethodGet || member == "" {
			answer(http.StatusBadRequest, PingAnswer{Error: "use GET /ping?member=ID[&timeout=2s]"})
			return
		}
		timeout := 2 * time.Second
		if s := r.URL.Query().Get("timeout"); s != "" {
			d, err := time.ParseDuration(s)
			if err != nil || d <= 0 || d > MaxPingTimeout {
				answer(http.StatusBadRequest, PingAnswer{Member: member, Error: fmt.Sprintf("timeout %q: want a duration in (0, %v]", s, MaxPingTimeout)})
				return
			}
			timeout = d
		}
		ctx, cancel := context.WithTimeout(r.Context(), timeout)
		defer cancel()
		rtt, err := dev.Ping(ctx, member)
		switch {
		case err == nil:
			answer(http.StatusOK, PingAnswer{Member: member, RTT: rtt})
		case errors.Is(err, tunnel.ErrNotMember), errors.Is(err, tunnel.ErrDenied):
			answer(http.StatusNotFound, PingAnswer{Member: member, Error: err.Error()})
		case errors.Is(err, context.DeadlineExceeded):
			answer(http.StatusGatewayTimeout, PingAnswer{Member: member, Error: err.Error()})
		default:
			answer(http.StatusBadGateway, PingAnswer{Member: member, Error: err.Error()})
		}
	})
}
