package appliance

// The appliance's side of a policy push (POST /push on the admin endpoint);
// the protocol is in policy/push.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"path/filepath"
	"sync"

	"github.com/memberd/memberd/internal/usage"
	"github.com/memberd/memberd/policy"
	"github.com/memberd/memberd/policy/push"
	"github.com/memberd/memberd/tunnel"
)

// pushTo sends bundle to member's push service through the tunnel and
// returns its answer.
func pushTo(ctx context.Context, dev *tunnel.Device, member string, port uint16, bundle []byte) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, push.Timeout)
	defer cancel()
	c, err := dev.Dial(ctx, member, port)
	if err != nil {
		return "", fmt.Errorf("dialling %s:%d through the tunnel: %w", member, port, err)
	}
	defer c.Close()
	dl, _ := ctx.Deadline()
	_ = c.SetDeadline(dl)
	return push.Exchange(c, member, bundle)
}

// pushHandler serves POST /push on the admin endpoint: store the bundle
// locally, then push it to every other member of the current policy.
func pushHandler(a *Appliance, dir string, port uint16, log *slog.Logger) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			http.Error(w, "POST a signed policy bundle", http.StatusMethodNotAllowed)
			return
		}
		b, err := io.ReadAll(io.LimitReader(r.Body, policy.MaxBundleSize+1))
		if err != nil || len(b) == 0 || len(b) > policy.MaxBundleSize {
			http.Error(w, fmt.Sprintf("want a bundle of 1..%d bytes", policy.MaxBundleSize), http.StatusBadRequest)
			return
		}
		next, err := policy.Parse(b)
		if err != nil {
			http.Error(w, "not a policy bundle: "+err.Error(), http.StatusBadRequest)
			return
		}
		// The members this version removes first, then the other
		// members, this one last: once a member applies a version that
		// removes another, its tunnel (and soon the relays) cut that
		// member off, and the push to it would race with the cut. Each
		// answer waits for that member's verdict.
		var removed, staying []string
		for _, m := range a.current.Load().Members() {
			switch {
			case m.ID == a.cfg.Member:
			case next.Member(m.ID) == nil:
				removed = append(removed, m.ID)
			default:
				staying = append(staying, m.ID)
			}
		}
		var results []push.Result
		var mu sync.Mutex
		pushAll := func(members []string, removedBy uint64) {
			var wg sync.WaitGroup
			for _, id := range members {
				wg.Add(1)
				go func() {
					defer wg.Done()
					res, err := pushTo(r.Context(), a.dev, id, port, b)
					pr := push.Result{Member: id, OK: err == nil, Detail: res}
					switch {
					case err == nil:
					case removedBy != 0 && errors.Is(err, push.ErrNoAnswer):
						// It got the bundle; its answer was cut off with it.
						pr.OK, pr.Detail = true, fmt.Sprintf("removed by version %d: sent; its answer was cut off with it (%v)", removedBy, err)
					default:
						pr.Detail = err.Error()
					}
					mu.Lock()
					results = append(results, pr)
					mu.Unlock()
				}()
			}
			wg.Wait()
		}
		pushAll(removed, next.Version())
		pushAll(staying, 0)
		name, err := push.Store(dir, b)
		local := push.Result{Member: a.cfg.Member, OK: err == nil}
		if err != nil {
			local.Detail = err.Error()
		} else {
			actx, cancel := context.WithTimeout(r.Context(), push.AwaitVerdict)
			v, aerr := a.watcher.Await(actx, filepath.Join(dir, name))
			cancel()
			answer, err := push.ParseAnswer(a.cfg.Member, push.Answer(name, v, aerr))
			local.OK, local.Detail = err == nil, "local policy folder: "+answer
			if err != nil {
				local.Detail = "local policy folder: " + err.Error()
			}
		}
		results = append([]push.Result{local}, results...)
		status := http.StatusOK
		for _, pr := range results {
			if !pr.OK {
				status = http.StatusBadGateway
			}
		}
		log.Info("policy push", "file", name, "results", len(results), "status", status)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_ = json.NewEncoder(w).Encode(map[string]any{"results": results})
	})
}

// PushViaAdmin posts bundle to the appliance's POST /push and returns the
// per-member results (the client of pushHandler).
func PushViaAdmin(ctx context.Context, addr string, bundle []byte) ([]push.Result, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+addr+"/push", bytes.NewReader(bundle))
	if err != nil {
		return nil, usage.Errorf("--admin %q: %v", addr, err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("policy push: no appliance answers on %s (is 'memberd run' running? see --admin): %w", addr, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	var out struct {
		Results []push.Result `json:"results"`
	}
	if err := json.Unmarshal(body, &out); err != nil || len(out.Results) == 0 {
		return nil, fmt.Errorf("policy push: the appliance on %s answered %s: %s", addr, resp.Status, bytes.TrimSpace(body))
	}
	return out.Results, nil
}
