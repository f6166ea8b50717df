package main

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
)

// Just enough BSON for the proxy: walk a document's top-level elements, and build the small
// commands the helper sends FerretDB itself.

var errBSON = errors.New("malformed BSON")

// element is one top-level element of a BSON document: its type, key and raw value bytes.
type element struct {
	kind  byte
	key   string
	value []byte
}

// elements returns the top-level elements of doc (a whole BSON document).
func elements(doc []byte) ([]element, error) {
	if len(doc) < 5 || int(int32(binary.LittleEndian.Uint32(doc))) != len(doc) {
		return nil, errBSON
	}
	var out []element
	at := 4
	for at < len(doc)-1 {
		kind := doc[at]
		at++
		end := at
		for end < len(doc) && doc[end] != 0 {
			end++
		}
		if end >= len(doc) {
			return nil, errBSON
		}
		key := string(doc[at:end])
		at = end + 1
		n, err := valueSize(kind, doc[at:])
		if err != nil {
			return nil, err
		}
		out = append(out, element{kind, key, doc[at : at+n]})
		at += n
	}
	return out, nil
}

// valueSize is the length of the value of type kind at the start of b.
func valueSize(kind byte, b []byte) (int, error) {
	i32 := func() (int, error) {
		if len(b) < 4 {
			return 0, errBSON
		}
		return int(int32(binary.LittleEndian.Uint32(b))), nil
	}
	var n int
	var err error
	switch kind {
	case 0x01, 0x09, 0x11, 0x12: // double, datetime, timestamp, int64
		n = 8
	case 0x02, 0x0D, 0x0E: // string, JavaScript, symbol: int32 length, bytes
		n, err = i32()
		n += 4
	case 0x03, 0x04, 0x0F: // document, array, code with scope: their int32 size includes itself
		n, err = i32()
	case 0x05: // binary: int32 length, subtype, bytes
		n, err = i32()
		n += 5
	case 0x06, 0x0A, 0x7F, 0xFF: // undefined, null, max key, min key
		n = 0
	case 0x07: // ObjectId
		n = 12
	case 0x08: // bool
		n = 1
	case 0x0B: // regex: two cstrings
		zeros := 0
		for n < len(b) && zeros < 2 {
			if b[n] == 0 {
				zeros++
			}
			n++
		}
		if zeros < 2 {
			return 0, errBSON
		}
	case 0x0C: // DBPointer: string, ObjectId
		n, err = i32()
		n += 4 + 12
	case 0x10: // int32
		n = 4
	case 0x13: // decimal128
		n = 16
	default:
		return 0, fmt.Errorf("%w: type 0x%02x", errBSON, kind)
	}
	if err != nil || n < 0 || n > len(b) {
		return 0, errBSON
	}
	return n, nil
}

// stringValue is the Go string of a BSON string value.
func stringValue(e element) (string, bool) {
	if e.kind != 0x02 || len(e.value) < 5 {
		return "", false
	}
	return string(e.value[4 : len(e.value)-1]), true
}

// number is a BSON double, int32 or int64 value as a float64.
func number(e element) (float64, bool) {
	switch e.kind {
	case 0x01:
		return math.Float64frombits(binary.LittleEndian.Uint64(e.value)), true
	case 0x10:
		return float64(int32(binary.LittleEndian.Uint32(e.value))), true
	case 0x12:
		return float64(int64(binary.LittleEndian.Uint64(e.value))), true
	}
	return 0, false
}

// stringDoc builds a BSON document of string values, in order (keys and values alternate).
func stringDoc(kv ...string) []byte {
	body := []byte{}
	for i := 0; i+1 < len(kv); i += 2 {
		body = append(body, 0x02)
		body = append(body, kv[i]...)
		body = append(body, 0)
		body = binary.LittleEndian.AppendUint32(body, uint32(len(kv[i+1])+1))
		body = append(body, kv[i+1]...)
		body = append(body, 0)
	}
	doc := binary.LittleEndian.AppendUint32(nil, uint32(len(body)+5))
	doc = append(doc, body...)
	return append(doc, 0)
}

// opMsg wraps a command document in an OP_MSG with one kind-0 section.
func newOpMsg(requestID int32, doc []byte) []byte {
	msg := make([]byte, headerLen, headerLen+5+len(doc))
	binary.LittleEndian.PutUint32(msg[4:8], uint32(requestID))
	binary.LittleEndian.PutUint32(msg[12:16], opMsg)
	msg = binary.LittleEndian.AppendUint32(msg, 0) // flag bits
	msg = append(msg, 0)                           // section kind 0
	msg = append(msg, doc...)
	binary.LittleEndian.PutUint32(msg[0:4], uint32(len(msg)))
	return msg
}

// body is the kind-0 section (the command document) of an OP_MSG, or nil.
func body(msg []byte) []byte {
	at := headerLen + 4 // flag bits
	for at < len(msg) {
		kind := msg[at]
		at++
		if at+4 > len(msg) {
			return nil
		}
		size := int(int32(binary.LittleEndian.Uint32(msg[at : at+4])))
		if kind == 1 { // document sequence: its size, an identifier, documents
			if size < 4 {
				return nil
			}
			at += size
			continue
		}
		if kind != 0 || size < 5 || at+size > len(msg) {
			return nil
		}
		return msg[at : at+size]
	}
	return nil
}
