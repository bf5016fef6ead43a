package orderer

// BenchmarkFabricOrdererLight: the stock Fabric baseline of
// BenchmarkOrderingLight, to run in the same `go test -bench` invocation: a
// 3-node Fabric 2.5.16 etcdraft orderer on loopback with TLS (cryptogen,
// configtxgen, osnadmin channel join; no system channel), BatchSize 500,
// BatchTimeout 2s, 1 KB envelopes over 4 Broadcast streams to node 1.
//
// Fabric answers Broadcast SUCCESS once the envelope is enqueued, before it
// is in a block, so the latency here is from send to the arrival, on a
// Deliver stream from node 1, of the block that holds the envelope (cut,
// committed by raft and written to node 1's ledger): the point at which
// memberd answers SUCCESS. tx/s is from the first send to the last block.

import (
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"math"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hyperledger/fabric-protos-go-apiv2/common"
	ab "github.com/hyperledger/fabric-protos-go-apiv2/orderer"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/protobuf/proto"

	"github.com/memberd/memberd/internal/testenv"
	"github.com/memberd/memberd/node/block"
)

func BenchmarkFabricOrdererLight(b *testing.B) {
	fab := testenv.Fabric(b, "orderer", "configtxgen", "cryptogen", "osnadmin")
	f := startFabricOrderers(b, fab)
	b.Run("rate=1000", func(b *testing.B) { f.run(b, benchLightTx, 4, 1000) })
	b.Run("rate=max", func(b *testing.B) { f.run(b, benchMinTx, 4, 0) })
}

const fabricCryptoConfig = `OrdererOrgs:
  - Name: Orderer
    Domain: example.com
    EnableNodeOUs: true
    Specs:
      - {Hostname: o1, SANS: ["127.0.0.1"]}
      - {Hostname: o2, SANS: ["127.0.0.1"]}
      - {Hostname: o3, SANS: ["127.0.0.1"]}
PeerOrgs:
  - Name: Org1
    Domain: org1.example.com
    EnableNodeOUs: true
    Template: {Count: 0}
    Users: {Count: 1}
`

// fabricConfigtx: %[1]s the orderer org folder, %[2]s Org1's MSP, %[3]s the
// orderer endpoints, %[4]s the consenters.
const fabricConfigtx = `Organizations:
  - &OrdererOrg
    Name: OrdererOrg
    ID: OrdererMSP
    MSPDir: %[1]s/msp
    Policies:
      Readers: {Type: Signature, Rule: "OR('OrdererMSP.member')"}
      Writers: {Type: Signature, Rule: "OR('OrdererMSP.member')"}
      Admins: {Type: Signature, Rule: "OR('OrdererMSP.admin')"}
    OrdererEndpoints: [%[3]s]
  - &Org1
    Name: Org1MSP
    ID: Org1MSP
    MSPDir: %[2]s
    Policies:
      Readers: {Type: Signature, Rule: "OR('Org1MSP.member')"}
      Writers: {Type: Signature, Rule: "OR('Org1MSP.member')"}
      Admins: {Type: Signature, Rule: "OR('Org1MSP.admin')"}
      Endorsement: {Type: Signature, Rule: "OR('Org1MSP.member')"}
Profiles:
  Bench:
    Policies:
      Readers: {Type: ImplicitMeta, Rule: "ANY Readers"}
      Writers: {Type: ImplicitMeta, Rule: "ANY Writers"}
      Admins: {Type: ImplicitMeta, Rule: "MAJORITY Admins"}
    Capabilities: {V2_0: true}
    Orderer:
      OrdererType: etcdraft
      BatchTimeout: 2s
      BatchSize: {MaxMessageCount: 500, AbsoluteMaxBytes: 10 MB, PreferredMaxBytes: 2 MB}
      EtcdRaft:
        Consenters:
%[4]s
      Organizations: [*OrdererOrg]
      Policies:
        Readers: {Type: ImplicitMeta, Rule: "ANY Readers"}
        Writers: {Type: ImplicitMeta, Rule: "ANY Writers"}
        Admins: {Type: ImplicitMeta, Rule: "MAJORITY Admins"}
        BlockValidation: {Type: ImplicitMeta, Rule: "ANY Writers"}
      Capabilities: {V2_0: true}
    Application:
      Organizations: [*Org1]
      Policies:
        Readers: {Type: ImplicitMeta, Rule: "ANY Readers"}
        Writers: {Type: ImplicitMeta, Rule: "ANY Writers"}
        Admins: {Type: ImplicitMeta, Rule: "MAJORITY Admins"}
        LifecycleEndorsement: {Type: ImplicitMeta, Rule: "MAJORITY Endorsement"}
        Endorsement: {Type: ImplicitMeta, Rule: "MAJORITY Endorsement"}
      Capabilities: {V2_5: true}
`

