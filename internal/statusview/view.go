// Package statusview renders the /status document of an appliance or a
// relay as 'memberd status' prints it (a table per part, then warnings),
// and fetches it from an admin endpoint.
package statusview

import (
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/memberd/memberd/internal/daemon"
	"github.com/memberd/memberd/relay"
)

// statusDoc is what Render reads of a /status document: an
// appliance's (run.go applianceStatus) or a relay's (relay.go).
type statusDoc struct {
	Role     string   `json:"role"`
	Warnings []string `json:"warnings"`

	// appliance
	Member string `json:"member"`
	Policy struct {
		Version    uint64 `json:"version"`
		Hash       string `json:"hash"`
		Consortium string `json:"consortium"`
	} `json:"policy"`
	Identity struct {
		Subject  string    `json:"subject"`
		Serial   string    `json:"serial"`
		NotAfter time.Time `json:"not_after"`
	} `json:"identity"`
	Relays []relay.RelayStatus `json:"relays"`
	Tunnel struct {
		Addr  string `json:"addr"`
		MTU   int    `json:"mtu"`
		Peers []struct {
			Member            string    `json:"member"`
			Addr              string    `json:"addr"`
			MemberAddr        string    `json:"member_addr"`    // tunnel.member_addresses; "" without
			LastHandshake     string    `json:"last_handshake"` // RFC 3339, "" = none yet
			AttestationExpiry time.Time `json:"attestation_expiry"`
			Rotating          bool      `json:"rotating"`
		} `json:"peers"`
	} `json:"tunnel"`
	Ledger json.RawMessage `json:"ledger"` // an object, or a string when not configured

	// relay
	ID            string            `json:"id"`
	Listen        string            `json:"listen"`
	Members       []string          `json:"members"`
	PolicyVersion *uint64           `json:"policy_version"`
	Drops         map[string]uint64 `json:"drops"`
}

// ledgerStatus is the ledger part of an appliance's /status.
type ledgerStatus struct {
	Channel   string `json:"channel"`
	State     string `json:"state"`
	RaftState string `json:"raft_state"`
	Height    uint64 `json:"height"`
	Leader    string `json:"leader"`
	Term      uint64 `json:"term"`
	// Channels: every channel the ledger orders (the fields above are the
	// first's); absent from appliances before ledger.channels.
	Channels []ledgerStatus `json:"channels"`
}

