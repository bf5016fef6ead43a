package hsm

// PKCS#11 URIs, RFC 7512:
//
//	pkcs11:token=member-a;object=tls;id=%01?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/etc/memberd/pin
//
// The path part holds ';'-separated attributes that select the token and the
// object; the query part holds '&'-separated attributes that say how to
// reach them (module, PIN). Values are percent-encoded; an attribute may
// appear only once. Unknown path attributes are refused (RFC 7512 §2.3: a
// URI with path attributes the consumer does not know must not match), unless
// vendor-specific ("x-" prefix); unknown query attributes are kept in Extra
// and ignored.

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
)

// maxURILen bounds the input of ParseURI.
const maxURILen = 8 << 10

// URI is a parsed PKCS#11 URI. The zero value is "pkcs11:" (matches
// everything). Fields hold decoded values.
type URI struct {
	// Path attributes (token and object selection).
	Token        string // token= (CKA label of the token); memberd finds tokens by label only
	Manufacturer string // manufacturer=
	Serial       string // serial=
	Model        string // model=
	Object       string // object= (CKA_LABEL)
	Type         string // type= : cert, data, private, public, secret-key
	ID           []byte // id= (CKA_ID, raw bytes)
	SlotID       *uint  // slot-id= ; parsed but never used to pick a token

	LibraryManufacturer string // library-manufacturer=
	LibraryDescription  string // library-description=
	LibraryVersion      string // library-version=
	SlotDescription     string // slot-description=
	SlotManufacturer    string // slot-manufacturer=

	// Query attributes (how to get there).
	ModulePath string // module-path= : absolute path of the PKCS#11 module
	ModuleName string // module-name= : module name (not resolved by memberd)
	PINSource  string // pin-source= : file:/path, /path, or cred:NAME (systemd credential)
	PINValue   string // pin-value= : refused unless Options.AllowPINValue

	// Vendor (x-...) path attributes and unknown query attributes, decoded.
	Extra map[string]string
}

var pathAttrs = map[string]func(u *URI, v string) error{
	"token":                func(u *URI, v string) error { u.Token = v; return nil },
	"manufacturer":         func(u *URI, v string) error { u.Manufacturer = v; return nil },
	"serial":               func(u *URI, v string) error { u.Serial = v; return nil },
	"model":                func(u *URI, v string) error { u.Model = v; return nil },
	"object":               func(u *URI, v string) error { u.Object = v; return nil },
	"id":                   func(u *URI, v string) error { u.ID = []byte(v); return nil },
	"library-manufacturer": func(u *URI, v string) error { u.LibraryManufacturer = v; return nil },
	"library-description":  func(u *URI, v string) error { u.LibraryDescription = v; return nil },
	"library-version":      func(u *URI, v string) error { u.LibraryVersion = v; return nil },
	"slot-description":     func(u *URI, v string) error { u.SlotDescription = v; return nil },
	"slot-manufacturer":    func(u *URI, v string) error { u.SlotManufacturer = v; return nil },
	"type": func(u *URI, v string) error {
		switch v {
		case "cert", "data", "private", "public", "secret-key":
			u.Type = v
			return nil
		}
		return fmt.Errorf("type=%q: want cert, data, private, public or secret-key", v)
	},
	"slot-id": func(u *URI, v string) error {
		n, err := strconv.ParseUint(v, 10, 32)
		if err != nil || (len(v) > 1 && v[0] == '0') {
			return fmt.Errorf("slot-id=%q: want a decimal number", v)
		}
		x := uint(n)
		u.SlotID = &x
		return nil
	},
}

var queryAttrs = map[string]func(u *URI, v string) error{
	"module-path": func(u *URI, v string) error { u.ModulePath = v; return nil },
	"module-name": func(u *URI, v string) error { u.ModuleName = v; return nil },
	"pin-source":  func(u *URI, v string) error { u.PINSource = v; return nil },
	"pin-value":   func(u *URI, v string) error { u.PINValue = v; return nil },
}

