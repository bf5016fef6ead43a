package policy

import (
	"fmt"
	"strings"
	"time"
)

// Rejection is a signature that did not count, and why.
type Rejection struct {
	Member, KeyID string
	Reason        string
}

func (r Rejection) String() string { return r.Member + "/" + r.KeyID + ": " + r.Reason }

// Report is the full account of verifying a candidate against the current
// policy: what changes, which rule applies, who voted, who did not, and which
// signatures were rejected. Err is nil when the candidate may be applied.
type Report struct {
	From, To uint64
	Diff     *Diff
	// Rule is the deciding rule: the change kind it belongs to ("" for the
	// default rule) and its threshold.
	RuleKind  ChangeKind
	Threshold Threshold
	// Members is n, the number of members of the current policy; Removed is
	// how many of them the candidate removes.
	Members, Removed int
	// Needed is the number of member votes required.
	Needed int
	// Votes lists the members whose vote counts, Missing the current members
	// without a valid vote (document order).
	Votes, Missing []string
	Rejected       []Rejection
	Err            error
}

// RuleString describes the deciding rule, e.g. "member_added: unanimous".
func (r *Report) RuleString() string {
	k := string(r.RuleKind)
	if k == "" {
		k = "default"
	}
	return k + ": " + r.Threshold.String()
}

// VerifyError is returned by Verify; it wraps the sentinel (ErrQuorum,
// ErrChain, ErrVersion...) and carries the report.
type VerifyError struct {
	Sentinel error
	Report   *Report
	Detail   string
}

func (e *VerifyError) Error() string { return e.Sentinel.Error() + ": " + e.Detail }
func (e *VerifyError) Unwrap() error { return e.Sentinel }

// Verify checks that candidate may follow current now; see VerifyAt.
func Verify(current, candidate *Policy) (*Policy, error) {
	return VerifyAt(current, candidate, time.Now())
}

// VerifyAt checks, at time at, that candidate is the next version after
// current: same consortium, a greater version, previous = current.Hash(), and
// enough valid admin votes of the current policy for every kind of change.
// It is pure: no I/O, no clock. It returns candidate on success.
func VerifyAt(current, candidate *Policy, at time.Time) (*Policy, error) {
	r := Check(current, candidate, at)
	if r.Err != nil {
		return nil, r.Err
	}
	return candidate, nil
}

// VerifyGenesis checks that p is version 1 and that its Hash is the pinned
// genesis hash (signatures are not needed: the pin is the trust anchor).
func VerifyGenesis(p *Policy, pin Hash) (*Policy, error) {
	if p.Version() != 1 {
		return nil, fmt.Errorf("%w: the trust anchor must be version 1, got version %d", ErrGenesis, p.Version())
	}
	if p.Hash() != pin {
		return nil, fmt.Errorf("%w: version 1 has hash %s but the pinned genesis hash is %s: check the file or the pin given at install time", ErrGenesis, p.Hash(), pin)
	}
	return p, nil
}

// VerifyChain verifies candidates link by link starting from current (for an
// appliance that missed several versions): each must verify against its
// predecessor. It returns the last policy; on error nothing is accepted.
func VerifyChain(current *Policy, chain []*Policy, at time.Time) (*Policy, error) {
	p := current
	for _, c := range chain {
		if _, err := VerifyAt(p, c, at); err != nil {
			return nil, fmt.Errorf("chain link version %d: %w", c.Version(), err)
		}
		p = c
	}
	return p, nil
}

// RequiredVotes returns how many member votes a change needs under the
// amendment rules of cur: the strictest rule among the diff's change kinds
// (the default rule when none has its own), applied to n = members of cur.
// A change that removes r members never needs their votes: a requirement
// above n-r is lowered to n-r, but never below a majority of n, so a minority
// cannot remove a majority.
func RequiredVotes(cur *Policy, d *Diff) (need int, kind ChangeKind, t Threshold) {
	am := &cur.d.Amendment
	n := len(cur.d.Members)
	t = am.Default
	need = t.Need(n)
	for _, k := range d.Kinds {
		kt, ok := am.Rules[k]
		if !ok {
			continue
		}
		if v := kt.Need(n); v > need || (v == need && kind == "") {
			need, kind, t = v, k, kt
		}
	}
	if r := len(d.MembersRemoved); r > 0 && need > n-r {
		need = max(n-r, n/2+1)
	}
	return max(need, 1), kind, t
}