// Render writes doc (a /status document) as readable tables, times
// relative to now. A document of an unknown role is written as sorted
// "a.b.c: value" lines.
func Render(w io.Writer, doc []byte, now time.Time) error {
	var st statusDoc
	if err := json.Unmarshal(doc, &st); err != nil || (st.Role != "appliance" && st.Role != "relay") {
		var v any
		if err := json.Unmarshal(doc, &v); err != nil {
			return err
		}
		var lines []string
		flatten("", v, &lines)
		_, err := io.WriteString(w, strings.Join(lines, "\n")+"\n")
		return err
	}
	var b strings.Builder
	if st.Role == "relay" {
		renderRelay(&b, &st)
	} else {
		renderAppliance(&b, &st, now)
	}
	b.WriteString("\n")
	if len(st.Warnings) == 0 {
		b.WriteString("no warnings\n")
	} else {
		fmt.Fprintf(&b, "WARNINGS (%d)\n", len(st.Warnings))
		for _, x := range st.Warnings {
			fmt.Fprintf(&b, "  ! %s\n", x)
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func renderAppliance(b *strings.Builder, st *statusDoc, now time.Time) {
	fmt.Fprintf(b, "%s (appliance), consortium %s, policy version %d (%s)\n", st.Member, st.Policy.Consortium, st.Policy.Version, short(st.Policy.Hash, 19))
	fmt.Fprintf(b, "identity  %s, serial %s, expires %s (%s)\n", st.Identity.Subject, st.Identity.Serial,
		st.Identity.NotAfter.UTC().Format(time.DateOnly), until(st.Identity.NotAfter, now))
	fmt.Fprintf(b, "tunnel    %s, mtu %d\n\n", st.Tunnel.Addr, st.Tunnel.MTU)

	tw := tabwriter.NewWriter(b, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "RELAY\tADDRESS\tSTATE\tPATH\tIN USE\tRTT\tSINCE")
	for _, r := range st.Relays {
		rtt := "-"
		if r.State == "up" && r.RTT > 0 {
			rtt = daemon.HumanDuration(r.RTT)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.ID, r.Addr, r.State, dash(string(r.Path)), yes(r.Active), rtt, ago(r.Since, now))
	}
	if len(st.Relays) == 0 {
		fmt.Fprintln(tw, "(none)")
	}
	tw.Flush()

	b.WriteString("\n")
	tw = tabwriter.NewWriter(b, 0, 0, 2, ' ', 0)
	// LOCAL ADDR (the member's address from tunnel.member_addresses, where
	// local applications reach it) only when the appliance has any.
	local := false
	for _, p := range st.Tunnel.Peers {
		local = local || p.MemberAddr != ""
	}
	if local {
		fmt.Fprintln(tw, "PEER\tOVERLAY\tLOCAL ADDR\tHANDSHAKE\tKEY ATTESTATION")
	} else {
		fmt.Fprintln(tw, "PEER\tOVERLAY\tHANDSHAKE\tKEY ATTESTATION")
	}
	for _, p := range st.Tunnel.Peers {
		att := "expires " + until(p.AttestationExpiry, now)
		if p.Rotating {
			att += ", rotating"
		}
		hs, _ := time.Parse(time.RFC3339Nano, p.LastHandshake) // "" → zero: never
		if local {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", p.Member, p.Addr, dash(p.MemberAddr), ago(hs, now), att)
		} else {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", p.Member, p.Addr, ago(hs, now), att)
		}
	}
	if len(st.Tunnel.Peers) == 0 {
		fmt.Fprintln(tw, "(none)")
	}
	tw.Flush()

	b.WriteString("\n")
	var l ledgerStatus
	if err := json.Unmarshal(st.Ledger, &l); err != nil {
		var s string
		_ = json.Unmarshal(st.Ledger, &s)
		fmt.Fprintf(b, "ledger: %s\n", dash(s))
		return
	}
	tw = tabwriter.NewWriter(b, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "CHANNEL\tROLE\tHEIGHT\tLEADER\tTERM\tSTATE")
	rows := l.Channels
	if len(rows) == 0 {
		rows = []ledgerStatus{l}
	}
	for _, c := range rows {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%d\t%s\n", c.Channel, dash(strings.ToLower(strings.TrimPrefix(c.RaftState, "State"))),
			c.Height, dash(c.Leader), c.Term, c.State)
	}
	tw.Flush()
}

func renderRelay(b *strings.Builder, st *statusDoc) {
	pv := "none (static policy in relay.yaml)"
	if st.PolicyVersion != nil {
		pv = fmt.Sprint(*st.PolicyVersion)
	}
	fmt.Fprintf(b, "%s (relay), listening on %s, policy version %s\n\n", st.ID, st.Listen, pv)
	members := append([]string(nil), st.Members...)
	sort.Strings(members)
	fmt.Fprintf(b, "members connected (%d): %s\n", len(members), dash(strings.Join(members, " ")))
	var drops []string
	for reason, n := range st.Drops {
		if n > 0 {
			drops = append(drops, fmt.Sprintf("%s=%d", reason, n))
		}
	}
	sort.Strings(drops)
	fmt.Fprintf(b, "drops: %s\n", dash(strings.Join(drops, " ")))
}

// ago renders how long before now t was: "12s ago", "never" for zero.
func ago(t, now time.Time) string {
	if t.IsZero() {
		return "never"
	}
	if d := now.Sub(t); d >= 0 {
		return daemon.HumanDuration(d) + " ago"
	}
	return "in " + daemon.HumanDuration(t.Sub(now)) // clocks apart
}

// until renders how long after now t is: "in 364d23h", "5d ago" when past.
func until(t, now time.Time) string {
	if t.IsZero() {
		return "-"
	}
	if d := t.Sub(now); d > 0 {
		return "in " + daemon.HumanDuration(d)
	}
	return "EXPIRED " + daemon.HumanDuration(now.Sub(t)) + " ago"
}

// short cuts s to n characters, marking the cut.
func short(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func yes(b bool) string {
	if b {
		return "yes"
	}
	return ""
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
