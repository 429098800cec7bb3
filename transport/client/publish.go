package client

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"
)

// Publish broadcasts data with pkgID on topic ("" for every connection) through the HTTP façade
// (POST /api/broadcast, docs/protocol.md §2) with the client's token, and returns how many nodes took
// it (delivered_to_nodes). It does not need the WebSocket connection to be up. Refusals are an
// *Error with HTTPStatus set (IsPermissionDenied: the token lacks the broadcast role or the
// topic's publish roles; IsRateLimited: 429). A 401 makes it get a fresh token from GetToken and
// try once more. A producer that never reads needs no Client: see Publisher.
func (c *Client) Publish(ctx context.Context, topic string, pkgID int, data any) (int, error) {
	b, err := publishBody(topic, pkgID, data)
	if err != nil {
		return 0, err
	}
	for try := 0; ; try++ {
		if err := c.Err(); err != nil {
			return 0, c.stoppedErr()
		}
		tok, err := c.currentToken(ctx)
		if err != nil {
			return 0, err
		}
		n, err := postBroadcast(ctx, c.cfg.HTTPClient, c.cfg.HTTPBase, tok, b)
		if isUnauthorized(err) && c.cfg.GetToken != nil && try == 0 {
			c.markStale(tok)
			continue
		}
		return n, err
	}
}

// PublisherConfig configures a Publisher. BaseURL and one of Token or GetToken are required.
type PublisherConfig struct {
	// BaseURL is the HTTP façade, http://host:port (https:// for TLS).
	BaseURL string
	// Token is a bearer token with the broadcast role (and the topic's publish roles).
	Token string
	// GetToken returns a fresh token: for the first call when Token is empty, and once more
	// after a 401. It must honour ctx.
	GetToken func(ctx context.Context) (string, error)
	// HTTPClient makes the calls (a client with a 30s timeout by default). A producer that
	// publishes from many goroutines at once should give it a Transport with
	// MaxIdleConnsPerHost raised to match, or most calls open a new connection.
	HTTPClient *http.Client
}

// Publisher broadcasts through the HTTP façade without a WebSocket connection: for producers
// that publish and never receive (a batch job, a load generator). Publish is Client.Publish
// without the client. It is safe for concurrent use; it owns no goroutine (Close only closes
// the idle keep-alive connections of a default HTTPClient).
type Publisher struct {
	cfg     PublisherConfig
	ownHTTP bool

	mu    sync.Mutex
	token string
}

// NewPublisher checks cfg and returns a Publisher; nothing is dialed until the first Publish.
func NewPublisher(cfg PublisherConfig) (*Publisher, error) {
	u, err := url.Parse(cfg.BaseURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("client: PublisherConfig.BaseURL %q: want http://host:port or https://…", cfg.BaseURL)
	}
	if cfg.Token == "" && cfg.GetToken == nil {
		return nil, errors.New("client: PublisherConfig.Token or PublisherConfig.GetToken is required")
	}
	cfg.BaseURL = strings.TrimSuffix(cfg.BaseURL, "/")
	p := &Publisher{cfg: cfg, token: cfg.Token}
	if p.cfg.HTTPClient == nil {
		p.cfg.HTTPClient = &http.Client{Timeout: 30 * time.Second}
		p.ownHTTP = true
	}
	return p, nil
}

// Publish broadcasts data with pkgID on topic ("" for every connection) and returns
// delivered_to_nodes; refusals are an *Error with HTTPStatus set, as for Client.Publish.
func (p *Publisher) Publish(ctx context.Context, topic string, pkgID int, data any) (int, error) {
	b, err := publishBody(topic, pkgID, data)
	if err != nil {
		return 0, err
	}
	for try := 0; ; try++ {
		tok, err := p.currentToken(ctx, try > 0)
		if err != nil {
			return 0, err
		}
		n, err := postBroadcast(ctx, p.cfg.HTTPClient, p.cfg.BaseURL, tok, b)
		if isUnauthorized(err) && p.cfg.GetToken != nil && try == 0 {
			continue
		}
		return n, err
	}
}

// Close closes the idle connections of the Publisher's own HTTP client (not of one given in
// the configuration). The Publisher stays usable.
func (p *Publisher) Close() {
	if p.ownHTTP {
		p.cfg.HTTPClient.CloseIdleConnections()
	}
}

// currentToken returns the token held, or a fresh one from GetToken when there is none or
// fresh is asked (after a 401).
func (p *Publisher) currentToken(ctx context.Context, fresh bool) (string, error) {
	p.mu.Lock()
	tok := p.token
	p.mu.Unlock()
	if tok != "" && !fresh {
		return tok, nil
	}
	if p.cfg.GetToken == nil {
		return tok, nil
	}
	tok, err := p.cfg.GetToken(ctx)
	if err != nil {
		return "", fmt.Errorf("client: GetToken: %w", err)
	}
	if tok == "" {
		return "", errors.New("client: GetToken returned an empty token")
	}
	p.mu.Lock()
	p.token = tok
	p.mu.Unlock()
	return tok, nil
}

// publishBody encodes the body of POST /api/broadcast.
func publishBody(topic string, pkgID int, data any) ([]byte, error) {
	body := struct {
		PkgID int    `json:"pkg_id"`
		Data  any    `json:"data,omitempty"`
		Topic string `json:"topic,omitempty"`
	}{PkgID: pkgID, Data: data, Topic: topic}
	b, err := json.Marshal(body)
	if err != nil {
		return nil, fmt.Errorf("client: publish data: %w", err)
	}
	return b, nil
}

// postBroadcast makes one POST /api/broadcast and reads its answer.
func postBroadcast(ctx context.Context, hc *http.Client, base, tok string, body []byte) (int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+"/api/broadcast", bytes.NewReader(body))
	if err != nil {
		return 0, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, err := hc.Do(req)
	if err != nil {
		return 0, fmt.Errorf("client: publish: %w", err)
	}
	rb, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	_ = resp.Body.Close()
	if err != nil {
		return 0, fmt.Errorf("client: publish: reading the answer: %w", err)
	}
	if resp.StatusCode != http.StatusAccepted {
		return 0, httpError(resp.StatusCode, rb)
	}
	var out struct {
		Delivered int `json:"delivered_to_nodes"`
	}
	if err := json.Unmarshal(rb, &out); err != nil {
		return 0, fmt.Errorf("client: publish: answer %q: %w", rb, err)
	}
	return out.Delivered, nil
}

func isUnauthorized(err error) bool {
	var e *Error
	return errors.As(err, &e) && e.HTTPStatus == http.StatusUnauthorized
}

// httpError reads the façade's error body {"detail", "errors"?}.
func httpError(status int, body []byte) *Error {
	var d struct {
		Detail string       `json:"detail"`
		Errors []FieldError `json:"errors"`
	}
	e := &Error{HTTPStatus: status, Data: body}
	if json.Unmarshal(body, &d) == nil && d.Detail != "" {
		e.Msg, e.Errors = d.Detail, d.Errors
	} else {
		e.Msg = strings.TrimSpace(string(body))
	}
	switch status {
	case http.StatusForbidden:
		e.Status = StatusPermissionDenied
	case http.StatusUnprocessableEntity, http.StatusConflict:
		e.Status = StatusInvalidData
	default:
		e.Status = StatusError
	}
	return e
}
