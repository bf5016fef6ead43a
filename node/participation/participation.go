// Package participation serves Fabric's channel participation REST API
// (/participation/v1/channels), the API `osnadmin channel list|info|join|remove`
// talks to, as an http.Handler over a Registry of channels. The handler owns
// no socket: the caller serves it behind TLS with client certificates
// required, as Fabric's orderer admin endpoint (cmd/memberd/app
// run_ledger_admin.go).
//
// Routes, status codes and JSON bodies are those of Fabric 2.5's
// orderer/common/channelparticipation/restapi.go (v2.5.16), so that scripts
// written against a stock orderer behave the same:
//
//	GET    /participation/v1/                 302 to /participation/v1/channels
//	GET    /participation/v1/channels         200 {"systemChannel":null,"channels":[{"name","url"}]}
//	                                          ("channels":null when there are none)
//	GET    /participation/v1/channels/NAME    200 {"name","url","consensusRelation","status","height"}
//	                                          404 "channel does not exist"
//	POST   /participation/v1/channels         multipart/form-data, one file field "config-block": a
//	                                          marshalled common.Block → 201 + Location;
//	                                          405 "cannot join: channel already exists" (Allow: GET, DELETE);
//	                                          400 for a bad form, block or join ("cannot join: ...")
//	DELETE /participation/v1/channels/NAME    204; 404 "cannot remove: channel does not exist";
//	                                          400 "cannot remove: ..." for any other failure
//
// Any other method on those paths is 405 with Allow; a POST that is not
// multipart/form-data is 400 "unsupported Content-Type: [...]"; an Accept
// header without application/json is 406; an invalid channel name is 400;
// any other path is 404 (text, as gorilla/mux's default). Errors are
// {"error": "..."}. One deliberate difference: a body larger than
// MaxRequestBytes is refused like Fabric (400) but the limit defaults to
// 100 MB, not Fabric's 1 MB.
package participation

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"mime/multipart"
	"net/http"
	"regexp"
	"strings"

	"github.com/hyperledger/fabric-protos-go-apiv2/common"

	"github.com/memberd/memberd/node/block"
)

// URLBase is the API's path prefix.
const URLBase = "/participation/v1/channels"

// URLBaseV1 is the prefix the handler answers under; mount it there.
const URLBaseV1 = "/participation/v1/"

// DefaultMaxRequestBytes bounds a join request body.
const DefaultMaxRequestBytes = 100 << 20

// Sentinel errors a Registry returns (wrapped) to choose the HTTP status.
// Their texts are Fabric's (orderer/common/types/errors.go), which the
// handler writes as they are.
var (
	ErrNotFound = errors.New("channel does not exist")
	ErrExists   = errors.New("channel already exists")
	ErrBadBlock = errors.New("invalid join block")
)

// ChannelInfo describes one channel, as osnadmin prints it.
type ChannelInfo struct {
	Name              string `json:"name"`
	URL               string `json:"url"`
	ConsensusRelation string `json:"consensusRelation"` // "consenter", "follower"
	Status            string `json:"status"`            // "active", "onboarding", "inactive"
	Height            uint64 `json:"height"`
}

// Registry is the set of channels this node serves; the handler's only seam.
// Join is given the parsed config block; it returns ErrExists if the channel
// is already served and ErrBadBlock for a block it cannot join from. Remove
// returns ErrNotFound for a channel it does not serve.
type Registry interface {
	List() []ChannelInfo
	Get(name string) (ChannelInfo, error)
	Join(ctx context.Context, configBlock *common.Block) (ChannelInfo, error)
	Remove(ctx context.Context, name string) error
}

// Config configures a Handler.
type Config struct {
	Registry        Registry // required
	MaxRequestBytes int64    // default DefaultMaxRequestBytes
	Logger          *slog.Logger
}

// Handler serves the API.
type Handler struct {
	cfg Config
	log *slog.Logger
}