// ParseURI parses a PKCS#11 URI (RFC 7512). It checks syntax only; what an
// operation needs (token, object) is checked where the URI is used.
func ParseURI(s string) (*URI, error) {
	if len(s) > maxURILen {
		return nil, fmt.Errorf("%w: longer than %d bytes", ErrBadURI, maxURILen)
	}
	rest, ok := cutPrefixFold(s, "pkcs11:")
	if !ok {
		return nil, fmt.Errorf("%w: %q does not start with \"pkcs11:\" (example: pkcs11:token=member-a;object=tls?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/etc/memberd/hsm.pin)", ErrBadURI, redact(s))
	}
	path, query, _ := strings.Cut(rest, "?")
	u := &URI{}
	seen := map[string]bool{}
	if err := parseAttrs(u, path, ";", pathAttrs, seen, true); err != nil {
		return nil, fmt.Errorf("%w: %q: %v", ErrBadURI, redact(s), err)
	}
	if err := parseAttrs(u, query, "&", queryAttrs, seen, false); err != nil {
		return nil, fmt.Errorf("%w: %q: %v", ErrBadURI, redact(s), err)
	}
	return u, nil
}

func parseAttrs(u *URI, part, sep string, known map[string]func(*URI, string) error, seen map[string]bool, isPath bool) error {
	if part == "" {
		return nil
	}
	for _, kv := range strings.Split(part, sep) {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return fmt.Errorf("attribute %q is not name=value", kv)
		}
		k = strings.ToLower(k)
		if !validName(k) {
			return fmt.Errorf("attribute name %q is invalid", k)
		}
		val, err := pctDecode(v, isPath)
		if err != nil {
			return fmt.Errorf("attribute %s: %v", k, err)
		}
		key := k
		if !isPath {
			key = "?" + k
		}
		if seen[key] {
			return fmt.Errorf("attribute %s appears more than once", k)
		}
		seen[key] = true
		if set, ok := known[k]; ok {
			if err := set(u, val); err != nil {
				return err
			}
			continue
		}
		if isPath && !strings.HasPrefix(k, "x-") {
			return fmt.Errorf("unknown path attribute %q", k)
		}
		if u.Extra == nil {
			u.Extra = map[string]string{}
		}
		u.Extra[key] = val
	}
	return nil
}

