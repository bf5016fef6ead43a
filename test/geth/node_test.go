package geth_test

// One geth node of the scenario: a custom post-merge genesis (geth ≥ 1.14
// runs only PoS chains), its own node key, devp2p on a loopback port with
// discovery off and static peers from config.toml, JSON-RPC and the engine
// API on loopback.

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// chainID is the custom chain of the scenario (also its network id).
const chainID = 7441

// genesisJSON is a chain with every fork up to Shanghai at genesis and
// terminal total difficulty 0 (post-merge from block 0, no blocks
// produced: the test needs peering and transaction gossip, not mining).
func genesisJSON(funded string) []byte {
	g := map[string]any{
		"config": map[string]any{
			"chainId": chainID, "homesteadBlock": 0, "eip150Block": 0, "eip155Block": 0,
			"eip158Block": 0, "byzantiumBlock": 0, "constantinopleBlock": 0, "petersburgBlock": 0,
			"istanbulBlock": 0, "berlinBlock": 0, "londonBlock": 0, "mergeNetsplitBlock": 0,
			"shanghaiTime": 0, "terminalTotalDifficulty": 0, "terminalTotalDifficultyPassed": true,
		},
		"difficulty": "0x0", "gasLimit": "0x1c9c380", "baseFeePerGas": "0x3b9aca00",
		"extraData": "0x", "timestamp": "0x0",
		"alloc": map[string]any{strings.TrimPrefix(funded, "0x"): map[string]string{"balance": "0x3635c9adc5dea00000"}}, // 1000 ether
	}
	b, _ := json.Marshal(g)
	return b
}

// gethNode is one running geth.
type gethNode struct {
	name    string
	key     *key   // node key (devp2p identity)
	p2pHost string // devp2p listen host (default 127.0.0.1)
	p2pPort int    // devp2p listen port
	rpc     string // http://127.0.0.1:port
	engine  string // http://127.0.0.1:port (JWT)
	jwt     []byte
	client  *http.Client // reaches rpc and engine; nil = http.DefaultClient
	proc    *process
}

// p2pAddr is where the node listens for devp2p.
func (n *gethNode) p2pAddr() string { return net.JoinHostPort(n.p2pHost, fmt.Sprint(n.p2pPort)) }

// enode is the node's URL with host:port replaced by addr, the address a
// peer dials to reach it (its local forward).
func (n *gethNode) enode(addr string) string { return "enode://" + n.key.nodeID() + "@" + addr }

