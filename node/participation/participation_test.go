package participation

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
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
	"github.com/memberd/memberd/internal/testpki"
	"github.com/memberd/memberd/node/block"
	"github.com/memberd/memberd/node/channelconfig"
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
	ca := testpki.NewCA(t, "m1")
	leaf := ca.Issue(t, "n1").Cert
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

// TestParticipationAPI checks every route against the status codes and
// error texts of Fabric 2.5.16's restapi.go (see the package doc).
func TestParticipationAPI(t *testing.T) {
	h, err := New(Config{Registry: &memRegistry{ch: map[string]ChannelInfo{}}, MaxRequestBytes: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	defer srv.Close()
	noRedirect := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	do := func(method, path, ctype, accept string, body *bytes.Buffer) (int, []byte, http.Header) {
		t.Helper()
		var rd *bytes.Buffer = body
		if rd == nil {
			rd = &bytes.Buffer{}
		}
		req, _ := http.NewRequest(method, srv.URL+path, rd)
		if ctype != "" {
			req.Header.Set("Content-Type", ctype)
		}
		if accept != "" {
			req.Header.Set("Accept", accept)
		}
		resp, err := noRedirect.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, b, resp.Header
	}
	gen := genesis(t, "trade")
	ct, body := form(t, "config-block", gen)
	ct2, body2 := form(t, "config-block", gen)
	ct3, body3 := form(t, "block", gen)
	ct4, body4 := form(t, "config-block", []byte("xx"))
	ct5, body5 := form(t, "config-block", make([]byte, 2<<20))
	ct6, body6 := form(t, "config-block", genesis(t, "other"))
	type check func(m map[string]any, hd http.Header) error
	allow := func(want string) check {
		return func(_ map[string]any, hd http.Header) error {
			if hd.Get("Allow") != want {
				return fmt.Errorf("Allow %q, want %q", hd.Get("Allow"), want)
			}
			return nil
		}
	}
	cases := []struct {
		name, method, path, ctype, accept string
		body                              *bytes.Buffer
		want                              int
		wantErr                           string // the whole "error" text, or a prefix ending in "..."
		check                             check
	}{
		{"empty list", "GET", URLBase, "", "", nil, 200, "", func(m map[string]any, hd http.Header) error {
			if v, ok := m["channels"]; !ok || v != nil || m["systemChannel"] != nil || hd.Get("Cache-Control") != "no-store" {
				return fmt.Errorf("got %v %v, want channels null as Fabric", m, hd)
			}
			return nil
		}},
		{"join", "POST", URLBase, ct, "", body, 201, "", func(m map[string]any, hd http.Header) error {
			if m["name"] != "trade" || hd.Get("Location") != URLBase+"/trade" || m["height"] != 1.0 || m["url"] != URLBase+"/trade" {
				return fmt.Errorf("got %v %v", m, hd)
			}
			return nil
		}},
		{"join again", "POST", URLBase, ct2, "", body2, 405, "cannot join: channel already exists", allow("GET, DELETE")},
		{"join with a wrong field", "POST", URLBase, ct3, "", body3, 400, "form does not contains part key: config-block", nil},
		{"join with garbage", "POST", URLBase, ct4, "", body4, 400, "cannot unmarshal file part config-block into a block: ...", nil},
		{"join with JSON", "POST", URLBase, "application/json", "", bytes.NewBufferString("{}"), 400, "unsupported Content-Type: [application/json]", nil},
		{"join too large", "POST", URLBase, ct5, "", body5, 400, "cannot read form from request body: ...", nil},
		{"join wanting XML", "POST", URLBase, ct6, "application/xml", body6, 406, "response Content-Type is application/json only", nil},
		{"list", "GET", URLBase, "", "application/json", nil, 200, "", func(m map[string]any, _ http.Header) error {
			l, _ := m["channels"].([]any)
			if len(l) != 1 || l[0].(map[string]any)["url"] != URLBase+"/trade" {
				return fmt.Errorf("got %v", m)
			}
			return nil
		}},
		{"get", "GET", URLBase + "/trade", "", "*/*", nil, 200, "", func(m map[string]any, _ http.Header) error {
			if m["consensusRelation"] != "consenter" || m["status"] != "active" || m["url"] != URLBase+"/trade" {
				return fmt.Errorf("got %v", m)
			}
			return nil
		}},
		{"get unknown", "GET", URLBase + "/nope", "", "", nil, 404, "channel does not exist", nil},
		{"bad name", "GET", URLBase + "/Bad_Name", "", "", nil, 400, "invalid channel ID: 'Bad_Name' contains illegal characters", nil},
		{"put not allowed", "PUT", URLBase + "/trade", "", "", nil, 405, "invalid request method: PUT", allow("GET, DELETE")},
		{"delete the list", "DELETE", URLBase, "", "", nil, 405, "invalid request method: DELETE", allow("GET, POST")},
		{"remove", "DELETE", URLBase + "/trade", "", "", nil, 204, "", nil},
		{"remove again", "DELETE", URLBase + "/trade", "", "", nil, 404, "cannot remove: channel does not exist", nil},
		{"base redirects", "GET", URLBaseV1, "", "", nil, 302, "", func(_ map[string]any, hd http.Header) error {
			if hd.Get("Location") != URLBase {
				return fmt.Errorf("Location %q", hd.Get("Location"))
			}
			return nil
		}},
		{"trailing slash", "GET", URLBase + "/", "", "", nil, 404, "", nil},
		{"other path", "GET", "/participation/v2/x", "", "", nil, 404, "", nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			code, raw, hd := do(c.method, c.path, c.ctype, c.accept, c.body)
			if code != c.want {
				t.Fatalf("status %d (%s), want %d", code, raw, c.want)
			}
			var m map[string]any
			if code != 204 && code != 302 && code != 404 || c.wantErr != "" {
				if err := json.Unmarshal(raw, &m); err != nil {
					t.Fatalf("body %q is not JSON: %v", raw, err)
				}
			}
			got, _ := m["error"].(string)
			if want, ok := strings.CutSuffix(c.wantErr, "..."); ok {
				if !strings.HasPrefix(got, want) || len(got) == len(want) {
					t.Fatalf("error %q, want %q followed by the cause", got, want)
				}
			} else if got != c.wantErr {
				t.Fatalf("error %q, want %q", got, c.wantErr)
			}
			if c.check != nil {
				if err := c.check(m, hd); err != nil {
					t.Fatal(err)
				}
			}
		})
	}
}
