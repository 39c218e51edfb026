package fingerprint

import "errors"

// Reasons ParseTraceparent rejects a value. They are sentinels so that
// rejecting one costs no allocation.
var (
	ErrTraceparentFormat  = errors.New("traceparent: malformed (want version-traceid-parentid-flags in lowercase hex)")
	ErrTraceparentVersion = errors.New("traceparent: version ff is invalid")
	ErrTraceparentZeroID  = errors.New("traceparent: all-zero trace id or parent id")
)

// maxTraceState bounds the tracestate kept from a comment (W3C: 512 chars).
const maxTraceState = 512

// ParseTraceparent parses a W3C Trace Context traceparent header value:
// version "-" trace-id "-" parent-id "-" trace-flags, in lowercase hex.
// Version 00 must be exactly 55 characters. A higher version is read by its
// first four fields, and anything after them must start with '-'. Version
// ff, an all-zero trace id or parent id, uppercase or other non-hex digits
// and wrong lengths are errors. It does not allocate.
func ParseTraceparent(s string) (TraceContext, error) {
	var tc TraceContext
	if len(s) < 55 || s[2] != '-' || s[35] != '-' || s[52] != '-' {
		return tc, ErrTraceparentFormat
	}
	ver, ok := hexByte(s[0], s[1])
	if !ok {
		return tc, ErrTraceparentFormat
	}
	switch {
	case ver == 0xff:
		return tc, ErrTraceparentVersion
	case ver == 0 && len(s) != 55:
		return tc, ErrTraceparentFormat
	case len(s) > 55 && s[55] != '-':
		return tc, ErrTraceparentFormat
	}
	if !decodeHex(tc.TraceID[:], s[3:35]) || !decodeHex(tc.SpanID[:], s[36:52]) {
		return TraceContext{}, ErrTraceparentFormat
	}
	if tc.Flags, ok = hexByte(s[53], s[54]); !ok {
		return TraceContext{}, ErrTraceparentFormat
	}
	if !tc.IsValid() {
		return TraceContext{}, ErrTraceparentZeroID
	}
	return tc, nil
}

// lowerHex maps a lowercase hex digit to its value and anything else to 0xff.
var lowerHex = func() (t [256]byte) {
	for i := range t {
		t[i] = 0xff
	}
	for c := byte('0'); c <= '9'; c++ {
		t[c] = c - '0'
	}
	for c := byte('a'); c <= 'f'; c++ {
		t[c] = c - 'a' + 10
	}
	return t
}()

func hexByte(hi, lo byte) (byte, bool) {
	h, l := lowerHex[hi], lowerHex[lo]
	if h|l == 0xff || h > 15 || l > 15 {
		return 0, false
	}
	return h<<4 | l, true
}

func decodeHex(dst []byte, s string) bool {
	for i := range dst {
		b, ok := hexByte(s[2*i], s[2*i+1])
		if !ok {
			return false
		}
		dst[i] = b
	}
	return true
}