// newGethNode initialises a data dir under dir with genesis and a fresh key;
// its JSON-RPC endpoints will listen on rpcHost.
func newGethNode(t *testing.T, geth, dir, name string, genesis []byte, rpcHost string) *gethNode {
	t.Helper()
	k, err := newKey()
	if err != nil {
		t.Fatal(err)
	}
	n := &gethNode{name: name, key: k, p2pHost: "127.0.0.1", p2pPort: loopbackPort(t), jwt: make([]byte, 32),
		rpc: fmt.Sprintf("http://%s:%d", rpcHost, loopbackPort(t)), engine: fmt.Sprintf("http://%s:%d", rpcHost, loopbackPort(t))}
	if _, err := rand.Read(n.jwt); err != nil {
		t.Fatal(err)
	}
	data := filepath.Join(dir, name)
	if err := os.MkdirAll(data, 0o700); err != nil {
		t.Fatal(err)
	}
	for file, body := range map[string][]byte{
		"genesis.json": genesis, "nodekey": []byte(k.hex()), "jwt.hex": []byte(hex.EncodeToString(n.jwt)),
	} {
		if err := os.WriteFile(filepath.Join(data, file), body, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	out, err := exec.Command(geth, "--datadir", data, "init", filepath.Join(data, "genesis.json")).CombinedOutput()
	if err != nil {
		t.Fatalf("geth init %s: %v\n%s", name, err, out)
	}
	return n
}

// start runs geth (behind the command prefix wrap, if any) with staticPeers
// (enode URLs) in config.toml: the way an operator lists peers when
// discovery is off.
func (n *gethNode) start(t *testing.T, geth, dir string, wrap []string, staticPeers ...string) {
	t.Helper()
	data := filepath.Join(dir, n.name)
	quoted := make([]string, len(staticPeers))
	for i, p := range staticPeers {
		quoted[i] = fmt.Sprintf("%q", p)
	}
	toml := fmt.Sprintf("[Node.P2P]\nListenAddr = %q\nNoDiscovery = true\nMaxPeers = 8\nStaticNodes = [%s]\n",
		n.p2pAddr(), strings.Join(quoted, ", "))
	if err := os.WriteFile(filepath.Join(data, "config.toml"), []byte(toml), 0o600); err != nil {
		t.Fatal(err)
	}
	hostPort := func(u string) (string, string) {
		h, p, _ := net.SplitHostPort(strings.TrimPrefix(u, "http://"))
		return h, p
	}
	rpcHost, rpcPort := hostPort(n.rpc)
	engineHost, enginePort := hostPort(n.engine)
	args := append(append([]string(nil), wrap...), geth,
		"--datadir", data, "--config", filepath.Join(data, "config.toml"),
		"--networkid", fmt.Sprint(chainID), "--nodekey", filepath.Join(data, "nodekey"),
		"--nodiscover", "--nat", "extip:127.0.0.1", "--syncmode", "full", "--cache", "64",
		"--http", "--http.addr", rpcHost, "--http.port", rpcPort, "--http.api", "eth,net,admin,txpool",
		"--authrpc.addr", engineHost, "--authrpc.port", enginePort, "--authrpc.jwtsecret", filepath.Join(data, "jwt.hex"),
		"--ipcdisable", "--verbosity", "3")
	n.proc = startProcess(t, dir, n.name, os.Environ(), args[0], args[1:]...)
}

// call makes a JSON-RPC call on the node's HTTP endpoint (engine: on the
// authenticated engine endpoint) and decodes the result into v.
func (n *gethNode) call(ctx context.Context, engine bool, v any, method string, params ...any) error {
	if params == nil {
		params = []any{}
	}
	body, _ := json.Marshal(map[string]any{"jsonrpc": "2.0", "id": 1, "method": method, "params": params})
	url := n.rpc
	if engine {
		url = n.engine
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	if engine {
		req.Header.Set("Authorization", "Bearer "+n.engineToken())
	}
	client := n.client
	if client == nil {
		client = http.DefaultClient
	}
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w", n.name, method, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	if err != nil {
		return err
	}
	var r struct {
		Result json.RawMessage `json:"result"`
		Error  *struct {
			Code    int    `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	}
	if err := json.Unmarshal(raw, &r); err != nil {
		return fmt.Errorf("%s %s: %s: %s", n.name, method, resp.Status, bytes.TrimSpace(raw))
	}
	if r.Error != nil {
		return fmt.Errorf("%s %s: error %d: %s", n.name, method, r.Error.Code, r.Error.Message)
	}
	if v == nil {
		return nil
	}
	return json.Unmarshal(r.Result, v)
}

// engineToken is an HS256 JWT with the current time, as a consensus client
// sends it on the engine API.
func (n *gethNode) engineToken() string {
	enc := base64.RawURLEncoding
	head := enc.EncodeToString([]byte(`{"alg":"HS256","typ":"JWT"}`))
	claims := enc.EncodeToString(fmt.Appendf(nil, `{"iat":%d}`, time.Now().Unix()))
	mac := hmac.New(sha256.New, n.jwt)
	mac.Write([]byte(head + "." + claims))
	return head + "." + claims + "." + enc.EncodeToString(mac.Sum(nil))
}

// markSynced does what a consensus client's first forkchoiceUpdated does:
// it names the genesis block as head. Until then a post-merge geth counts
// itself unsynced and drops the transactions its peers gossip.
func (n *gethNode) markSynced(ctx context.Context) error {
	var blk struct {
		Hash string `json:"hash"`
	}
	if err := n.call(ctx, false, &blk, "eth_getBlockByNumber", "0x0", false); err != nil {
		return err
	}
	zero := "0x" + strings.Repeat("0", 64)
	var res struct {
		PayloadStatus struct {
			Status string `json:"status"`
		} `json:"payloadStatus"`
	}
	state := map[string]string{"headBlockHash": blk.Hash, "safeBlockHash": zero, "finalizedBlockHash": zero}
	if err := n.call(ctx, true, &res, "engine_forkchoiceUpdatedV2", state, nil); err != nil {
		return err
	}
	if res.PayloadStatus.Status != "VALID" {
		return fmt.Errorf("%s engine_forkchoiceUpdatedV2(genesis %s): status %q, want VALID", n.name, blk.Hash, res.PayloadStatus.Status)
	}
	return nil
}

// peer is the part of admin_peers the test reads.
type peer struct {
	Enode   string `json:"enode"` // enode://<public key>@host:port
	ID      string `json:"id"`    // keccak256 of the public key
	Network struct {
		LocalAddress  string `json:"localAddress"`
		RemoteAddress string `json:"remoteAddress"`
		Inbound       bool   `json:"inbound"`
		Static        bool   `json:"static"`
	} `json:"network"`
	Protocols map[string]json.RawMessage `json:"protocols"`
}

// ethPeer returns the peer with public key nodeID (hex, as in enode URLs)
// if it speaks eth.
func (n *gethNode) ethPeer(ctx context.Context, nodeID string) (*peer, error) {
	var peers []peer
	if err := n.call(ctx, false, &peers, "admin_peers"); err != nil {
		return nil, err
	}
	for i := range peers {
		if strings.HasPrefix(peers[i].Enode, "enode://"+nodeID+"@") {
			if _, ok := peers[i].Protocols["eth"]; !ok {
				return nil, fmt.Errorf("%s: peer %.12s… without eth (protocols %v)", n.name, nodeID, keys(peers[i].Protocols))
			}
			return &peers[i], nil
		}
	}
	return nil, fmt.Errorf("%s: peer %.12s… not among its %d peers", n.name, nodeID, len(peers))
}

func keys(m map[string]json.RawMessage) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

// pooled reports whether the txpool holds a transaction from sender with
// hash (pending or queued).
func (n *gethNode) pooled(ctx context.Context, sender, hash string) (bool, error) {
	var content map[string]map[string]map[string]struct {
		Hash string `json:"hash"`
	}
	if err := n.call(ctx, false, &content, "txpool_content"); err != nil {
		return false, err
	}
	for _, section := range content { // pending, queued
		for from, txs := range section {
			if !strings.EqualFold(from, sender) {
				continue
			}
			for _, tx := range txs {
				if strings.EqualFold(tx.Hash, hash) {
					return true, nil
				}
			}
		}
	}
	return false, nil
}