type fabricOrderers struct {
	client Identity
	abc    ab.AtomicBroadcastClient
}

// freePort returns a loopback port free at the time of the call.
func freePort(b *testing.B) int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

func runTool(b *testing.B, name string, args ...string) {
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		b.Fatalf("%s %s: %v\n%s", filepath.Base(name), strings.Join(args, " "), err, out)
	}
}

// startFabricOrderers generates the crypto material and genesis block,
// starts three stock orderers, joins them to channel "trade" and connects a
// client of Org1 to node 1. The orderers are stopped at cleanup.
func startFabricOrderers(b *testing.B, fab string) *fabricOrderers {
	dir := b.TempDir()
	bin := func(n string) string { return filepath.Join(fab, "bin", n) }
	os.WriteFile(filepath.Join(dir, "crypto-config.yaml"), []byte(fabricCryptoConfig), 0o600)
	runTool(b, bin("cryptogen"), "generate", "--config="+filepath.Join(dir, "crypto-config.yaml"), "--output="+filepath.Join(dir, "crypto"))
	org := filepath.Join(dir, "crypto/ordererOrganizations/example.com")
	var ports, admin [3]int
	var endpoints, consenters []string
	for i := range ports {
		ports[i], admin[i] = freePort(b), freePort(b)
		tlsCert := filepath.Join(org, fmt.Sprintf("orderers/o%d.example.com/tls/server.crt", i+1))
		endpoints = append(endpoints, fmt.Sprintf("%q", fmt.Sprintf("127.0.0.1:%d", ports[i])))
		consenters = append(consenters, fmt.Sprintf("          - {Host: 127.0.0.1, Port: %d, ClientTLSCert: %s, ServerTLSCert: %s}", ports[i], tlsCert, tlsCert))
	}
	ctx := fmt.Sprintf(fabricConfigtx, org, filepath.Join(dir, "crypto/peerOrganizations/org1.example.com/msp"),
		strings.Join(endpoints, ", "), strings.Join(consenters, "\n"))
	os.WriteFile(filepath.Join(dir, "configtx.yaml"), []byte(ctx), 0o600)
	genesis := filepath.Join(dir, "genesis.block")
	runTool(b, bin("configtxgen"), "-configPath", dir, "-profile", "Bench", "-channelID", "trade", "-outputBlock", genesis)
	for i := range ports {
		node := filepath.Join(org, fmt.Sprintf("orderers/o%d.example.com", i+1))
		data := filepath.Join(dir, fmt.Sprintf("o%d", i+1))
		key, cert, ca := node+"/tls/server.key", node+"/tls/server.crt", "["+node+"/tls/ca.crt]"
		cmd := exec.Command(bin("orderer"))
		cmd.Env = append(os.Environ(), "FABRIC_CFG_PATH="+filepath.Join(fab, "config"), "FABRIC_LOGGING_SPEC=error",
			"ORDERER_GENERAL_LISTENADDRESS=127.0.0.1", fmt.Sprintf("ORDERER_GENERAL_LISTENPORT=%d", ports[i]),
			"ORDERER_GENERAL_TLS_ENABLED=true", "ORDERER_GENERAL_TLS_PRIVATEKEY="+key, "ORDERER_GENERAL_TLS_CERTIFICATE="+cert,
			"ORDERER_GENERAL_TLS_ROOTCAS="+ca, "ORDERER_GENERAL_CLUSTER_CLIENTCERTIFICATE="+cert,
			"ORDERER_GENERAL_CLUSTER_CLIENTPRIVATEKEY="+key, "ORDERER_GENERAL_CLUSTER_ROOTCAS="+ca,
			"ORDERER_GENERAL_BOOTSTRAPMETHOD=none", "ORDERER_GENERAL_LOCALMSPDIR="+node+"/msp", "ORDERER_GENERAL_LOCALMSPID=OrdererMSP",
			"ORDERER_FILELEDGER_LOCATION="+data+"/ledger", "ORDERER_CONSENSUS_WALDIR="+data+"/wal", "ORDERER_CONSENSUS_SNAPDIR="+data+"/snap",
			"ORDERER_CHANNELPARTICIPATION_ENABLED=true", fmt.Sprintf("ORDERER_ADMIN_LISTENADDRESS=127.0.0.1:%d", admin[i]),
			"ORDERER_ADMIN_TLS_ENABLED=true", "ORDERER_ADMIN_TLS_PRIVATEKEY="+key, "ORDERER_ADMIN_TLS_CERTIFICATE="+cert,
			"ORDERER_ADMIN_TLS_ROOTCAS="+ca, "ORDERER_ADMIN_TLS_CLIENTAUTHREQUIRED=true", "ORDERER_ADMIN_TLS_CLIENTROOTCAS="+ca,
			fmt.Sprintf("ORDERER_OPERATIONS_LISTENADDRESS=127.0.0.1:%d", freePort(b)), "ORDERER_METRICS_PROVIDER=disabled")
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	}
	adminTLS := filepath.Join(org, "users/Admin@example.com/tls")
	for i := range ports {
		ca := filepath.Join(org, fmt.Sprintf("orderers/o%d.example.com/tls/ca.crt", i+1))
		var err error
		for try := 0; try < 50; try++ { // the admin endpoint starts listening shortly after the process
			var out []byte
			out, err = exec.Command(bin("osnadmin"), "channel", "join", "--channelID", "trade", "--config-block", genesis,
				"-o", fmt.Sprintf("127.0.0.1:%d", admin[i]), "--ca-file", ca,
				"--client-cert", adminTLS+"/client.crt", "--client-key", adminTLS+"/client.key").CombinedOutput()
			if err == nil && strings.Contains(string(out), "Status: 201") {
				break
			}
			err = fmt.Errorf("%v: %s", err, out)
			time.Sleep(100 * time.Millisecond)
		}
		if err != nil {
			b.Fatalf("osnadmin channel join on orderer %d: %v", i+1, err)
		}
	}
	f := &fabricOrderers{client: readFabricUser(b, filepath.Join(dir, "crypto/peerOrganizations/org1.example.com/users/User1@org1.example.com/msp"))}
	roots := x509.NewCertPool()
	caPEM, _ := os.ReadFile(filepath.Join(org, "tlsca/tlsca.example.com-cert.pem"))
	roots.AppendCertsFromPEM(caPEM)
	conn, err := grpc.NewClient(fmt.Sprintf("127.0.0.1:%d", ports[0]), append(ClientOptions(),
		grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: roots, ServerName: "127.0.0.1"})))...)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { conn.Close() })
	f.abc = ab.NewAtomicBroadcastClient(conn)
	// Wait for a raft leader: one envelope through to a block.
	deadline := time.Now().Add(30 * time.Second)
	for {
		env, _, _ := NewTransaction(f.client, "trade", []byte("warm-up"), time.Now())
		if st, _ := broadcastFabric(b.Context(), f.abc, env); st == common.Status_SUCCESS {
			break
		} else if time.Now().After(deadline) {
			b.Fatalf("stock Fabric orderer not ready within 30s: %s", st)
		}
		time.Sleep(200 * time.Millisecond)
	}
	return f
}

