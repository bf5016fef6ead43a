package app

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/memberd/memberd/internal/admin"
	"github.com/memberd/memberd/internal/appliance"
)

func newPingCmd(e *env) *cobra.Command {
	var (
		addr              string
		count             int
		interval, timeout time.Duration
	)
	c := &cobra.Command{
		Use:   "ping MEMBER",
		Short: "Check reachability and RTT to a member through the tunnel (asks the local appliance)",
		Long: `ping asks the running appliance's admin endpoint (--admin) to send ICMP
echo requests to MEMBER's overlay address through the WireGuard tunnel and
the relays, and prints the round trip of each, then a summary.

The member's tunnel answers echo itself: no port or ACL entry is needed, so
a reply shows that keys are exchanged and packets flow both ways, not that
the ACL lets a given service through.

Exit status: 0 if at least one reply came, 1 if none did, 2 on a usage
error (including a MEMBER the policy does not know).`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if count < 1 {
				return usagef("--count %d: want at least 1", count)
			}
			if timeout <= 0 || timeout > appliance.MaxPingTimeout {
				return usagef("--timeout %v: want a duration in (0, %v]", timeout, appliance.MaxPingTimeout)
			}
			if interval < 0 {
				return usagef("--interval %v: want a duration ≥ 0", interval)
			}
			return runPing(cmd.Context(), e.stdout, addr, args[0], count, interval, timeout)
		},
	}
	c.Flags().StringVar(&addr, "admin", admin.DefaultAddr, "admin address (host:port) of the running appliance")
	c.Flags().IntVarP(&count, "count", "c", 4, "echo requests to send")
	c.Flags().DurationVar(&interval, "interval", time.Second, "pause between requests")
	c.Flags().DurationVar(&timeout, "timeout", 2*time.Second, "how long to wait for each reply (the first also waits for the member's key)")
	return c
}

// runPing asks addr's /ping count times and prints each answer and a summary.
func runPing(ctx context.Context, out io.Writer, addr, member string, count int, interval, timeout time.Duration) error {
	var rtts []time.Duration
	fmt.Fprintf(out, "PING %s through the tunnel (via admin endpoint %s)\n", member, addr)
	for i := range count {
		if i > 0 && interval > 0 {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(interval):
			}
		}
		a, code, err := askPing(ctx, addr, member, timeout)
		switch {
		case err != nil:
			return err
		case code == http.StatusOK:
			rtts = append(rtts, a.RTT)
			fmt.Fprintf(out, "reply from %s: seq=%d rtt=%v\n", member, i+1, roundRTT(a.RTT))
		case code == http.StatusNotFound:
			return usagef("MEMBER %q: %s", member, a.Error)
		case code == http.StatusServiceUnavailable:
			return fmt.Errorf("admin endpoint %s: %s", addr, a.Error)
		case code == http.StatusGatewayTimeout || code == http.StatusBadGateway:
			fmt.Fprintf(out, "no reply from %s: seq=%d: %s\n", member, i+1, a.Error)
		default:
			return fmt.Errorf("admin endpoint %s answered /ping with %d: %s (is it a memberd appliance of this version?)", addr, code, a.Error)
		}
	}
	fmt.Fprintf(out, "--- %s ---\n%d sent, %d received, %.0f%% loss", member, count, len(rtts), 100*float64(count-len(rtts))/float64(count))
	if len(rtts) > 0 {
		lo, hi, sum := rtts[0], rtts[0], time.Duration(0)
		for _, r := range rtts {
			lo, hi, sum = min(lo, r), max(hi, r), sum+r
		}
		fmt.Fprintf(out, ", rtt min/avg/max = %v/%v/%v", roundRTT(lo), roundRTT(sum/time.Duration(len(rtts))), roundRTT(hi))
	}
	fmt.Fprintln(out)
	if len(rtts) == 0 {
		return fmt.Errorf("%s did not answer through the tunnel: see 'memberd status --admin %s' for relays and peers", member, addr)
	}
	return nil
}

func roundRTT(d time.Duration) time.Duration { return d.Round(time.Microsecond) }

// askPing does one GET /ping; err is set only when no answer came.
func askPing(ctx context.Context, addr, member string, timeout time.Duration) (appliance.PingAnswer, int, error) {
	u := "http://" + addr + "/ping?member=" + url.QueryEscape(member) + "&timeout=" + timeout.String()
	rctx, cancel := context.WithTimeout(ctx, timeout+5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(rctx, http.MethodGet, u, nil)
	if err != nil {
		return appliance.PingAnswer{}, 0, usagef("--admin %q: %v", addr, err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return appliance.PingAnswer{}, 0, fmt.Errorf("cannot reach memberd admin endpoint %s: %w (is memberd running, and is --admin its admin address?)", addr, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if err != nil {
		return appliance.PingAnswer{}, 0, fmt.Errorf("reading %s: %w", u, err)
	}
	var a appliance.PingAnswer
	if err := json.Unmarshal(body, &a); err != nil {
		a.Error = strings.TrimSpace(string(body))
	}
	return a, resp.StatusCode, nil
}
