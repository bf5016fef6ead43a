package logtest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
)

// JSONLine checks one log line of slog.JSONHandler: a single JSON object
// in which no object, at any depth, holds a key twice (encoding/json's
// Unmarshal keeps the last one silently, and so do jq and most log
// shippers). It walks the decoder's tokens. It returns the top-level keys
// and values (strings as strings, other values as their JSON text).
func JSONLine(line []byte) (map[string]string, error) {
	if t := bytes.TrimSpace(line); len(t) == 0 || t[0] != '{' {
		return nil, errors.New("not a JSON object")
	}
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.UseNumber()
	top := map[string]string{}
	if err := uniqueValue(dec, "", top); err != nil {
		return nil, err
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("more than one JSON value on the line")
	}
	return top, nil
}

// uniqueValue reads one value at path; top, when set, collects the keys of
// the object read.
func uniqueValue(dec *json.Decoder, path string, top map[string]string) error {
	tok, err := dec.Token()
	if err != nil {
		return err
	}
	switch tok {
	case json.Delim('{'):
		seen := map[string]bool{}
		for dec.More() {
			k, err := dec.Token()
			if err != nil {
				return err
			}
			key, _ := k.(string)
			if seen[key] {
				return fmt.Errorf("key %q appears twice in %s", key, orElse(path, "the line"))
			}
			seen[key] = true
			if top == nil {
				if err := uniqueValue(dec, path+"."+key, nil); err != nil {
					return err
				}
				continue
			}
			var raw json.RawMessage
			if err := dec.Decode(&raw); err != nil {
				return err
			}
			if err := uniqueValue(json.NewDecoder(bytes.NewReader(raw)), path+"."+key, nil); err != nil {
				return err
			}
			var s string
			if json.Unmarshal(raw, &s) == nil {
				top[key] = s
			} else {
				top[key] = string(raw)
			}
		}
		_, err = dec.Token() // '}'
		return err
	case json.Delim('['):
		for i := 0; dec.More(); i++ {
			if err := uniqueValue(dec, fmt.Sprintf("%s[%d]", path, i), nil); err != nil {
				return err
			}
		}
		_, err = dec.Token() // ']'
		return err
	}
	return nil // a scalar
}

func orElse(a, b string) string {
	if a != "" {
		return a
	}
	return b
}
