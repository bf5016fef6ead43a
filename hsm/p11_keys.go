//go:build cgo

package hsm

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"sort"

	"github.com/miekg/pkcs11"
)

// GenerateKey creates an ECDSA P-256 key pair in the token named by uri
// (token=, object= label required; id= optional, random 16 bytes when
// absent). The private key is CKA_TOKEN, CKA_PRIVATE, CKA_SENSITIVE and not
// CKA_EXTRACTABLE: it never leaves the HSM. It refuses to create a second
// key with the same label or ID (ErrKeyExists). The returned KeyInfo.URI
// names the new key (with its id) and can be passed to OpenSigner.
func GenerateKey(uri string, opts *Options) (*KeyInfo, error) {
	u, err := ParseURI(uri)
	if err != nil {
		return nil, err
	}
	if u.Object == "" {
		return nil, fmt.Errorf("%w: %s: keygen needs object=LABEL for the new key", ErrBadURI, u.Redacted())
	}
	id := u.ID
	if len(id) == 0 {
		id = make([]byte, 16)
		if _, err := rand.Read(id); err != nil {
			return nil, err
		}
	}
	t, err := openToken(u, opts)
	if err != nil {
		return nil, err
	}
	defer t.close()
	sh, err := t.openSession(true)
	if err != nil {
		return nil, err
	}
	defer t.mod.ctx.CloseSession(sh)

	for _, a := range []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_LABEL, u.Object), pkcs11.NewAttribute(pkcs11.CKA_ID, id)} {
		hs, err := t.findObjects(sh, []*pkcs11.Attribute{a}, 1)
		if err != nil {
			return nil, fmt.Errorf("token %q in %s: %w", t.label, t.mod.path, err)
		}
		if len(hs) > 0 {
			what := fmt.Sprintf("label %q", u.Object)
			if a.Type == pkcs11.CKA_ID {
				what = fmt.Sprintf("id %x", id)
			}
			return nil, fmt.Errorf("%w: token %q already has an object with %s: choose another object= label (or id=)", ErrKeyExists, t.label, what)
		}
	}
	pubTmpl := []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PUBLIC_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_EC),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, false),
		pkcs11.NewAttribute(pkcs11.CKA_VERIFY, true),
		pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, p256Params),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, u.Object),
		pkcs11.NewAttribute(pkcs11.CKA_ID, id),
	}
	privTmpl := []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PRIVATE_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_EC),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, false),
		pkcs11.NewAttribute(pkcs11.CKA_SIGN, true),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, u.Object),
		pkcs11.NewAttribute(pkcs11.CKA_ID, id),
	}
	pubH, _, err := t.mod.ctx.GenerateKeyPair(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_EC_KEY_PAIR_GEN, nil)}, pubTmpl, privTmpl)
	if err != nil {
		if isRV(err, pkcs11.CKR_USER_NOT_LOGGED_IN) {
			return nil, fmt.Errorf("%w: token %q: generating a private key needs a login: add pin-source=file:/path to the URI", ErrWrongPIN, t.label)
		}
		return nil, fmt.Errorf("token %q in %s: C_GenerateKeyPair (EC P-256): %w", t.label, t.mod.path, err)
	}
	attrs, err := t.mod.ctx.GetAttributeValue(sh, pubH, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, nil), pkcs11.NewAttribute(pkcs11.CKA_EC_POINT, nil)})
	if err != nil {
		return nil, fmt.Errorf("token %q: reading the new public key: %w", t.label, err)
	}
	pub, err := parseECPoint(attrs[0].Value, attrs[1].Value)
	if err != nil {
		return nil, err
	}
	return &KeyInfo{URI: keyURI(u, u.Object, id), Label: u.Object, ID: id, Type: "EC P-256",
		Public: pub, HasPrivate: true, HasPublic: true}, nil
}

// ListKeys lists the key pairs of the token named by tokenURI (object= and
// id= in the URI narrow the list). Private keys are visible only with a PIN
// (pin-source). Keys are sorted by label, then ID.
func ListKeys(tokenURI string, opts *Options) ([]KeyInfo, error) {
	u, err := ParseURI(tokenURI)
	if err != nil {
		return nil, err
	}
	t, err := openToken(u, opts)
	if err != nil {
		return nil, err
	}
	defer t.close()
	sh, err := t.openSession(false)
	if err != nil {
		return nil, err
	}
	defer t.mod.ctx.CloseSession(sh)

	type keyID struct{ label, id string }
	found := map[keyID]*KeyInfo{}
	var order []keyID
	for _, class := range []uint{pkcs11.CKO_PRIVATE_KEY, pkcs11.CKO_PUBLIC_KEY} {
		tmpl := []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_CLASS, class)}
		if u.Object != "" {
			tmpl = append(tmpl, pkcs11.NewAttribute(pkcs11.CKA_LABEL, u.Object))
		}
		if u.ID != nil {
			tmpl = append(tmpl, pkcs11.NewAttribute(pkcs11.CKA_ID, u.ID))
		}
		hs, err := t.findObjects(sh, tmpl, 10000)
		if err != nil {
			return nil, fmt.Errorf("token %q in %s: listing keys: %w", t.label, t.mod.path, err)
		}
		for _, h := range hs {
			attrs, err := t.mod.ctx.GetAttributeValue(sh, h, []*pkcs11.Attribute{
				pkcs11.NewAttribute(pkcs11.CKA_LABEL, nil), pkcs11.NewAttribute(pkcs11.CKA_ID, nil),
				pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, nil)})
			if err != nil {
				continue
			}
			k := keyID{string(attrs[0].Value), string(attrs[1].Value)}
			ki := found[k]
			if ki == nil {
				ki = &KeyInfo{URI: keyURI(u, k.label, attrs[1].Value), Label: k.label, ID: bytes.Clone(attrs[1].Value)}
				found[k] = ki
				order = append(order, k)
			}
			kt := attrUint(attrs[2].Value)
			switch kt {
			case pkcs11.CKK_EC:
				ki.Type = "EC"
			case pkcs11.CKK_RSA:
				ki.Type = "RSA"
			default:
				ki.Type = fmt.Sprintf("key type 0x%x", kt)
			}
			if class == pkcs11.CKO_PRIVATE_KEY {
				ki.HasPrivate = true
				continue
			}
			ki.HasPublic = true
			if kt == pkcs11.CKK_EC {
				ec, err := t.mod.ctx.GetAttributeValue(sh, h, []*pkcs11.Attribute{
					pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, nil), pkcs11.NewAttribute(pkcs11.CKA_EC_POINT, nil)})
				if err == nil {
					if pub, err := parseECPoint(ec[0].Value, ec[1].Value); err == nil {
						ki.Public, ki.Type = pub, "EC P-256"
					} else {
						ki.Type = "EC (other curve)"
					}
				}
			}
		}
	}
	sort.Slice(order, func(i, j int) bool {
		if order[i].label != order[j].label {
			return order[i].label < order[j].label
		}
		return order[i].id < order[j].id
	})
	out := make([]KeyInfo, 0, len(order))
	for _, k := range order {
		out = append(out, *found[k])
	}
	return out, nil
}
