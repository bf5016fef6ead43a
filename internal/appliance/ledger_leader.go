package appliance

// Handing the raft leadership of the ledger's channel to another consenter
// (memberd ledger transfer-leader): before maintenance of the leader's
// host, or to have a given consenter cut and sign the blocks.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/memberd/memberd/internal/usage"
)

// TransferLeaderPath is the admin endpoint's leadership transfer: POST
// with form value to=MEMBER, and channel=NAME when the appliance orders
// several channels (default: the first, the policy's ledger.channel).
const TransferLeaderPath = "/ledger/transfer-leader"

// leaderTransferTimeout bounds one transfer: raft gives up a transfer that
// has not completed within an election timeout; this is well above it.
const leaderTransferTimeout = 20 * time.Second

// Errors of a leadership transfer, each with its HTTP status.
var (
	errNotLeader    = errors.New("this node does not lead the channel")
	errNoConsenter  = errors.New("not a consenter of the channel")
	errTransferLost = errors.New("leadership transfer did not complete")
	errNoChannel    = errors.New("no such channel here")
)

// LeaderTransfer is the answer of a completed transfer.
type LeaderTransfer struct {
	Channel string `json:"channel"`
	From    string `json:"from"`
	Leader  string `json:"leader"`
	RaftID  uint64 `json:"raft_id"`
	Term    uint64 `json:"term"`
	// Already: Leader led the channel before the request; nothing was
	// handed over (From is still the member asked).
	Already bool `json:"already"`
}

// transferLeader hands the raft leadership of channel (empty: the first
// channel this appliance orders) from this node, which must lead it, to
// consenter member to, and waits until to leads.
func (l *ledgerRun) transferLeader(ctx context.Context, channel, to string) (LeaderTransfer, error) {
	if channel == "" {
		channel = l.channel
	}
	res := LeaderTransfer{Channel: channel, From: l.member}
	if !slices.Contains(l.channelNames(), channel) {
		return res, fmt.Errorf("%w: this appliance orders no channel %q (it orders: %s)", errNoChannel, channel, strings.Join(l.channelNames(), ", "))
	}
	n := l.reg.Lookup(channel)
	if n == nil {
		return res, fmt.Errorf("channel %q is not open", channel)
	}
	r := n.Raft()
	var toID uint64
	var names []string
	for _, p := range r.Members() {
		name := l.memberOf(channel, p.ID)
		names = append(names, name)
		if name == to {
			toID = p.ID
		}
	}
	slices.Sort(names)
	if toID == 0 {
		return res, fmt.Errorf("%w: member %q is not a consenter of channel %q (its consenters: %s); add it to ledger.consenters first",
			errNoConsenter, to, channel, strings.Join(names, ", "))
	}
	if lead := r.Leader(); lead == toID {
		res.Leader, res.RaftID, res.Term, res.Already = to, toID, r.Status().Term, true
		return res, nil
	} else if lead != r.ID() {
		who := l.memberOf(channel, lead)
		if who == "" {
			who = "no leader is known yet"
		} else {
			who = who + " leads it: run this against " + who + "'s appliance (its --admin address)"
		}
		return res, fmt.Errorf("%w: %s does not lead channel %q; %s", errNotLeader, l.member, channel, who)
	}
	l.log.Info("ledger: handing raft leadership over", "channel", channel, "to", to, "raft_id", toID)
	ctx, cancel := context.WithTimeout(ctx, leaderTransferTimeout)
	defer cancel()
	if err := r.TransferLeadership(ctx, toID); err != nil {
		return res, fmt.Errorf("%w: %s: %w", errTransferLost, to, err)
	}
	// Raft abandons a transfer the transferee does not complete (e.g. it
	// is not caught up) and another node may win the election: wait until
	// to leads (this node learns it from to's first heartbeat).
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for {
		if r.Leader() == toID {
			res.Leader, res.RaftID, res.Term = to, toID, r.Status().Term
			l.log.Info("ledger: raft leadership handed over", "channel", channel, "leader", to, "term", res.Term)
			return res, nil
		}
		select {
		case <-ctx.Done():
			return res, fmt.Errorf("%w: %s did not take over within %v (leader now: %q); check that it is caught up (memberd status on its host) and retry",
				errTransferLost, to, leaderTransferTimeout, l.memberOf(channel, r.Leader()))
		case <-t.C:
		}
	}
}

// transferLeaderHandler serves TransferLeaderPath.
func transferLeaderHandler(a *Appliance, log *slog.Logger) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			http.Error(w, "POST with form value to=MEMBER", http.StatusMethodNotAllowed)
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, 4<<10)
		to := r.FormValue("to")
		if to == "" {
			http.Error(w, "form value to=MEMBER is required: the consenter to hand the leadership to", http.StatusBadRequest)
			return
		}
		if a.ledger == nil {
			http.Error(w, errNoLedger.Error(), http.StatusNotFound)
			return
		}
		res, err := a.ledger.transferLeader(r.Context(), r.FormValue("channel"), to)
		if err != nil {
			code := http.StatusServiceUnavailable
			switch {
			case errors.Is(err, errNoConsenter), errors.Is(err, errNoChannel):
				code = http.StatusBadRequest
			case errors.Is(err, errNotLeader):
				code = http.StatusConflict
			case errors.Is(err, errTransferLost):
				code = http.StatusGatewayTimeout
			}
			log.Warn("ledger: leadership transfer refused or failed", "to", to, "err", err)
			http.Error(w, err.Error(), code)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(res)
	})
}

// TransferLeaderViaAdmin asks the appliance whose admin endpoint is addr
// (it must lead channel; empty: its first channel) to hand the leadership
// to member to.
func TransferLeaderViaAdmin(ctx context.Context, addr, channel, to string) (LeaderTransfer, error) {
	var res LeaderTransfer
	form := url.Values{"to": {to}}
	if channel != "" {
		form.Set("channel", channel)
	}
	body := form.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+addr+TransferLeaderPath, strings.NewReader(body))
	if err != nil {
		return res, usage.Errorf("--admin %q: %v", addr, err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return res, fmt.Errorf("ledger transfer-leader: no appliance answers on %s (is 'memberd run' running? see --admin): %w", addr, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode != http.StatusOK {
		return res, fmt.Errorf("ledger transfer-leader: the appliance on %s answered %s: %s", addr, resp.Status, bytes.TrimSpace(raw))
	}
	if err := json.Unmarshal(raw, &res); err != nil || res.Leader == "" {
		return res, fmt.Errorf("ledger transfer-leader: the appliance on %s answered %s: %s", addr, resp.Status, bytes.TrimSpace(raw))
	}
	return res, nil
}
