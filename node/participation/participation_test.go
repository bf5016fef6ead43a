package participation

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hyperledger/fabric-protos-go-apiv2/common"

	"github.com/memberd/memberd/hsm"
	"github.com/memberd/memberd/node/block"
	"github.com/memberd/memberd/node/channelconfig"
	"github.com/memberd/memberd/policy/policytest"
)

// memRegistry joins channels by parsing their config block for real.
type memRegistry struct {
	mu sync.Mutex
	ch map[string]ChannelInfo
}

func (m *memRegistry) List() []ChannelInfo {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []ChannelInfo
	for _, c := range m.ch {
		out = append(out, c)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

func (m *memRegistry) Get(name string) (ChannelInfo, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	c, ok := m.ch[name]
	if !ok {
		return c, fmt.Errorf("%w: %q", ErrNotFound, name)
	}
	return c, nil
}

func (m *memRegistry) Join(_ context.Context, b *common.Block) (ChannelInfo, error) {
	ch, err := channelconfig.Parse(b)
	if err != nil {
		return ChannelInfo{}, fmt.Errorf("%w: %w", ErrBadBlock, err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	name := ch.Config.ChannelID
	if _, ok := m.ch[name]; ok {
		return ChannelInfo{}, fmt.Errorf("%w: %q", ErrExists, name)
	}
	info := ChannelInfo{Name: name, ConsensusRelation: "consenter", Status: "active", Height: b.Header.Number + 1}
	m.ch[name] = info
	return info, nil
}

func (m *memRegistry) Remove(_ context.Context, name string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.ch[name]; !ok {
		return fmt.Errorf("%w: %q", ErrNotFound, name)
	}
	delete(m.ch, name)
	return nil
}

func genesis(t *testing.T, channel string) []byte {
	ca := policytest.NewCA(t, "m1")
	leaf, _ := ca.Issue(t, "n1")
	p := hsm.EncodePEM("CERTIFICATE", leaf.Raw)
	org := channelconfig.Org{MSPID: "m1MSP", RootCerts: [][]byte{[]byte(ca.PEM)}, OrdererEndpoints: []string{"127.0.0.1:7050"}}
	b, err := channelconfig.GenesisBlock(channelconfig.Config{ChannelID: channel, OrdererOrgs: []channelconfig.Org{org},
		ApplicationOrgs: []channelconfig.Org{org},
		Consenters:      []channelconfig.Consenter{{Host: "127.0.0.1", Port: 7050, ClientTLSCert: p, ServerTLSCert: p}}},
		time.Now(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := block.Marshal(b)
	return raw
}

// form builds the multipart body osnadmin sends.
func form(t *testing.T, field string, data []byte) (string, *bytes.Buffer) {
	var buf bytes.Buffer
	w := multipart.NewWriter(&buf)
	fw, _ := w.CreateFormFile(field, "config.block")
	fw.Write(data)
	w.Close()
	return w.FormDataContentType(), &buf
}

func TestParticipationAPI(t *testing.T) {
	h, err := New(Config{Registry: &memRegistry{ch: map[string]ChannelInfo{}}, MaxRequestBytes: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	defer srv.Close()
	do := func(method, path, ctype string, body *bytes.Buffer) (int, map[string]any, http.Header) {
		t.Helper()
		var rd *bytes.Buffer = body
		if rd == nil {
			rd = &bytes.Buffer{}
		}
		req, _ := http.NewRequest(method, srv.URL+path, rd)
		if ctype != "" {
			req.Header.Set("Content-Type", ctype)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var m map[string]any
		json.NewDecoder(resp.Body).Decode(&m)
		return resp.StatusCode, m, resp.Header
	}
	gen := genesis(t, "trade")
	ct, body := form(t, "config-block", gen)
	ct2, body2 := form(t, "config-block", gen)
	ct3, body3 := form(t, "block", gen)
	ct4, body4 := form(t, "config-block", []byte("xx"))
	ct5, body5 := form(t, "config-block", make([]byte, 2<<20))
	cases := []struct {
		name, method, path, ctype string
		body                      *bytes.Buffer
		want                      int
		check                     func(m map[string]any, hd http.Header) error
	}{
		{"empty list", "GET", URLBase, "", nil, 200, func(m map[string]any, _ http.Header) error {
			if l, _ := m["channels"].([]any); len(l) != 0 || m["systemChannel"] != nil {
				return fmt.Errorf("got %v", m)
			}
			return nil
		}},
		{"join", "POST", URLBase, ct, body, 201, func(m map[string]any, hd http.Header) error {
			if m["name"] != "trade" || hd.Get("Location") != URLBase+"/trade" || m["height"] != 1.0 {
				return fmt.Errorf("got %v %v", m, hd)
			}
			return nil
		}},
		{"join again", "POST", URLBase, ct2, body2, 409, nil},
		{"join with a wrong field", "POST", URLBase, ct3, body3, 400, nil},
		{"join with garbage", "POST", URLBase, ct4, body4, 400, nil},
		{"join with JSON", "POST", URLBase, "application/json", bytes.NewBufferString("{}"), 415, nil},
		{"join too large", "POST", URLBase, ct5, body5, 413, nil},
		{"list", "GET", URLBase, "", nil, 200, func(m map[string]any, _ http.Header) error {
			l, _ := m["channels"].([]any)
			if len(l) != 1 || l[0].(map[string]any)["url"] != URLBase+"/trade" {
				return fmt.Errorf("got %v", m)
			}
			return nil
		}},
		{"get", "GET", URLBase + "/trade", "", nil, 200, func(m map[string]any, _ http.Header) error {
			if m["consensusRelation"] != "consenter" || m["status"] != "active" {
				return fmt.Errorf("got %v", m)
			}
			return nil
		}},
		{"get unknown", "GET", URLBase + "/nope", "", nil, 404, nil},
		{"bad name", "GET", URLBase + "/Bad_Name", "", nil, 400, nil},
		{"put not allowed", "PUT", URLBase + "/trade", "", nil, 405, func(_ map[string]any, hd http.Header) error {
			if hd.Get("Allow") == "" {
				return fmt.Errorf("no Allow header")
			}
			return nil
		}},
		{"remove", "DELETE", URLBase + "/trade", "", nil, 204, nil},
		{"remove again", "DELETE", URLBase + "/trade", "", nil, 404, nil},
		{"other path", "GET", "/participation/v2/x", "", nil, 404, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			code, m, hd := do(c.method, c.path, c.ctype, c.body)
			if code != c.want {
				t.Fatalf("status %d (%v), want %d", code, m, c.want)
			}
			if code >= 400 && strings.TrimSpace(fmt.Sprint(m["error"])) == "" {
				t.Fatalf("error response without an error message: %v", m)
			}
			if c.check != nil {
				if err := c.check(m, hd); err != nil {
					t.Fatal(err)
				}
			}
		})
	}
}