func broadcastFabric(ctx context.Context, c ab.AtomicBroadcastClient, env *common.Envelope) (common.Status, error) {
	st, err := c.Broadcast(ctx)
	if err != nil {
		return 0, err
	}
	defer st.CloseSend()
	if err := st.Send(env); err != nil {
		return 0, err
	}
	r, err := st.Recv()
	if err != nil {
		return 0, err
	}
	return r.Status, nil
}

// readFabricUser reads a cryptogen user's MSP folder (signcerts, keystore).
func readFabricUser(b *testing.B, msp string) Identity {
	certs, _ := filepath.Glob(msp + "/signcerts/*.pem")
	keys, _ := filepath.Glob(msp + "/keystore/*")
	if len(certs) != 1 || len(keys) != 1 {
		b.Fatalf("cryptogen user %s: want one signcert and one key", msp)
	}
	cp, _ := os.ReadFile(certs[0])
	kp, _ := os.ReadFile(keys[0])
	cb, _ := pem.Decode(cp)
	kb, _ := pem.Decode(kp)
	if cb == nil || kb == nil {
		b.Fatalf("cryptogen user %s: no PEM", msp)
	}
	cert, err := x509.ParseCertificate(cb.Bytes)
	if err != nil {
		b.Fatal(err)
	}
	key, err := x509.ParsePKCS8PrivateKey(kb.Bytes)
	if err != nil {
		b.Fatal(err)
	}
	return Identity{MSPID: "Org1MSP", Cert: cert, Signer: key.(crypto.Signer)}
}