var _ http.Handler = (*Handler)(nil)

// New returns a Handler.
func New(cfg Config) (*Handler, error) {
	if cfg.Registry == nil {
		return nil, errors.New("participation: Config.Registry is required")
	}
	if cfg.MaxRequestBytes <= 0 {
		cfg.MaxRequestBytes = DefaultMaxRequestBytes
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Handler{cfg: cfg, log: cfg.Logger}, nil
}

// nameRe is Fabric's configtx.ChannelAllowedChars with its 249-byte limit.
var nameRe = regexp.MustCompile(`^[a-z][a-z0-9.-]{0,248}$`)

// ServeHTTP implements http.Handler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	path := r.URL.Path
	switch {
	case path == URLBaseV1 && r.Method == http.MethodGet:
		http.Redirect(w, r, URLBase, http.StatusFound)
	case path == URLBase:
		switch r.Method {
		case http.MethodGet:
			if acceptsJSON(w, r) {
				h.list(w)
			}
		case http.MethodPost:
			if !strings.Contains(r.Header.Get("Content-Type"), "multipart/form-data") {
				writeError(w, http.StatusBadRequest, fmt.Errorf("unsupported Content-Type: %v", r.Header.Values("Content-Type")))
				return
			}
			if acceptsJSON(w, r) {
				h.join(w, r)
			}
		default:
			notAllowed(w, fmt.Errorf("invalid request method: %s", r.Method), http.MethodGet, http.MethodPost)
		}
	case strings.HasPrefix(path, URLBase+"/") && !strings.Contains(path[len(URLBase)+1:], "/") && len(path) > len(URLBase)+1:
		name := path[len(URLBase)+1:]
		switch r.Method {
		case http.MethodGet, http.MethodDelete:
		default:
			notAllowed(w, fmt.Errorf("invalid request method: %s", r.Method), http.MethodGet, http.MethodDelete)
			return
		}
		if !acceptsJSON(w, r) {
			return
		}
		if err := validName(name); err != nil {
			writeError(w, http.StatusBadRequest, fmt.Errorf("invalid channel ID: %w", err))
			return
		}
		if r.Method == http.MethodGet {
			h.get(w, name)
		} else {
			h.remove(w, r, name)
		}
	default:
		http.NotFound(w, r)
	}
}

// validName is Fabric's configtx.ValidateChannelID, with its messages.
func validName(name string) error {
	if len(name) > 249 {
		return errors.New("channel ID illegal, cannot be longer than 249")
	}
	if !nameRe.MatchString(name) {
		return fmt.Errorf("'%s' contains illegal characters", name)
	}
	return nil
}

// acceptsJSON answers 406 unless the client accepts application/json.
func acceptsJSON(w http.ResponseWriter, r *http.Request) bool {
	acc := r.Header.Get("Accept")
	if acc == "" {
		return true
	}
	for opt := range strings.SplitSeq(acc, ",") {
		if strings.Contains(opt, "application/json") || strings.Contains(opt, "application/*") || strings.Contains(opt, "*/*") {
			return true
		}
	}
	writeError(w, http.StatusNotAcceptable, errors.New("response Content-Type is application/json only"))
	return false
}

type listEntry struct {
	Name string `json:"name"`
	URL  string `json:"url"`
}

func (h *Handler) list(w http.ResponseWriter) {
	out := struct {
		SystemChannel *listEntry  `json:"systemChannel"`
		Channels      []listEntry `json:"channels"` // null when empty, as Fabric
	}{}
	for _, c := range h.cfg.Registry.List() {
		out.Channels = append(out.Channels, listEntry{Name: c.Name, URL: URLBase + "/" + c.Name})
	}
	w.Header().Set("Cache-Control", "no-store")
	writeJSON(w, http.StatusOK, out)
}

