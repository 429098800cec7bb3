package client

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
)

// Publish broadcasts data with pkgID on topic ("" for every connection) through the HTTP façade
// (POST /api/broadcast, docs/protocol.md §2) with the client's token, and returns how many nodes took
// it (delivered_to_nodes). It does not need the WebSocket connection to be up. Refusals are an
// *Error with HTTPStatus set (IsPermissionDenied: the token lacks the broadcast role or the
// topic's publish roles; IsRateLimited: 429). A 401 makes it get a fresh token from GetToken and
// try once more.
func (c *Client) Publish(ctx context.Context, topic string, pkgID int, data any) (int, error) {
	body := struct {
		PkgID int    `json:"pkg_id"`
		Data  any    `json:"data,omitempty"`
		Topic string `json:"topic,omitempty"`
	}{PkgID: pkgID, Data: data, Topic: topic}
	b, err := json.Marshal(body)
	if err != nil {
		return 0, fmt.Errorf("client: publish data: %w", err)
	}
	for try := 0; ; try++ {
		if err := c.Err(); err != nil {
			return 0, c.stoppedErr()
		}
		tok, err := c.currentToken(ctx)
		if err != nil {
			return 0, err
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.cfg.HTTPBase+"/api/broadcast", bytes.NewReader(b))
		if err != nil {
			return 0, err
		}
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Authorization", "Bearer "+tok)
		resp, err := c.cfg.HTTPClient.Do(req)
		if err != nil {
			return 0, fmt.Errorf("client: publish: %w", err)
		}
		rb, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		_ = resp.Body.Close()
		if err != nil {
			return 0, fmt.Errorf("client: publish: reading the answer: %w", err)
		}
		switch {
		case resp.StatusCode == http.StatusAccepted:
			var out struct {
				Delivered int `json:"delivered_to_nodes"`
			}
			if err := json.Unmarshal(rb, &out); err != nil {
				return 0, fmt.Errorf("client: publish: answer %q: %w", rb, err)
			}
			return out.Delivered, nil
		case resp.StatusCode == http.StatusUnauthorized && c.cfg.GetToken != nil && try == 0:
			c.markStale(tok)
			continue
		}
		return 0, httpError(resp.StatusCode, rb)
	}
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