// run offers total envelopes of 1 KB at rate tx/s (0: flat out) over
// streams Broadcast streams and times each from send to its block on Deliver.
func (f *fabricOrderers) run(b *testing.B, total, streams, rate int) {
	envs := make([]*common.Envelope, total)
	ids := make([]string, total)
	data := make([]byte, 1024)
	for i := range envs {
		copy(data, fmt.Sprint(i))
		var err error
		if envs[i], ids[i], err = NewTransaction(f.client, "trade", data, time.Now()); err != nil {
			b.Fatal(err)
		}
	}
	var mu sync.Mutex
	committed := make(map[string]time.Time, total)
	all := make(chan struct{})
	ctx, cancel := context.WithCancel(b.Context())
	defer cancel()
	seek, _ := proto.Marshal(&ab.SeekInfo{Start: newest, Stop: &ab.SeekPosition{Type: &ab.SeekPosition_Specified{
		Specified: &ab.SeekSpecified{Number: math.MaxUint64}}}, Behavior: ab.SeekInfo_BLOCK_UNTIL_READY})
	ds, err := f.abc.Deliver(ctx)
	if err != nil {
		b.Fatal(err)
	}
	if err := ds.Send(envSpec{id: f.client, typ: common.HeaderType_DELIVER_SEEK_INFO, data: seek}.build(b)); err != nil {
		b.Fatal(err)
	}
	go func() {
		want := make(map[string]bool, total)
		for _, id := range ids {
			want[id] = true
		}
		for {
			r, err := ds.Recv()
			if err != nil {
				return
			}
			blk := r.GetBlock()
			if blk == nil {
				continue
			}
			now := time.Now()
			mu.Lock()
			for _, raw := range blk.Data.Data {
				if e, err := block.ParseEnvelope(raw); err == nil && want[e.TxID()] {
					committed[e.TxID()] = now
				}
			}
			done := len(committed) == total
			mu.Unlock()
			if done {
				close(all)
				return
			}
		}
	}()
	time.Sleep(100 * time.Millisecond) // the Deliver stream is at the newest block
	sent := make([]time.Time, total)
	b.ResetTimer()
	start := time.Now()
	var wg sync.WaitGroup
	per := (total + streams - 1) / streams
	for s := range streams {
		lo, hi := min(s*per, total), min((s+1)*per, total)
		wg.Add(1)
		go func() {
			defer wg.Done()
			st, err := f.abc.Broadcast(ctx)
			if err != nil {
				return
			}
			go func() {
				for i := lo; i < hi; i++ {
					if rate > 0 {
						time.Sleep(time.Until(start.Add(time.Duration((i-lo)*streams+s) * time.Second / time.Duration(rate))))
					}
					sent[i] = time.Now()
					if st.Send(envs[i]) != nil {
						return
					}
				}
			}()
			for i := lo; i < hi; i++ {
				if r, err := st.Recv(); err != nil || r.Status != common.Status_SUCCESS {
					b.Errorf("Broadcast answer %d: %v %v", i, r.GetStatus(), err)
					return
				}
			}
			st.CloseSend()
		}()
	}
	wg.Wait()
	select {
	case <-all:
	case <-time.After(60 * time.Second):
		b.Fatalf("%d of %d envelopes delivered in blocks within 60s", len(committed), total)
	}
	b.StopTimer()
	var lat []time.Duration
	var last time.Time
	mu.Lock()
	for i, id := range ids {
		lat = append(lat, committed[id].Sub(sent[i]))
		if committed[id].After(last) {
			last = committed[id]
		}
	}
	mu.Unlock()
	slices.Sort(lat)
	b.ReportMetric(float64(last.Sub(start).Nanoseconds())/float64(total), "ns/op")
	b.ReportMetric(float64(total)/last.Sub(start).Seconds(), "tx/s")
	b.ReportMetric(float64(lat[total/2].Microseconds())/1e3, "p50-ms")
	b.ReportMetric(float64(lat[min(total-1, total*99/100)].Microseconds())/1e3, "p99-ms")
	b.ReportMetric(loadAverage(), "load1")
}
