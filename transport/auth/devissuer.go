package auth

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/lestrrat-go/jwx/v2/jwk"
	"github.com/lestrrat-go/jwx/v2/jws"
)

const (
	// DevIssuerID is the "iss" of the built-in development issuer's tokens. (It cannot be
	// named DevIssuer: that is the type.)
	DevIssuerID = "urn:switchboard:dev-issuer"
	// DevKeyFile is the development issuer's private key, under the data directory.
	DevKeyFile = "dev-issuer.key"
	// DefaultDevTokenTTL applies when MintParams.TTL is zero.
	DefaultDevTokenTTL = time.Hour
	// DevJWKSPath is where JWKSHandler is meant to be mounted (PROTOCOL §6).
	DevJWKSPath = "/.well-known/jwks.json"

	devKeyBits    = 2048
	maxKeyFileLen = 64 << 10
)

// DevIssuer signs RS256 tokens with a key kept in the data directory. Tokens it mints
// verify through a Verifier configured with Issuer DevIssuerID and KeySet PublicKeySet().
// It is immutable after OpenDevIssuer and safe for concurrent use.
type DevIssuer struct {
	path string
	priv jwk.Key // RSA private key with kid, alg RS256, use sig
	pub  jwk.Set
	jwks []byte
	// rsaPub checks the development issuer's own refresh tokens.
	rsaPub *rsa.PublicKey
}

// MintParams describes a development token. Subject and ClientID are required; Username
// defaults to Subject and TTL to DefaultDevTokenTTL.
type MintParams struct {
	Subject, Username, ClientID string
	Roles                       []string
	TTL                         time.Duration
}

// OpenDevIssuer loads <dataDir>/dev-issuer.key (PEM, mode 0600), creating the directory and
// a new RSA-2048 key on first use. Creation is atomic and never replaces an existing key
// (temp file + hard link), so processes starting at once all end up with the same key.
func OpenDevIssuer(dataDir string) (*DevIssuer, error) {
	if dataDir == "" {
		return nil, errors.New("auth: development issuer needs a data directory")
	}
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return nil, fmt.Errorf("auth: create data directory: %w", err)
	}
	path := filepath.Join(dataDir, DevKeyFile)
	key, err := loadDevKey(path)
	if errors.Is(err, fs.ErrNotExist) {
		key, err = createDevKey(path)
	}
	if err != nil {
		return nil, err
	}
	return newDevIssuer(path, key)
}

// LoadDevIssuer loads the key OpenDevIssuer created in dataDir and never creates one: a
// command that mints tokens for a running server must use that server's key, and a key
// created anywhere else would sign tokens no server accepts. A missing key (or data
// directory) is ErrNoDevKey.
func LoadDevIssuer(dataDir string) (*DevIssuer, error) {
	if dataDir == "" {
		return nil, errors.New("auth: development issuer needs a data directory")
	}
	path := filepath.Join(dataDir, DevKeyFile)
	key, err := loadDevKey(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w: %s does not exist", ErrNoDevKey, path)
	}
	if err != nil {
		return nil, err
	}
	return newDevIssuer(path, key)
}

func newDevIssuer(path string, key *rsa.PrivateKey) (*DevIssuer, error) {
	priv, err := jwk.FromRaw(key)
	if err != nil {
		return nil, fmt.Errorf("auth: development key: %w", err)
	}
	// kid = RFC 7638 thumbprint: stable across restarts, different for a new key.
	if err := jwk.AssignKeyID(priv); err != nil {
		return nil, fmt.Errorf("auth: development key id: %w", err)
	}
	if err := errors.Join(priv.Set(jwk.AlgorithmKey, jwa.RS256), priv.Set(jwk.KeyUsageKey, jwk.ForSignature)); err != nil {
		return nil, fmt.Errorf("auth: development key: %w", err)
	}
	pub, err := priv.PublicKey()
	if err != nil {
		return nil, fmt.Errorf("auth: development public key: %w", err)
	}
	set := jwk.NewSet()
	if err := set.AddKey(pub); err != nil {
		return nil, fmt.Errorf("auth: development key set: %w", err)
	}
	jwks, err := json.Marshal(set)
	if err != nil {
		return nil, fmt.Errorf("auth: development key set: %w", err)
	}
	return &DevIssuer{path: path, priv: priv, pub: set, jwks: jwks, rsaPub: &key.PublicKey}, nil
}

// readPrivateFile reads at most limit+1 bytes of a regular file that only its owner may read;
// the os error (fs.ErrNotExist) when there is none.
func readPrivateFile(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("auth: %s is not a regular file", path)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 && runtime.GOOS != "windows" {
		return nil, fmt.Errorf("auth: %s is accessible by other users (mode %04o); run: chmod 600 %s", path, perm, path)
	}
	data, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, fmt.Errorf("auth: read %s: %w", path, err)
	}
	return data, nil
}

// loadDevKey reads and checks the PEM key at path; fs.ErrNotExist when there is none.
func loadDevKey(path string) (*rsa.PrivateKey, error) {
	data, err := readPrivateFile(path, maxKeyFileLen)
	if err != nil {
		return nil, err
	}
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, fmt.Errorf("auth: %s holds no PEM block; delete it to create a new development key", path)
	}
	var key any
	switch block.Type {
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	case "RSA PRIVATE KEY":
		key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
	default:
		err = fmt.Errorf("unexpected PEM block %q", block.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("auth: parse %s: %w", path, err)
	}
	rk, ok := key.(*rsa.PrivateKey)
	if !ok || rk.N.BitLen() < devKeyBits {
		return nil, fmt.Errorf("auth: %s must hold an RSA key of at least %d bits", path, devKeyBits)
	}
	if err := rk.Validate(); err != nil {
		return nil, fmt.Errorf("auth: %s: %w", path, err)
	}
	return rk, nil
}