func (h *Handler) get(w http.ResponseWriter, name string) {
	info, err := h.cfg.Registry.Get(name)
	if err != nil {
		if errors.Is(err, ErrNotFound) {
			err = ErrNotFound
		}
		writeError(w, http.StatusNotFound, err)
		return
	}
	info.URL = URLBase + "/" + info.Name
	w.Header().Set("Cache-Control", "no-store")
	writeJSON(w, http.StatusOK, info)
}

func (h *Handler) remove(w http.ResponseWriter, r *http.Request, name string) {
	err := h.cfg.Registry.Remove(r.Context(), name)
	switch {
	case err == nil:
		w.WriteHeader(http.StatusNoContent)
		h.log.Info("removed channel", "channel", name)
	case errors.Is(err, ErrNotFound):
		writeError(w, http.StatusNotFound, fmt.Errorf("cannot remove: %w", ErrNotFound))
	default:
		h.log.Warn("removing a channel failed", "channel", name, "err", err)
		writeError(w, http.StatusBadRequest, fmt.Errorf("cannot remove: %w", err))
	}
}

func (h *Handler) join(w http.ResponseWriter, r *http.Request) {
	_, params, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil {
		writeError(w, http.StatusBadRequest, fmt.Errorf("cannot parse Mime media type: %w", err))
		return
	}
	raw, err := h.readConfigBlock(w, r, params["boundary"])
	if err != nil {
		writeError(w, http.StatusBadRequest, err)
		return
	}
	b, err := block.Unmarshal(raw)
	if err != nil {
		writeError(w, http.StatusBadRequest, fmt.Errorf("cannot unmarshal file part config-block into a block: %w", err))
		return
	}
	info, err := h.cfg.Registry.Join(r.Context(), b)
	switch {
	case err == nil:
	case errors.Is(err, ErrExists):
		notAllowed(w, fmt.Errorf("cannot join: %w", ErrExists), http.MethodGet, http.MethodDelete)
		return
	case errors.Is(err, ErrBadBlock):
		writeError(w, http.StatusBadRequest, err)
		return
	default:
		h.log.Warn("joining a channel failed", "err", err)
		writeError(w, http.StatusBadRequest, fmt.Errorf("cannot join: %w", err))
		return
	}
	info.URL = URLBase + "/" + info.Name
	w.Header().Set("Location", info.URL)
	writeJSON(w, http.StatusCreated, info)
	h.log.Info("joined channel", "channel", info.Name, "height", info.Height)
}

// readConfigBlock reads the one "config-block" file of the form, bounded by
// MaxRequestBytes; errors carry Fabric's texts.
func (h *Handler) readConfigBlock(w http.ResponseWriter, r *http.Request, boundary string) ([]byte, error) {
	rd := multipart.NewReader(http.MaxBytesReader(w, r.Body, h.cfg.MaxRequestBytes), boundary)
	form, err := rd.ReadForm(2 * h.cfg.MaxRequestBytes)
	if err != nil {
		return nil, fmt.Errorf("cannot read form from request body: %w", err)
	}
	defer form.RemoveAll()
	if _, ok := form.File["config-block"]; !ok {
		return nil, errors.New("form does not contains part key: config-block")
	}
	if len(form.File) != 1 || len(form.Value) != 0 || len(form.File["config-block"]) != 1 {
		return nil, errors.New("form contains too many parts")
	}
	f, err := form.File["config-block"][0].Open()
	if err != nil {
		return nil, fmt.Errorf("cannot open file part config-block from request body: %w", err)
	}
	defer f.Close()
	raw, err := io.ReadAll(f)
	if err != nil {
		return nil, fmt.Errorf("cannot read file part config-block from request body: %w", err)
	}
	return raw, nil
}

func notAllowed(w http.ResponseWriter, err error, allow ...string) {
	w.Header().Set("Allow", strings.Join(allow, ", "))
	writeError(w, http.StatusMethodNotAllowed, err)
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, code int, err error) {
	writeJSON(w, code, struct {
		Error string `json:"error"`
	}{err.Error()})
}
