package auth

import (
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwk"
)

const (
	// MaxLeeway is the largest clock skew a Config may allow for exp/nbf/iat (PROTOCOL §1.1).
	MaxLeeway = 30 * time.Second
	// DefaultMinRefreshInterval bounds how often an unknown kid (or missing keys) may
	// trigger a JWKS fetch.
	DefaultMinRefreshInterval = 10 * time.Second

	discoveryPath = "/.well-known/openid-configuration"
	clientIDToken = "{client_id}"
)

// DefaultRoleClaimPaths is Keycloak's layout: realm roles and the roles of this client.
var DefaultRoleClaimPaths = []string{"realm_access.roles", "resource_access." + clientIDToken + ".roles"}

// Config configures a Verifier. Only Issuer and ClientID are required.
type Config struct {
	// Issuer is the exact expected "iss". With KeySet nil it must be an http(s) URL:
	// Issuer + "/.well-known/openid-configuration" names the jwks_uri.
	Issuer string
	// ClientID must be in "aud" or equal "azp"; it is also the resource_access key for roles.
	ClientID string
	// Leeway is the clock skew allowed for exp, nbf and iat; at most MaxLeeway.
	Leeway time.Duration
	// KeySet, when set, is a static public key set used instead of discovery (the built-in
	// development issuer). Verification is otherwise identical.
	KeySet jwk.Set
	// RoleClaimPaths are dot paths to string arrays of roles; "{client_id}" as a path
	// segment stands for ClientID. Default DefaultRoleClaimPaths.
	RoleClaimPaths []string
	// HTTPClient fetches discovery and JWKS. Default: a private client with a 10 s timeout
	// and no keep-alive (fetches are rare), closed by Close.
	HTTPClient *http.Client
	// MinRefreshInterval: an unknown kid, or a Verifier without keys, fetches the JWKS at
	// most once per this interval. Default DefaultMinRefreshInterval.
	MinRefreshInterval time.Duration
	// Logger receives fetch failures and rejected tokens' reasons (never tokens). Default: discard.
	Logger *slog.Logger
}

// normalized returns a copy with defaults applied, or an error a user can act on.
func (c Config) normalized() (Config, [][]string, error) {
	var errs []error
	if c.Issuer == "" {
		errs = append(errs, errors.New("auth: Issuer is required"))
	} else if c.KeySet == nil {
		u, err := url.Parse(c.Issuer)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			errs = append(errs, fmt.Errorf("auth: Issuer %q must be an http(s) URL when no KeySet is given", c.Issuer))
		}
	}
	if c.ClientID == "" {
		errs = append(errs, errors.New("auth: ClientID is required"))
	}
	if c.Leeway < 0 || c.Leeway > MaxLeeway {
		errs = append(errs, fmt.Errorf("auth: Leeway %s must be between 0s and %s", c.Leeway, MaxLeeway))
	}
	if c.MinRefreshInterval < 0 {
		errs = append(errs, fmt.Errorf("auth: MinRefreshInterval %s must not be negative", c.MinRefreshInterval))
	}
	if c.MinRefreshInterval == 0 {
		c.MinRefreshInterval = DefaultMinRefreshInterval
	}
	if len(c.RoleClaimPaths) == 0 {
		c.RoleClaimPaths = DefaultRoleClaimPaths
	}
	paths := make([][]string, 0, len(c.RoleClaimPaths))
	for _, p := range c.RoleClaimPaths {
		segs := strings.Split(p, ".")
		for i, s := range segs {
			if s == "" {
				errs = append(errs, fmt.Errorf("auth: role claim path %q has an empty segment", p))
				break
			}
			// Substituted per segment, so a client id containing dots stays one key.
			if s == clientIDToken {
				segs[i] = c.ClientID
			}
		}
		paths = append(paths, segs)
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if err := errors.Join(errs...); err != nil {
		return Config{}, nil, err
	}
	return c, paths, nil
}
