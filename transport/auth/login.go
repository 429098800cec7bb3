package auth

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// DefaultLoginTimeout bounds one PasswordGrant.Login (discovery included) when
// PasswordGrantConfig.Timeout is zero.
const DefaultLoginTimeout = 5 * time.Second

// Tokens is what a successful login answers (JSON field names as in docs/protocol.md §2).
type Tokens struct {
	AccessToken  string `json:"access_token"`
	RefreshToken string `json:"refresh_token"`
	ExpiresIn    int    `json:"expires_in"` // seconds until the access token expires
}

// Login exchanges a username and password for tokens. It is implemented by the OIDC
// password grant (PasswordGrant) and by the development users file (DevLogin). Errors wrap
// ErrBadCredentials (answer 401) or ErrIdPUnavailable (answer 503); any other error is a
// configuration mistake (500). No implementation logs the password or a token. Both
// implementations also have Refresh(ctx, refreshToken) (Tokens, error), whose errors wrap
// ErrInvalidRefreshToken (401) or ErrIdPUnavailable (503).
type Login interface {
	Login(ctx context.Context, username, password string) (Tokens, error)
}

// PasswordGrantConfig configures a PasswordGrant. ClientID and one of Issuer or
// TokenEndpoint are required.
type PasswordGrantConfig struct {
	// Issuer is the OIDC issuer; its discovery document names the token_endpoint. It is
	// fetched on the first Login and cached once it succeeds.
	Issuer string
	// TokenEndpoint, when set, is used as is and discovery is skipped.
	TokenEndpoint string
	// ClientID is sent as client_id.
	ClientID string
	// ClientSecret, when set, is sent as client_secret (client_secret_post): a confidential
	// client. Empty for a public client.
	ClientSecret string
	// HTTPClient performs the requests. Default: a private client with keep-alive, released
	// by Close. Redirects are never followed for the token request (the form carries the
	// password), whatever the client's CheckRedirect says.
	HTTPClient *http.Client
	// Timeout bounds one Login, discovery included. Default DefaultLoginTimeout.
	Timeout time.Duration
	// Logger receives IdP failures and rejected logins' reasons (never a password or a
	// token). Default: discard.
	Logger *slog.Logger
}

// PasswordGrant logs users in with the OAuth 2.0 resource owner password credentials grant
// (Keycloak's "direct access grants") against an OIDC issuer's token endpoint. It is safe
// for concurrent use; at most one discovery fetch runs at a time.
type PasswordGrant struct {
	cfg        PasswordGrantConfig
	cfgErr     error
	log        *slog.Logger
	fetch      *fetcher     // discovery, through the configured client
	post       *http.Client // token requests: never follows redirects
	ownedTrans *http.Transport

	endpoint  atomic.Pointer[string] // token endpoint once known
	discovery chan struct{}          // capacity 1: held while a discovery fetch runs
}

// NewPasswordGrant returns a PasswordGrant. It does no network I/O; a configuration
// mistake (no client id, no issuer) is returned by every Login.
func NewPasswordGrant(cfg PasswordGrantConfig) *PasswordGrant {
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultLoginTimeout
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	p := &PasswordGrant{cfg: cfg, log: cfg.Logger, discovery: make(chan struct{}, 1)}
	p.cfgErr = cfg.validate()
	client := cfg.HTTPClient
	if client == nil {
		p.ownedTrans = http.DefaultTransport.(*http.Transport).Clone()
		p.ownedTrans.MaxIdleConnsPerHost = 16 // logins come in bursts (a deploy, a shift start)
		client = &http.Client{Transport: p.ownedTrans}
	}
	post := *client
	post.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	p.post = &post
	// The fetcher's own context only bounds jwk.Cache fetches; Login passes its own.
	p.fetch = &fetcher{ctx: context.Background(), client: client}
	if cfg.TokenEndpoint != "" && p.cfgErr == nil {
		ep := cfg.TokenEndpoint
		p.endpoint.Store(&ep)
	}
	return p
}

func (c PasswordGrantConfig) validate() error {
	var errs []error
	if c.ClientID == "" {
		errs = append(errs, errors.New("auth: password grant: ClientID is required"))
	}
	switch {
	case c.TokenEndpoint != "":
		if !isHTTPURL(c.TokenEndpoint) {
			errs = append(errs, fmt.Errorf("auth: password grant: TokenEndpoint %q must be an http(s) URL", c.TokenEndpoint))
		}
	case c.Issuer == "":
		errs = append(errs, errors.New("auth: password grant: Issuer or TokenEndpoint is required"))
	case !isHTTPURL(c.Issuer):
		errs = append(errs, fmt.Errorf("auth: password grant: Issuer %q must be an http(s) URL", c.Issuer))
	}
	return errors.Join(errs...)
}

