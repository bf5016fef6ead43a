// Package policy is memberd's governance layer: the consortium's policy
// document, signed bundles, quorum verification, the version chain, and a
// watcher that applies new versions live.
//
// # Document
//
// A policy is a YAML document (see docs/policy.md for a complete example)
// parsed strictly: unknown keys, duplicate keys, anchors/aliases and more
// than one YAML document are errors, and every field is validated (unique
// member ids and overlay addresses, certificates that parse and are CA
// certificates, ACL names that exist, ledger parameters in range, at least
// one relay, consenters that are members).
//
// # Bundle
//
// A bundle is the exact document bytes followed by a signature trailer made
// of YAML comment lines, so a bundle file is itself the same YAML document
// and reviews in git as a plain file:
//
//	<document bytes, ending in a newline>
//	#--- memberd signatures v1 ---
//	#sig <member-id> <key-id> <base64 signature>
//	...
//
// Signatures are over SignedDigest(document) =
// SHA-256("memberd policy signature v1\x00" || document): domain separated,
// over the exact bytes, never a re-serialisation. Any crypto.Signer can sign
// (an HSM key through package hsm, or a plain key in tests). Adding
// signatures never changes the document bytes or its Hash.
//
// # Versions and quorum
//
// Each version carries `version` (strictly growing) and `previous` (the Hash
// of the previous document). Version 1 (genesis) is trusted by pinning its
// Hash at install time. A later version applies only when admins of the
// CURRENT policy sign it in enough numbers for the amendment rule of every
// kind of change the diff contains (see Verify and Threshold).
//
// # Live reload
//
// Watcher watches a folder with fsnotify, verifies what lands there, swaps an
// atomic.Pointer and notifies subscribers with (old, new, diff), in
// subscription order, exactly once per applied version. Bad input keeps the
// last good policy, is logged once and counted in policy_rejected_total.
// The applied bundle is persisted atomically in a state folder, so a restart
// never rolls back.
package policy
