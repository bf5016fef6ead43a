package block

import (
	"fmt"

	"google.golang.org/protobuf/encoding/protowire"
)

// TxIDs calls fn with the channel header transaction id of each envelope
// of the marshalled block raw, in order. It reads only the fields on the
// way to the id (block data, envelope payload, payload header, channel
// header), copying nothing but the ids, so that filling a duplicate set
// from the newest blocks at start-up costs little more than reading them.
//
// An envelope on whose path a field occurs twice (proto would merge the
// occurrences) is decoded with ParseEnvelope instead, and one that
// ParseEnvelope rejects, or that has no path to an id, is skipped. An id
// is reported for an envelope whose other fields ParseEnvelope would
// reject: for a duplicate set this only refuses the resubmission of an id
// that a stored block holds. It returns an error wrapping ErrMalformed
// when raw is not a block.
func TxIDs(raw []byte, fn func(txid string)) error {
	data, ok, err := singleBytes(raw, 2) // Block.data
	if err != nil {
		return fmt.Errorf("%w: block: %v", ErrMalformed, err)
	}
	if !ok {
		b, err := Unmarshal(raw)
		if err != nil {
			return err
		}
		for _, env := range b.GetData().GetData() {
			slowTxID(env, fn)
		}
		return nil
	}
	for len(data) > 0 {
		num, typ, n := protowire.ConsumeTag(data)
		if n < 0 {
			return fmt.Errorf("%w: block data: %v", ErrMalformed, protowire.ParseError(n))
		}
		data = data[n:]
		if num == 1 && typ == protowire.BytesType { // BlockData.data
			env, m := protowire.ConsumeBytes(data)
			if m < 0 {
				return fmt.Errorf("%w: block data: %v", ErrMalformed, protowire.ParseError(m))
			}
			data = data[m:]
			if id, ok := fastTxID(env); ok {
				fn(id)
			} else {
				slowTxID(env, fn)
			}
			continue
		}
		m := protowire.ConsumeFieldValue(num, typ, data)
		if m < 0 {
			return fmt.Errorf("%w: block data: %v", ErrMalformed, protowire.ParseError(m))
		}
		data = data[m:]
	}
	return nil
}

// fastTxID follows Envelope.payload, Payload.header, Header.channel_header
// and ChannelHeader.tx_id; ok is false when one is missing, repeated or
// malformed.
func fastTxID(env []byte) (string, bool) {
	b := env
	for _, num := range []protowire.Number{1, 1, 1, 5} {
		v, ok, err := singleBytes(b, num)
		if err != nil || !ok {
			return "", false
		}
		b = v
	}
	return string(b), true
}

func slowTxID(env []byte, fn func(string)) {
	if e, err := ParseEnvelope(env); err == nil {
		fn(e.TxID())
	}
}

// singleBytes returns the value of length-delimited field num of message
// b; ok is false when the field is absent or occurs more than once (or
// with another wire type).
func singleBytes(b []byte, num protowire.Number) (v []byte, ok bool, err error) {
	seen := 0
	for len(b) > 0 {
		n, typ, l := protowire.ConsumeTag(b)
		if l < 0 {
			return nil, false, protowire.ParseError(l)
		}
		b = b[l:]
		m := protowire.ConsumeFieldValue(n, typ, b)
		if m < 0 {
			return nil, false, protowire.ParseError(m)
		}
		if n == num {
			seen++
			if typ == protowire.BytesType {
				v, _ = protowire.ConsumeBytes(b)
			} else {
				seen++ // a wrong wire type: let proto decide
			}
		}
		b = b[m:]
	}
	return v, seen == 1, nil
}
