package app

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/memberd/memberd/internal/admin"
)

func newStatusCmd(e *env) *cobra.Command {
	var (
		addr    string
		asJSON  bool
		timeout time.Duration
	)
	c := &cobra.Command{
		Use:   "status",
		Short: "Show the status of a running appliance or relay (from its admin endpoint)",
		Long: `status asks the admin endpoint of a running memberd (run or relay) for its
/status document and prints it as tables: for an appliance, its policy
version and identity expiry, each relay with its state, path (quic/tcp/proxy),
whether it is the one in use and its RTT, each peer with the age of its last
WireGuard handshake, the ledger's raft role, height and leader; for a relay,
the members connected. Warnings follow (UDP buffers too small for QUIC, a
certificate expiring within 30 days, no relay connected, ...), each saying
what to do. --json prints the document as served.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			doc, err := fetchStatus(ctx, addr)
			if err != nil {
				return err
			}
			if asJSON {
				_, err = e.stdout.Write(doc)
				return err
			}
			if err := renderStatus(e.stdout, doc, time.Now()); err != nil {
				return fmt.Errorf("status from %s is not JSON: %w", addr, err)
			}
			return nil
		},
	}
	c.Flags().StringVar(&addr, "admin", admin.DefaultAddr, "admin address (host:port) of the running memberd")
	c.Flags().BoolVar(&asJSON, "json", false, "print the raw JSON status document")
	c.Flags().DurationVar(&timeout, "timeout", 5*time.Second, "how long to wait for an answer")
	return c
}

func fetchStatus(ctx context.Context, addr string) ([]byte, error) {
	url := "http://" + addr + "/status"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, usagef("--admin %q: %v", addr, err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("cannot reach memberd admin endpoint %s: %w (is memberd running, and is --admin its admin address?)", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", url, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s answered %s: %s", url, resp.Status, strings.TrimSpace(string(body)))
	}
	return body, nil
}

// flatten renders a JSON value as sorted "a.b.c: value" lines.
func flatten(prefix string, v any, out *[]string) {
	switch x := v.(type) {
	case map[string]any:
		keys := make([]string, 0, len(x))
		for k := range x {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			flatten(join(prefix, k), x[k], out)
		}
	case []any:
		for i, el := range x {
			flatten(join(prefix, fmt.Sprint(i)), el, out)
		}
	default:
		b, _ := json.Marshal(x)
		*out = append(*out, fmt.Sprintf("%s: %s", prefix, b))
	}
}

func join(prefix, k string) string {
	if prefix == "" {
		return k
	}
	return prefix + "." + k
}
