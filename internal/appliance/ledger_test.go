package appliance

import (
	"strings"
	"testing"

	"github.com/memberd/memberd/node/raftlog"
)

func TestSplitMemberPort(t *testing.T) {
	for _, tc := range []struct {
		in     string
		member string
		port   uint16
		ok     bool
	}{
		{"member-b:7052", "member-b", 7052, true},
		{"m:1", "m", 1, true},
		{"member-b", "", 0, false},
		{":7052", "", 0, false},
		{"m:0", "", 0, false},
		{"m:65536", "", 0, false},
		{"m:x", "", 0, false},
	} {
		m, p, err := splitMemberPort(tc.in)
		if (err == nil) != tc.ok || m != tc.member || p != tc.port {
			t.Errorf("splitMemberPort(%q) = %q, %d, %v", tc.in, m, p, err)
		}
	}
}

func FuzzSplitMemberPort(f *testing.F) {
	for _, s := range []string{"member-b:7052", "[::1]:1", "m:", ":1", "a:b:c", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		m, p, err := splitMemberPort(s)
		if err != nil {
			return
		}
		if m == "" || p == 0 {
			t.Fatalf("accepted %q as %q:%d", s, m, p)
		}
	})
}

func TestLedgerConfig(t *testing.T) {
	base := "member: m\nidentity: id\npolicy: {dir: p, state_dir: s}\n"
	for _, tc := range []struct {
		name, yaml, err string
	}{
		{"defaults", "ledger: {}\n", ""},
		{"explicit", "ledger: {listen: '127.0.0.1:7050', data_dir: /var/lib/memberd/ledger, genesis_block: g.block, raft_port: 7060, peer_port: 7061, mutual_tls: true, snapshot_bytes: 4194304}\n", ""},
		{"small snapshot", "ledger: {snapshot_bytes: 1000}\n", "ledger.snapshot_bytes"},
		{"bad listen", "ledger: {listen: nope}\n", "ledger.listen"},
		{"same ports", "ledger: {raft_port: 7055, peer_port: 7055}\n", "must differ"},
		{"push port", "ledger: {raft_port: 7099}\n", "tunnel.push_port"},
		{"service port", "tunnel: {services: [{port: 7052, target: '10.0.0.1:1'}]}\nledger: {}\n", "tunnel.services[0]"},
		{"unknown key", "ledger: {raft: 1}\n", "raft"},
		{"admin defaults", "ledger: {admin: {client_ca: ca.pem}}\n", ""},
		{"admin without client_ca", "ledger: {admin: {listen: '127.0.0.1:9443'}}\n", "ledger.admin.client_ca"},
		{"admin bad listen", "ledger: {admin: {listen: x, client_ca: ca.pem}}\n", "ledger.admin.listen"},
		{"admin plain HTTP on loopback", "ledger: {admin: {listen: '127.0.0.1:9443', insecure_plain_http: true}}\n", ""},
		{"admin plain HTTP on every address", "ledger: {admin: {listen: ':9443', insecure_plain_http: true}}\n", "loopback"},
		{"admin plain HTTP on a LAN address", "ledger: {admin: {listen: '10.0.0.1:9443', insecure_plain_http: true}}\n", "loopback"},
		{"admin unknown key", "ledger: {admin: {client_ca: ca.pem, ou: x}}\n", "ou"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := ParseConfig([]byte(base+tc.yaml), "/etc/memberd")
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err %v, want one naming %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tc.name == "admin defaults" {
				a := c.Ledger.Admin
				if a.Listen != DefaultLedgerAdminListen || a.ClientOU != DefaultLedgerAdminClientOU || a.InsecurePlainHTTP {
					t.Fatalf("admin defaults not applied: %+v", *a)
				}
			}
			if tc.name == "defaults" && c.Ledger.Admin != nil {
				t.Fatal("a ledger.admin section appeared from nowhere: the participation API must be asked for")
			}
			if tc.name == "defaults" {
				l := c.Ledger
				if l.Listen != DefaultLedgerListen || l.DataDir != DefaultLedgerDataDir || l.RaftPort != DefaultLedgerRaftPort ||
					l.PeerPort != DefaultLedgerPeerPort || l.MutualTLS || l.GenesisBlock != "" || l.SnapshotBytes != raftlog.DefaultSnapshotBytes {
					t.Fatalf("defaults not applied: %+v", *l)
				}
				if got := c.Path(l.DataDir); got != "/etc/memberd/ledger" {
					t.Fatalf("data dir resolves to %s", got)
				}
			}
		})
	}
}