func isHTTPURL(s string) bool {
	u, err := url.Parse(s)
	return err == nil && (u.Scheme == "http" || u.Scheme == "https") && u.Host != ""
}

// Close releases the idle connections of the private HTTP client (none with a
// caller-supplied client). A later Login still works, on new connections.
func (p *PasswordGrant) Close() {
	if p.ownedTrans != nil {
		p.ownedTrans.CloseIdleConnections()
	}
}

// tokenResponse is the part of RFC 6749 §5.1/§5.2 answers that Login reads.
type tokenResponse struct {
	AccessToken      string          `json:"access_token"`
	RefreshToken     string          `json:"refresh_token"`
	ExpiresIn        json.RawMessage `json:"expires_in"` // a number; a few IdPs send a string
	TokenType        string          `json:"token_type"`
	Error            string          `json:"error"`
	ErrorDescription string          `json:"error_description"`
}

// Login posts grant_type=password (with client_id, client_secret when configured,
// username, password and scope=openid) to the token endpoint. invalid_grant (400/401)
// is ErrBadCredentials; a network error, timeout, 5xx, malformed answer or a rejected client
// is ErrIdPUnavailable.
func (p *PasswordGrant) Login(ctx context.Context, username, password string) (Tokens, error) {
	if p.cfgErr != nil {
		return Tokens{}, p.cfgErr
	}
	if username == "" || password == "" {
		return Tokens{}, fail(ErrBadCredentials, "")
	}
	form := url.Values{
		"grant_type": {"password"},
		"username":   {username},
		"password":   {password},
		"scope":      {"openid"},
	}
	return p.grant(ctx, form, grantKind{name: "login", rejected: ErrBadCredentials, logArgs: []any{"username", username}})
}

// Refresh posts grant_type=refresh_token (with client_id and client_secret when configured)
// to the token endpoint: the tokens a Login answered, renewed. invalid_grant (an expired,
// revoked or foreign refresh token) is ErrInvalidRefreshToken; the IdP's failures are
// ErrIdPUnavailable, as for Login. When the IdP answers without a new refresh token, the one
// given stays in use (RFC 6749 §6) and is answered again.
func (p *PasswordGrant) Refresh(ctx context.Context, refreshToken string) (Tokens, error) {
	if p.cfgErr != nil {
		return Tokens{}, p.cfgErr
	}
	if refreshToken == "" {
		return Tokens{}, fail(ErrInvalidRefreshToken, "")
	}
	form := url.Values{
		"grant_type":    {"refresh_token"},
		"refresh_token": {refreshToken},
	}
	tokens, err := p.grant(ctx, form, grantKind{name: "refresh", rejected: ErrInvalidRefreshToken})
	if err == nil && tokens.RefreshToken == "" {
		tokens.RefreshToken = refreshToken
	}
	return tokens, err
}

// grantKind says how grant reports one kind of grant.
type grantKind struct {
	name     string // "login" or "refresh", in log messages
	rejected error  // what the IdP's invalid_grant means
	logArgs  []any  // what identifies the request in a debug log (never a secret)
}