// createDevKey writes a new key to a temporary file and links it into place. Link, unlike
// rename, fails when path already exists, so a concurrent creator's key is never replaced;
// either way the key returned is the one on disk.
func createDevKey(path string) (*rsa.PrivateKey, error) {
	key, err := rsa.GenerateKey(rand.Reader, devKeyBits)
	if err != nil {
		return nil, fmt.Errorf("auth: generate development key: %w", err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("auth: encode development key: %w", err)
	}
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, ".dev-issuer-*.tmp") // mode 0600
	if err != nil {
		return nil, fmt.Errorf("auth: create development key: %w", err)
	}
	defer os.Remove(tmp.Name())
	werr := pem.Encode(tmp, &pem.Block{Type: "PRIVATE KEY", Bytes: der})
	if werr == nil {
		werr = tmp.Chmod(0o600)
	}
	if werr == nil {
		werr = tmp.Sync()
	}
	if err := errors.Join(werr, tmp.Close()); err != nil {
		return nil, fmt.Errorf("auth: write development key: %w", err)
	}
	if err := os.Link(tmp.Name(), path); err != nil && !errors.Is(err, fs.ErrExist) {
		// No hard links on this filesystem: rename instead (a simultaneous creator may
		// then win; both still load whatever ends up on disk).
		if err := os.Rename(tmp.Name(), path); err != nil {
			return nil, fmt.Errorf("auth: install development key: %w", err)
		}
	}
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync() // best effort: make the new name durable
		_ = d.Close()
	}
	return loadDevKey(path)
}

// KeyPath is the file holding the private key.
func (d *DevIssuer) KeyPath() string { return d.path }

// KeyID is the kid of the signing key (its RFC 7638 thumbprint), in every token's header and
// in the JWKS: two DevIssuers sign alike exactly when their KeyIDs are equal.
func (d *DevIssuer) KeyID() string { return d.priv.KeyID() }

// PublicKeySet returns a copy of the public key set (one RSA key with kid, alg RS256, use sig).
func (d *DevIssuer) PublicKeySet() jwk.Set {
	set, err := d.pub.Clone()
	if err != nil { // cannot happen for a set built by newDevIssuer
		panic(fmt.Sprintf("auth: clone development key set: %v", err))
	}
	return set
}

// Mint signs an RS256 access token shaped like Keycloak's: iss DevIssuerID, sub,
// preferred_username, aud and azp ClientID, realm_access.roles, typ Bearer, iat, nbf, exp
// and a random jti. It returns the token and its expiry (whole seconds, as in the token).
func (d *DevIssuer) Mint(p MintParams) (string, time.Time, error) {
	switch {
	case p.Subject == "":
		return "", time.Time{}, errors.New("auth: mint: subject is required")
	case p.ClientID == "":
		return "", time.Time{}, errors.New("auth: mint: client id is required")
	case p.TTL < 0:
		return "", time.Time{}, fmt.Errorf("auth: mint: negative TTL %s", p.TTL)
	case p.TTL == 0:
		p.TTL = DefaultDevTokenTTL
	}
	if p.Username == "" {
		p.Username = p.Subject
	}
	roles := append([]string{}, p.Roles...)
	jti := make([]byte, 16)
	_, _ = rand.Read(jti) // crypto/rand.Read never fails on supported platforms
	now := time.Now()
	exp := now.Add(p.TTL).Truncate(time.Second)
	payload, err := json.Marshal(map[string]any{
		"iss":                DevIssuerID,
		"sub":                p.Subject,
		"aud":                []string{p.ClientID},
		"azp":                p.ClientID,
		"typ":                "Bearer",
		"preferred_username": p.Username,
		"realm_access":       map[string]any{"roles": roles},
		"iat":                now.Unix(),
		"nbf":                now.Unix(),
		"exp":                exp.Unix(),
		"jti":                hex.EncodeToString(jti),
	})
	if err != nil {
		return "", time.Time{}, fmt.Errorf("auth: mint: %w", err)
	}
	hdr := jws.NewHeaders()
	if err := hdr.Set(jws.TypeKey, "JWT"); err != nil {
		return "", time.Time{}, fmt.Errorf("auth: mint: %w", err)
	}
	// Signing with the JWK puts its kid in the protected header.
	tok, err := jws.Sign(payload, jws.WithKey(jwa.RS256, d.priv, jws.WithProtectedHeaders(hdr)))
	if err != nil {
		return "", time.Time{}, fmt.Errorf("auth: mint: %w", err)
	}
	return string(tok), exp, nil
}

// JWKSHandler serves the public key set (mount it at DevJWKSPath).
func (d *DevIssuer) JWKSHandler() http.Handler {
	return jsonDocument(d.jwks)
}

// DiscoveryHandler serves a minimal openid-configuration naming DevIssuerID and the JWKS
// at baseURL + DevJWKSPath.
func (d *DevIssuer) DiscoveryHandler(baseURL string) http.Handler {
	doc, _ := json.Marshal(map[string]any{
		"issuer":                                DevIssuerID,
		"jwks_uri":                              strings.TrimSuffix(baseURL, "/") + DevJWKSPath,
		"id_token_signing_alg_values_supported": []string{"RS256"},
	})
	return jsonDocument(doc)
}

func jsonDocument(body []byte) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusMethodNotAllowed)
			_, _ = w.Write([]byte(`{"detail":"Method not allowed"}`))
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "public, max-age=300")
		if r.Method == http.MethodGet {
			_, _ = w.Write(body)
		}
	})
}
