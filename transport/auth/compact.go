package auth

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"strings"

	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/lestrrat-go/jwx/v2/jwk"
)

// compactJWS is a token in the JWS compact serialization, split and decoded by parseCompact.
// Its slices share one buffer, which nothing retains after Verify.
type compactJWS struct {
	alg       jwa.SignatureAlgorithm
	kid       string
	input     []byte // the signing input: the token's bytes before the last dot, as sent
	payload   []byte
	signature []byte
}

var errUndecodable = errors.New("undecodable token")

// parseCompact splits token (which has exactly two dots) into its three segments and decodes
// them: base64url without padding, as RFC 7515 spells them, and the header a JSON object.
// It reads the header as jws.Parse did (see readHeader). Two things jws.Parse took are
// refused: a segment in another base64 spelling (padded, or in the standard alphabet), and
// a "b64" header other than true (RFC 7797's unencoded payload: an access token's claims
// are always base64url).
func parseCompact(token string) (compactJWS, error) {
	dot1 := strings.IndexByte(token, '.')
	dot2 := strings.LastIndexByte(token, '.')
	if dot1 < 0 || dot1 == dot2 {
		return compactJWS{}, errUndecodable
	}
	enc := base64.RawURLEncoding
	hdrLen := enc.DecodedLen(dot1)
	payLen := enc.DecodedLen(dot2 - dot1 - 1)
	sigLen := enc.DecodedLen(len(token) - dot2 - 1)
	// One allocation: the token's bytes, then room for its three decoded segments.
	buf := make([]byte, len(token)+hdrLen+payLen+sigLen)
	raw, out := buf[:len(token)], buf[len(token):]
	copy(raw, token)
	decode := func(n int, src []byte) ([]byte, error) {
		dst := out[:n:n]
		out = out[n:]
		m, err := enc.Decode(dst, src)
		return dst[:m], err
	}
	hdr, err1 := decode(hdrLen, raw[:dot1])
	payload, err2 := decode(payLen, raw[dot1+1:dot2])
	sig, err3 := decode(sigLen, raw[dot2+1:])
	if err1 != nil || err2 != nil || err3 != nil {
		return compactJWS{}, errUndecodable
	}
	tok := compactJWS{input: raw[:dot2], payload: payload, signature: sig}
	if err := tok.readHeader(hdr); err != nil {
		return compactJWS{}, errUndecodable
	}
	return tok, nil
}

// readHeader reads the protected header as jws.Parse did: a JSON object whose registered
// parameters have their types (alg, kid, typ, cty, jku, x5u, x5t and x5t#S256 strings or
// null; crit and x5c arrays of strings or null; jwk a valid JWK), whose other values decode
// as JSON, and in which a repeated name counts with its last value. Like jws.Parse (a
// json.Decoder reading one value), it ignores whatever follows the object. Only alg and kid
// are kept; "crit" is not acted upon (nor was it before).
func (t *compactJWS) readHeader(hdr []byte) error {
	start := skipSpace(hdr, 0)
	if start >= len(hdr) || hdr[start] != '{' {
		return errUndecodable
	}
	end, err := skipValue(hdr, start) // on invalid JSON, a wrong end: then invalid too
	if err != nil || !json.Valid(hdr[start:end]) {
		return errUndecodable
	}
	m, _ := openObject(hdr[start:end])
	for {
		name, val, ok, err := m.next()
		if err != nil {
			return err
		}
		if !ok {
			return nil
		}
		switch string(name) {
		case "alg":
			s, err := decodeString(val)
			if err != nil {
				return err
			}
			t.alg = signatureAlgorithm(s)
		case "kid":
			s, err := decodeString(val)
			if err != nil {
				return err
			}
			t.kid = string(s)
		case "typ", "cty", "jku", "x5u", "x5t", "x5t#S256":
			if _, err := decodeString(val); err != nil {
				return err
			}
		case "crit", "x5c":
			var list []string
			if err := json.Unmarshal(val, &list); err != nil {
				return err
			}
		case "jwk":
			if _, err := jwk.ParseKey(val); err != nil {
				return err
			}
		case "b64":
			// jws.Parse took anything but true as an unencoded payload.
			if b, err := decodeAny(val); err != nil || b != true {
				return errUndecodable
			}
		default:
			if _, err := decodeAny(val); err != nil {
				return err
			}
		}
	}
}

// signatureAlgorithm returns s as an algorithm, without a copy for the usual ones.
func signatureAlgorithm(s []byte) jwa.SignatureAlgorithm {
	for _, a := range [...]jwa.SignatureAlgorithm{jwa.RS256, jwa.PS256, jwa.ES256, jwa.EdDSA, jwa.RS384,
		jwa.RS512, jwa.PS384, jwa.PS512, jwa.ES384, jwa.ES512, jwa.NoSignature} {
		if string(s) == string(a) {
			return a
		}
	}
	return jwa.SignatureAlgorithm(s)
}