// Check verifies candidate against current at time at and returns the full
// report; report.Err is nil when the candidate may be applied.
func Check(current, candidate *Policy, at time.Time) *Report {
	r := &Report{From: current.Version(), To: candidate.Version(), Members: len(current.d.Members)}
	fail := func(sentinel error, format string, args ...any) *Report {
		r.Err = &VerifyError{Sentinel: sentinel, Report: r, Detail: fmt.Sprintf(format, args...)}
		return r
	}
	if candidate.Consortium() != current.Consortium() {
		return fail(ErrChain, "version %d is for consortium %q, the current policy is for %q", candidate.Version(), candidate.Consortium(), current.Consortium())
	}
	if candidate.Version() <= current.Version() {
		return fail(ErrVersion, "candidate version %d is not greater than the current version %d (rollback or replay refused)", candidate.Version(), current.Version())
	}
	if candidate.Previous() != current.Hash() {
		return fail(ErrChain, "version %d names previous %s, but the current version %d has hash %s", candidate.Version(), candidate.Previous(), current.Version(), current.Hash())
	}
	r.Diff = Compare(current, candidate)
	r.Removed = len(r.Diff.MembersRemoved)
	r.Needed, r.RuleKind, r.Threshold = RequiredVotes(current, r.Diff)

	voted := map[string]bool{}
	seen := map[AdminRef]bool{}
	for _, s := range candidate.sigs {
		ref := s.Admin()
		reject := func(why string) {
			r.Rejected = append(r.Rejected, Rejection{Member: s.Member, KeyID: s.KeyID, Reason: why})
		}
		if seen[ref] {
			reject("duplicate signature by the same admin key")
			continue
		}
		seen[ref] = true
		a, why := current.adminUsable(ref, at)
		if why == "" && (candidate.revAdmin[ref] || candidate.revSPKI[a.SPKI]) {
			why = "admin key is revoked by this version"
		}
		if why != "" {
			reject(why)
			continue
		}
		if err := verifySignature(a.Key, candidate.doc, s.Sig); err != nil {
			reject(err.Error())
			continue
		}
		if voted[s.Member] {
			reject("member " + s.Member + " already voted (one vote per member)")
			continue
		}
		voted[s.Member] = true
	}
	for _, m := range current.d.Members {
		if voted[m.ID] {
			r.Votes = append(r.Votes, m.ID)
		} else {
			r.Missing = append(r.Missing, m.ID)
		}
	}
	if len(r.Votes) < r.Needed {
		return fail(ErrQuorum, "version %d (%s) needs %d of %d member votes under rule %s, got %d valid%s; missing: %s%s",
			candidate.Version(), kindsText(r.Diff), r.Needed, r.Members, r.RuleString(), len(r.Votes), listParen(r.Votes),
			strings.Join(r.Missing, ", "), rejectedText(r.Rejected))
	}
	return r
}

func kindsText(d *Diff) string {
	if d.Empty() {
		return "no change"
	}
	s := make([]string, len(d.Kinds))
	for i, k := range d.Kinds {
		s[i] = string(k)
	}
	return strings.Join(s, ", ")
}

func listParen(xs []string) string {
	if len(xs) == 0 {
		return ""
	}
	return " (" + strings.Join(xs, ", ") + ")"
}

func rejectedText(rs []Rejection) string {
	if len(rs) == 0 {
		return ""
	}
	s := make([]string, len(rs))
	for i, x := range rs {
		s[i] = x.String()
	}
	return "; rejected signatures: " + strings.Join(s, "; ")
}
