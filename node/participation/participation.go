// Package participation serves Fabric's channel participation REST API
// (/participation/v1/channels), the API `osnadmin channel list|info|join|remove`
// talks to, as an http.Handler over a Registry of channels. The handler owns
// no socket: the caller mounts it on its admin server (with mutual TLS, as
// Fabric's orderer admin endpoint).
//
// Routes (JSON bodies as Fabric 2.5's orderer writes them):
//
//	GET    /participation/v1/channels         200 {"systemChannel":null,"channels":[{"name","url"}]}
//	GET    /participation/v1/channels/NAME    200 {"name","url","consensusRelation","status","height"}
//	POST   /participation/v1/channels         multipart/form-data, field "config-block": a marshalled
//	                                          common.Block (the channel's config block) → 201 + Location
//	DELETE /participation/v1/channels/NAME    204
//
// Errors are {"error": "..."} with 400 (bad request), 404 (no such channel),
// 405 (method, with Allow), 409 (channel exists), 413 (body too large),
// 415 (not multipart/form-data), 500 (the registry failed).
package participation

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"regexp"
	"strings"

	"github.com/hyperledger/fabric-protos-go-apiv2/common"

	"github.com/memberd/memberd/node/block"
)

// URLBase is the API's path prefix.
const URLBase = "/participation/v1/channels"

// DefaultMaxRequestBytes bounds a join request body.
const DefaultMaxRequestBytes = 100 << 20

// Sentinel errors a Registry returns (wrapped) to choose the HTTP status.
var (
	ErrNotFound = errors.New("channel not found")
	ErrExists   = errors.New("channel already exists")
	ErrBadBlock = errors.New("invalid config block")
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
// is already served and ErrBadBlock for a block it cannot join from.
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

var nameRe = regexp.MustCompile(`^[a-z][a-z0-9.-]{0,248}$`)

// ServeHTTP implements http.Handler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	path := strings.TrimSuffix(r.URL.Path, "/")
	switch {
	case path == URLBase:
		switch r.Method {
		case http.MethodGet:
			h.list(w)
		case http.MethodPost:
			h.join(w, r)
		default:
			w.Header().Set("Allow", "GET, POST")
			writeError(w, http.StatusMethodNotAllowed, fmt.Errorf("method %s not allowed on %s", r.Method, URLBase))
		}
	case strings.HasPrefix(path, URLBase+"/"):
		name := strings.TrimPrefix(path, URLBase+"/")
		if !nameRe.MatchString(name) {
			writeError(w, http.StatusBadRequest, fmt.Errorf("invalid channel name %q", name))
			return
		}
		switch r.Method {
		case http.MethodGet:
			info, err := h.cfg.Registry.Get(name)
			if err != nil {
				writeError(w, statusOf(err), err)
				return
			}
			writeJSON(w, http.StatusOK, info)
		case http.MethodDelete:
			if err := h.cfg.Registry.Remove(r.Context(), name); err != nil {
				writeError(w, statusOf(err), err)
				return
			}
			w.WriteHeader(http.StatusNoContent)
		default:
			w.Header().Set("Allow", "GET, DELETE")
			writeError(w, http.StatusMethodNotAllowed, fmt.Errorf("method %s not allowed on a channel", r.Method))
		}
	default:
		writeError(w, http.StatusNotFound, fmt.Errorf("no such path %s", r.URL.Path))
	}
}

type listEntry struct {
	Name string `json:"name"`
	URL  string `json:"url"`
}

func (h *Handler) list(w http.ResponseWriter) {
	out := struct {
		SystemChannel *listEntry  `json:"systemChannel"`
		Channels      []listEntry `json:"channels"`
	}{Channels: []listEntry{}}
	for _, c := range h.cfg.Registry.List() {
		out.Channels = append(out.Channels, listEntry{Name: c.Name, URL: URLBase + "/" + c.Name})
	}
	writeJSON(w, http.StatusOK, out)
}

func (h *Handler) join(w http.ResponseWriter, r *http.Request) {
	mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil || mt != "multipart/form-data" {
		writeError(w, http.StatusUnsupportedMediaType, errors.New("send the config block as multipart/form-data field \"config-block\""))
		return
	}
	if r.ContentLength > h.cfg.MaxRequestBytes {
		writeError(w, http.StatusRequestEntityTooLarge, fmt.Errorf("request of %d bytes is larger than %d", r.ContentLength, h.cfg.MaxRequestBytes))
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, h.cfg.MaxRequestBytes)
	if err := r.ParseMultipartForm(h.cfg.MaxRequestBytes); err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			writeError(w, http.StatusRequestEntityTooLarge, fmt.Errorf("request larger than %d bytes", h.cfg.MaxRequestBytes))
			return
		}
		writeError(w, http.StatusBadRequest, fmt.Errorf("reading multipart form: %w", err))
		return
	}
	defer r.MultipartForm.RemoveAll()
	files := r.MultipartForm.File["config-block"]
	if len(files) != 1 {
		writeError(w, http.StatusBadRequest, errors.New("form must hold exactly one \"config-block\" file"))
		return
	}
	f, err := files[0].Open()
	if err != nil {
		writeError(w, http.StatusBadRequest, err)
		return
	}
	raw, err := io.ReadAll(f)
	f.Close()
	if err != nil {
		writeError(w, http.StatusBadRequest, err)
		return
	}
	b, err := block.Unmarshal(raw)
	if err != nil {
		writeError(w, http.StatusBadRequest, fmt.Errorf("%w: %w", ErrBadBlock, err))
		return
	}
	info, err := h.cfg.Registry.Join(r.Context(), b)
	if err != nil {
		writeError(w, statusOf(err), err)
		return
	}
	info.URL = URLBase + "/" + info.Name
	w.Header().Set("Location", info.URL)
	writeJSON(w, http.StatusCreated, info)
	h.log.Info("joined channel", "channel", info.Name, "height", info.Height)
}

func statusOf(err error) int {
	switch {
	case errors.Is(err, ErrNotFound):
		return http.StatusNotFound
	case errors.Is(err, ErrExists):
		return http.StatusConflict
	case errors.Is(err, ErrBadBlock):
		return http.StatusBadRequest
	default:
		return http.StatusInternalServerError
	}
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
