package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	"switchboard/config"
	"switchboard/transport/auth"
)

// tokenCommand prints a development token signed with the key the server uses. It never
// creates a key: a key made here, outside the server's data directory, signs tokens that no
// server accepts.
func tokenCommand(ctx context.Context, c command, args []string, env environment, stdout, stderr io.Writer) error {
	var f cliFlags
	fs := newFlagSet(c.name)
	user := fs.String("user", "", "user `NAME` (also the token's sub); required")
	roles := fs.String("roles", "", "comma-separated `ROLES`, e.g. get-authors,create-author")
	ttl := fs.Duration("ttl", time.Hour, "lifetime, a `DURATION` such as 30m or 24h (at most 720h)")
	addDataDirFlag(fs, &f)
	if err := parseFlags(c, fs, args, stdout); err != nil {
		return err
	}
	if *user == "" {
		return usageError{msg: "token: --user is required", cmd: c.name}
	}
	if *ttl <= 0 || *ttl > 30*24*time.Hour {
		return usageError{msg: fmt.Sprintf("token: --ttl must be between 1s and 720h, got %s", *ttl), cmd: c.name}
	}
	cfg, _, err := env.resolve(f.overrides())
	if err != nil {
		return err
	}
	env.warn(cfg, stderr)
	if !cfg.DevIssuer() {
		return errors.New("token: SWITCHBOARD_OIDC_ISSUER is set, so tokens come from that issuer (POST /login); " +
			"this command only signs tokens for the built-in development issuer")
	}
	dev, err := auth.LoadDevIssuer(cfg.DataDir)
	switch {
	case errors.Is(err, auth.ErrNoDevKey):
		return fmt.Errorf("token: no development key in %s (SWITCHBOARD_DATA_DIR): point SWITCHBOARD_DATA_DIR or "+
			"--data-dir at the server's data directory, or start the server once to create the key", absPath(cfg.DataDir))
	case err != nil:
		return fmt.Errorf("token: SWITCHBOARD_DATA_DIR: %w", err)
	}
	if err := checkServerKey(ctx, cfg, dev); err != nil {
		return err
	}
	var rs []string
	for _, r := range strings.Split(*roles, ",") {
		if r = strings.TrimSpace(r); r != "" {
			rs = append(rs, r)
		}
	}
	tok, _, err := dev.Mint(auth.MintParams{Subject: *user, Username: *user, ClientID: cfg.OIDCClientID, Roles: rs, TTL: *ttl})
	if err != nil {
		return fmt.Errorf("token: %w", err)
	}
	fmt.Fprintln(stdout, tok)
	return nil
}

// serverKeyTimeout bounds the look at a running server's keys.
const serverKeyTimeout = 2 * time.Second

// checkServerKey asks the server on SWITCHBOARD_ADDR, if one answers, which key it verifies
// with, and refuses when it is not dev's: the data directory is another server's, or an old
// copy. No answer (no server running, another kind of server) is not an error: the token may
// be meant for a server that starts later.
func checkServerKey(ctx context.Context, cfg config.Config, dev *auth.DevIssuer) error {
	base := serverURL(cfg.Addr)
	if base == "" {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, serverKeyTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+auth.DevJWKSPath, nil)
	if err != nil {
		return nil
	}
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true, Proxy: nil}}
	res, err := client.Do(req)
	if err != nil {
		return nil
	}
	defer res.Body.Close()
	var set struct {
		Keys []struct {
			Kid string `json:"kid"`
		} `json:"keys"`
	}
	if res.StatusCode != http.StatusOK || json.NewDecoder(io.LimitReader(res.Body, 1<<20)).Decode(&set) != nil || len(set.Keys) == 0 {
		return nil
	}
	for _, k := range set.Keys {
		if k.Kid == dev.KeyID() {
			return nil
		}
	}
	return fmt.Errorf("token: the server at %s signs with another key than %s, so it would reject this token; "+
		"point SWITCHBOARD_DATA_DIR or --data-dir at that server's data directory", base, dev.KeyPath())
}

// serverURL is where a client on this machine reaches a server listening on addr ("" for
// port 0, which no one can reach).
func serverURL(addr string) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil || port == "0" || port == "" {
		return ""
	}
	switch host {
	case "", "0.0.0.0":
		host = "127.0.0.1"
	case "::":
		host = "::1"
	}
	return "http://" + net.JoinHostPort(host, port)
}