// grant posts form (plus the client's credentials) to the token endpoint and reads the answer.
func (p *PasswordGrant) grant(ctx context.Context, form url.Values, kind grantKind) (Tokens, error) {
	ctx, cancel := context.WithTimeout(ctx, p.cfg.Timeout)
	defer cancel()
	endpoint, err := p.tokenEndpoint(ctx)
	if err != nil {
		return Tokens{}, err
	}
	form.Set("client_id", p.cfg.ClientID)
	if p.cfg.ClientSecret != "" {
		form.Set("client_secret", p.cfg.ClientSecret)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, endpoint, strings.NewReader(form.Encode()))
	if err != nil {
		return Tokens{}, fmt.Errorf("auth: %s grant: %w", form.Get("grant_type"), err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "application/json")
	res, err := p.post.Do(req)
	if err != nil {
		// url.Error names the endpoint and the cause; the form (password, token) is not in it.
		p.log.Warn("auth: "+kind.name+": token endpoint unreachable", "error", err)
		return Tokens{}, unavailable(ctx)
	}
	defer res.Body.Close()
	body, err := io.ReadAll(io.LimitReader(res.Body, maxDocBytes+1))
	if err != nil {
		p.log.Warn("auth: "+kind.name+": reading the token response failed", "error", err)
		return Tokens{}, unavailable(ctx)
	}
	var tr tokenResponse
	jsonErr := json.Unmarshal(body, &tr)
	if len(body) > maxDocBytes {
		jsonErr = errors.New("response too large")
	}
	switch {
	case res.StatusCode == http.StatusOK:
		return p.tokens(kind, tr, jsonErr)
	case (res.StatusCode == http.StatusBadRequest || res.StatusCode == http.StatusUnauthorized) &&
		jsonErr == nil && tr.Error == "invalid_grant":
		// Login: wrong password, unknown user, disabled account, pending required actions.
		// Refresh: expired, revoked or ended session, or issued to another client.
		p.log.Debug("auth: "+kind.name+" rejected by the identity provider",
			append(kind.logArgs, "error", tr.Error, "description", tr.ErrorDescription)...)
		return Tokens{}, fail(kind.rejected, "")
	case (res.StatusCode == http.StatusBadRequest || res.StatusCode == http.StatusUnauthorized) && jsonErr == nil:
		// invalid_client, unauthorized_client, unsupported_grant_type, invalid_scope: not
		// the user's fault, and it will not pass by retrying.
		p.log.Error("auth: "+kind.name+": the identity provider rejected the client; check the client id and secret, "+
			"and that the client allows direct access grants (password grant)",
			"status", res.StatusCode, "error", tr.Error, "description", tr.ErrorDescription)
		return Tokens{}, fail(ErrIdPUnavailable, "")
	default:
		p.log.Warn("auth: "+kind.name+": unexpected answer from the token endpoint",
			"status", res.StatusCode, "error", tr.Error, "description", tr.ErrorDescription)
		return Tokens{}, fail(ErrIdPUnavailable, "")
	}
}

func (p *PasswordGrant) tokens(kind grantKind, tr tokenResponse, jsonErr error) (Tokens, error) {
	if jsonErr != nil || tr.AccessToken == "" {
		p.log.Warn("auth: "+kind.name+": token endpoint answered 200 without a usable token response", "error", jsonErr)
		return Tokens{}, fail(ErrIdPUnavailable, "")
	}
	if tr.TokenType != "" && !strings.EqualFold(tr.TokenType, "Bearer") {
		p.log.Error("auth: "+kind.name+": the identity provider issued a token that is not a bearer token; "+
			"disable DPoP/holder-of-key binding for this client", "token_type", tr.TokenType)
		return Tokens{}, fail(ErrIdPUnavailable, "")
	}
	expiresIn := 0
	if raw := strings.Trim(string(tr.ExpiresIn), `"`); raw != "" && raw != "null" {
		if f, err := strconv.ParseFloat(raw, 64); err == nil && f > 0 && f < 1<<31 {
			expiresIn = int(f)
		}
	}
	return Tokens{AccessToken: tr.AccessToken, RefreshToken: tr.RefreshToken, ExpiresIn: expiresIn}, nil
}

// tokenEndpoint returns the configured or discovered token endpoint, discovering it if
// needed. A failed discovery is not cached: the next Login tries again.
func (p *PasswordGrant) tokenEndpoint(ctx context.Context) (string, error) {
	if ep := p.endpoint.Load(); ep != nil {
		return *ep, nil
	}
	select {
	case p.discovery <- struct{}{}:
	case <-ctx.Done():
		return "", unavailable(ctx)
	}
	defer func() { <-p.discovery }()
	if ep := p.endpoint.Load(); ep != nil { // another Login discovered it meanwhile
		return *ep, nil
	}
	ep, err := p.discover(ctx)
	if err != nil {
		p.log.Warn("auth: login: OIDC discovery failed", "issuer", p.cfg.Issuer, "error", err)
		return "", unavailable(ctx)
	}
	p.endpoint.Store(&ep)
	return ep, nil
}

func (p *PasswordGrant) discover(ctx context.Context) (string, error) {
	doc, err := discover(ctx, p.fetch, p.cfg.Issuer, p.log)
	if err != nil {
		return "", err
	}
	if !isHTTPURL(doc.TokenEndpoint) {
		return "", fmt.Errorf("discovery document has no usable token_endpoint (%q)", doc.TokenEndpoint)
	}
	return doc.TokenEndpoint, nil
}

// unavailable is ErrIdPUnavailable, also wrapping the context's error once the Login's
// deadline passed or its caller went away (so the edge can tell a timeout from an outage).
func unavailable(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("%w: %w", ErrIdPUnavailable, err)
	}
	return fail(ErrIdPUnavailable, "")
}
