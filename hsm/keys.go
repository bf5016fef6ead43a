package hsm

import "crypto"

// KeyInfo describes a key in a token.
type KeyInfo struct {
	// URI names the key: token, object, id, plus the query (module-path,
	// pin-source) of the URI it was listed or generated with; never a
	// pin-value.
	URI string
	// Label is CKA_LABEL, ID is CKA_ID.
	Label string
	ID    []byte
	// Type is "EC P-256", "EC (other curve)", "RSA", or a hex key type.
	Type string
	// Public is the public key when readable (*ecdsa.PublicKey for P-256).
	Public crypto.PublicKey
	// HasPrivate and HasPublic tell which halves exist on the token.
	HasPrivate, HasPublic bool
}

// keyURI builds the URI of a key from the token URI (keeping its query
// attributes except pin-value).
func keyURI(base *URI, label string, id []byte) string {
	u := &URI{Token: base.Token, Object: label, ModulePath: base.ModulePath,
		ModuleName: base.ModuleName, PINSource: base.PINSource}
	if len(id) > 0 {
		u.ID = append([]byte{}, id...)
	}
	return u.String()
}