func validName(k string) bool {
	for i := 0; i < len(k); i++ {
		c := k[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

// pctDecode decodes %XX escapes. Characters that RFC 7512 reserves as
// delimiters inside a value are refused unescaped.
func pctDecode(v string, isPath bool) (string, error) {
	var b strings.Builder
	for i := 0; i < len(v); i++ {
		c := v[i]
		switch {
		case c == '%':
			if i+2 >= len(v) {
				return "", fmt.Errorf("truncated percent escape")
			}
			h, ok1 := unhex(v[i+1])
			l, ok2 := unhex(v[i+2])
			if !ok1 || !ok2 {
				return "", fmt.Errorf("bad percent escape %q", v[i:i+3])
			}
			b.WriteByte(h<<4 | l)
			i += 2
		case c <= ' ' || c >= 0x7f || c == '"' || c == '<' || c == '>' || c == '\\' || c == '^' || c == '`' || c == '{' || c == '|' || c == '}' || c == '#':
			return "", fmt.Errorf("character %q must be percent-encoded", c)
		case isPath && (c == '/' || c == '?'):
			return "", fmt.Errorf("character %q must be percent-encoded in the path part", c)
		default:
			b.WriteByte(c)
		}
	}
	return b.String(), nil
}

func unhex(c byte) (byte, bool) {
	switch {
	case c >= '0' && c <= '9':
		return c - '0', true
	case c >= 'a' && c <= 'f':
		return c - 'a' + 10, true
	case c >= 'A' && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

func cutPrefixFold(s, prefix string) (string, bool) {
	if len(s) >= len(prefix) && strings.EqualFold(s[:len(prefix)], prefix) {
		return s[len(prefix):], true
	}
	return s, false
}

// String formats u as a URI that ParseURI reads back to an equal URI.
// pin-value is printed as is: do not log the result of a URI with a PIN
// (Redacted does that).
func (u *URI) String() string {
	var path, query []string
	add := func(dst *[]string, k, v string, isPath bool) {
		*dst = append(*dst, k+"="+pctEncode(v, isPath))
	}
	if u.LibraryManufacturer != "" {
		add(&path, "library-manufacturer", u.LibraryManufacturer, true)
	}
	if u.LibraryDescription != "" {
		add(&path, "library-description", u.LibraryDescription, true)
	}
	if u.LibraryVersion != "" {
		add(&path, "library-version", u.LibraryVersion, true)
	}
	if u.SlotDescription != "" {
		add(&path, "slot-description", u.SlotDescription, true)
	}
	if u.SlotManufacturer != "" {
		add(&path, "slot-manufacturer", u.SlotManufacturer, true)
	}
	if u.SlotID != nil {
		path = append(path, "slot-id="+strconv.FormatUint(uint64(*u.SlotID), 10))
	}
	if u.Manufacturer != "" {
		add(&path, "manufacturer", u.Manufacturer, true)
	}
	if u.Model != "" {
		add(&path, "model", u.Model, true)
	}
	if u.Serial != "" {
		add(&path, "serial", u.Serial, true)
	}
	if u.Token != "" {
		add(&path, "token", u.Token, true)
	}
	if u.Object != "" {
		add(&path, "object", u.Object, true)
	}
	if u.Type != "" {
		add(&path, "type", u.Type, true)
	}
	if u.ID != nil {
		var b strings.Builder
		for _, c := range u.ID {
			fmt.Fprintf(&b, "%%%02x", c)
		}
		path = append(path, "id="+b.String())
	}
	keys := make([]string, 0, len(u.Extra))
	for k := range u.Extra {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if !strings.HasPrefix(k, "?") {
			add(&path, k, u.Extra[k], true)
		}
	}
	if u.ModulePath != "" {
		add(&query, "module-path", u.ModulePath, false)
	}
	if u.ModuleName != "" {
		add(&query, "module-name", u.ModuleName, false)
	}
	if u.PINSource != "" {
		add(&query, "pin-source", u.PINSource, false)
	}
	if u.PINValue != "" {
		add(&query, "pin-value", u.PINValue, false)
	}
	for _, k := range keys {
		if strings.HasPrefix(k, "?") {
			add(&query, k[1:], u.Extra[k], false)
		}
	}
	s := "pkcs11:" + strings.Join(path, ";")
	if len(query) > 0 {
		s += "?" + strings.Join(query, "&")
	}
	return s
}

// Redacted is String with any pin-value replaced by "REDACTED", for logs
// and error messages.
func (u *URI) Redacted() string {
	if u.PINValue == "" {
		return u.String()
	}
	c := *u
	c.PINValue = "REDACTED"
	return c.String()
}

// Clone returns a deep copy of u.
func (u *URI) Clone() *URI {
	c := *u
	if u.ID != nil {
		c.ID = append([]byte{}, u.ID...)
	}
	if u.SlotID != nil {
		x := *u.SlotID
		c.SlotID = &x
	}
	if u.Extra != nil {
		c.Extra = make(map[string]string, len(u.Extra))
		for k, v := range u.Extra {
			c.Extra[k] = v
		}
	}
	return &c
}

func pctEncode(v string, isPath bool) string {
	var b strings.Builder
	for i := 0; i < len(v); i++ {
		c := v[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
			strings.IndexByte("-._~:[]@!$'()*+,", c) >= 0 || (!isPath && (c == '/' || c == '?')) {
			b.WriteByte(c)
			continue
		}
		fmt.Fprintf(&b, "%%%02X", c)
	}
	return b.String()
}

// redact hides a pin-value in a raw URI string for error messages.
func redact(s string) string {
	i := strings.Index(asciiLower(s), "pin-value=")
	if i < 0 {
		return s
	}
	j := strings.IndexByte(s[i:], '&')
	if j < 0 {
		return s[:i] + "pin-value=REDACTED"
	}
	return s[:i] + "pin-value=REDACTED" + s[i+j:]
}

// asciiLower lowers ASCII letters only, keeping byte offsets unchanged.
func asciiLower(s string) string {
	b := []byte(s)
	for i, c := range b {
		if c >= 'A' && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b)
}

// RedactURI hides a pin-value in a raw key URI, for logs and errors.
func RedactURI(s string) string { return redact(s) }
