package policy

import "errors"

// Sentinel errors. Every error returned by this package wraps one of them
// (test with errors.Is) and says in words what is wrong and what to do.
var (
	// ErrMalformed: the bundle or document does not parse or fails validation.
	ErrMalformed = errors.New("policy malformed")
	// ErrTooLarge: the bundle exceeds MaxBundleSize.
	ErrTooLarge = errors.New("policy bundle too large")
	// ErrGenesis: a version 1 document does not match the pinned genesis hash.
	ErrGenesis = errors.New("policy genesis not trusted")
	// ErrChain: `previous` does not name the current version, or the
	// consortium name changed.
	ErrChain = errors.New("policy chain broken")
	// ErrVersion: the candidate's version is not greater than the current one.
	ErrVersion = errors.New("policy version not newer")
	// ErrQuorum: not enough valid admin votes for the amendment rule.
	ErrQuorum = errors.New("policy amendment under-signed")
	// ErrUnknownAdmin: the admin named for signing is not in the policy.
	ErrUnknownAdmin = errors.New("policy admin unknown")
	// ErrNoPolicy: the watcher has no trusted policy to start from.
	ErrNoPolicy = errors.New("no trusted policy")
	// ErrNotMember: a certificate does not chain to any member CA, or is
	// revoked (then the error also wraps ErrRevoked).
	ErrNotMember = errors.New("certificate of no member")
	// ErrRevoked: a certificate in the chain is revoked by the policy.
	ErrRevoked = errors.New("certificate revoked")
	// ErrChannelConfig: the version's other half, the channel config
	// update it derives, would not be accepted (Options.Check).
	ErrChannelConfig = errors.New("policy version refused by the channel config")
	// ErrHeld: a version cannot be checked yet (Options.Check); the
	// watcher keeps it unapplied and reads it again later.
	ErrHeld = errors.New("policy version held")
	// ErrNoChannel: the policy lists no such channel (ledger.channel,
	// ledger.channels).
	ErrNoChannel = errors.New("policy has no such channel")
)
