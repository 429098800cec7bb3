package auth

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"time"

	"golang.org/x/crypto/bcrypt"
)

const (
	// DevUsersFile is the development users file, under the data directory.
	DevUsersFile = "dev-users.json"
	// DefaultDevRefreshTTL applies when DevLogin.RefreshTTL is zero.
	DefaultDevRefreshTTL = 8 * time.Hour
	// DefaultDevSessionMax applies when DevLogin.SessionMax is zero.
	DefaultDevSessionMax = 24 * time.Hour

	maxUsersFileLen = 1 << 20
	// bcrypt ignores everything after 72 bytes; longer passwords are refused rather than
	// silently truncated.
	maxPasswordBytes = 72
	maxUsernameBytes = 255
)

// demoHashCost is the bcrypt cost of the demo users' hashes (tests lower it: bcrypt under
// the race detector takes about a second at the default cost).
var demoHashCost = bcrypt.DefaultCost

// demoUsers are written to a new users file, each with a fresh random password.
var demoUsers = []DevUser{
	{Username: "admin", Roles: []string{"get-authors", "create-author", "update-author", "delete-author", "admin", "broadcast"}},
	{Username: "reader", Roles: []string{"get-authors"}},
}

// DevUser is one entry of the development users file.
type DevUser struct {
	Username     string   `json:"username"`
	PasswordHash string   `json:"password_hash"` // bcrypt ($2a$, $2b$ or $2y$)
	Roles        []string `json:"roles"`
}

// DemoUser is a user created with a new users file, with its password in clear. It exists
// only in OpenDevUsers' answer (for the server to print once); the file keeps the hash.
type DemoUser struct {
	Username string
	Password string
	Roles    []string
}

// DevUsers is the development users file, loaded into memory (restart to pick up edits).
// It is immutable after OpenDevUsers and safe for concurrent use. At most GOMAXPROCS
// password checks run at once, so a login flood queues instead of starving the process.
type DevUsers struct {
	path  string
	users map[string]DevUser
	hash  map[string][]byte
	dummy []byte // compared for unknown users, so they cost as much as known ones
	slots chan struct{}
}

// OpenDevUsers loads <dataDir>/dev-users.json (mode 0600). On first use it creates the
// file with demo users (admin: every role; reader: get-authors) whose random passwords are
// returned once in created; created is nil when the file already existed. Like the
// development key, creation never replaces an existing file.
func OpenDevUsers(dataDir string) (users *DevUsers, created []DemoUser, err error) {
	if dataDir == "" {
		return nil, nil, errors.New("auth: development users need a data directory")
	}
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return nil, nil, fmt.Errorf("auth: create data directory: %w", err)
	}
	path := filepath.Join(dataDir, DevUsersFile)
	data, err := readUsersFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		data, created, err = createUsersFile(path)
	}
	if err != nil {
		return nil, nil, err
	}
	users, err = parseUsers(path, data)
	if err != nil {
		return nil, nil, err
	}
	return users, created, nil
}

func readUsersFile(path string) ([]byte, error) {
	data, err := readPrivateFile(path, maxUsersFileLen)
	if err != nil {
		return nil, err
	}
	if len(data) > maxUsersFileLen {
		return nil, fmt.Errorf("auth: %s is larger than %d bytes", path, maxUsersFileLen)
	}
	return data, nil
}

// createUsersFile writes demo users to a temporary file and links it into place (see
// createDevKey). created is nil when another process created the file first.
func createUsersFile(path string) ([]byte, []DemoUser, error) {
	demo := make([]DemoUser, 0, len(demoUsers))
	entries := make([]DevUser, 0, len(demoUsers))
	for _, u := range demoUsers {
		pw := rand.Text() // 26 base32 characters: 130 bits
		hash, err := bcrypt.GenerateFromPassword([]byte(pw), demoHashCost)
		if err != nil {
			return nil, nil, fmt.Errorf("auth: hash demo password: %w", err)
		}
		demo = append(demo, DemoUser{Username: u.Username, Password: pw, Roles: slices.Clone(u.Roles)})
		entries = append(entries, DevUser{Username: u.Username, PasswordHash: string(hash), Roles: slices.Clone(u.Roles)})
	}
	data, err := json.MarshalIndent(entries, "", "  ")
	if err != nil {
		return nil, nil, fmt.Errorf("auth: encode users file: %w", err)
	}
	data = append(data, '\n')
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, ".dev-users-*.tmp") // mode 0600
	if err != nil {
		return nil, nil, fmt.Errorf("auth: create users file: %w", err)
	}
	defer os.Remove(tmp.Name())
	_, werr := tmp.Write(data)
	if werr == nil {
		werr = tmp.Chmod(0o600)
	}
	if werr == nil {
		werr = tmp.Sync()
	}
	if err := errors.Join(werr, tmp.Close()); err != nil {
		return nil, nil, fmt.Errorf("auth: write users file: %w", err)
	}
	if err := os.Link(tmp.Name(), path); err != nil && !errors.Is(err, fs.ErrExist) {
		if err := os.Rename(tmp.Name(), path); err != nil {
			return nil, nil, fmt.Errorf("auth: install users file: %w", err)
		}
	}
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		_ = d.Close()
	}
	onDisk, err := readUsersFile(path)
	if err != nil {
		return nil, nil, err
	}
	if !bytes.Equal(onDisk, data) {
		return onDisk, nil, nil // another process won: its passwords are not ours to print
	}
	return onDisk, demo, nil
}

func parseUsers(path string, data []byte) (*DevUsers, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields() // a clear-text "password" field is a mistake, not an extension
	var list []DevUser
	if err := dec.Decode(&list); err != nil {
		return nil, fmt.Errorf("auth: %s: %w (expected [{\"username\", \"password_hash\" (bcrypt), \"roles\"}])", path, err)
	}
	if dec.More() {
		return nil, fmt.Errorf("auth: %s: trailing data after the JSON array", path)
	}
	u := &DevUsers{
		path:  path,
		users: make(map[string]DevUser, len(list)),
		hash:  make(map[string][]byte, len(list)),
		slots: make(chan struct{}, max(1, runtime.GOMAXPROCS(0))),
	}
	cost := 0
	var errs []error
	for i, e := range list {
		switch {
		case e.Username == "" || len(e.Username) > maxUsernameBytes:
			errs = append(errs, fmt.Errorf("entry %d: username must be 1..%d bytes", i, maxUsernameBytes))
			continue
		case u.users[e.Username].Username != "":
			errs = append(errs, fmt.Errorf("entry %d: duplicate username %q", i, e.Username))
			continue
		}
		c, err := bcrypt.Cost([]byte(e.PasswordHash))
		if err != nil {
			errs = append(errs, fmt.Errorf("user %q: password_hash is not a bcrypt hash (%v)", e.Username, err))
			continue
		}
		cost = max(cost, c)
		if slices.Contains(e.Roles, "") {
			errs = append(errs, fmt.Errorf("user %q: empty role name", e.Username))
			continue
		}
		e.Roles = slices.Clone(e.Roles)
		if e.Roles == nil {
			e.Roles = []string{}
		}
		u.users[e.Username] = e
		u.hash[e.Username] = []byte(e.PasswordHash)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("auth: %s: %w", path, err)
	}
	// An unknown user is compared against this hash, of the highest cost in the file, so
	// response time does not reveal which usernames exist.
	if cost == 0 {
		cost = demoHashCost
	}
	dummy, err := bcrypt.GenerateFromPassword([]byte(rand.Text()), cost)
	if err != nil {
		return nil, fmt.Errorf("auth: dummy hash: %w", err)
	}
	u.dummy = dummy
	return u, nil
}

// Lookup returns the user named username (a copy), without a password check: for a refresh,
// whose token already proves the login.
func (u *DevUsers) Lookup(username string) (DevUser, bool) {
	user, ok := u.users[username]
	if !ok {
		return DevUser{}, false
	}
	user.Roles = slices.Clone(user.Roles)
	return user, true
}

// Path is the users file.
func (u *DevUsers) Path() string { return u.path }

// Len is the number of users.
func (u *DevUsers) Len() int { return len(u.users) }

// Authenticate checks username and password and returns the user (a copy). Unknown users
// and wrong passwords both cost one bcrypt comparison and wrap ErrBadCredentials. Waiting
// for a comparison slot ends with ctx (ErrIdPUnavailable wrapping ctx's error).
func (u *DevUsers) Authenticate(ctx context.Context, username, password string) (DevUser, error) {
	if username == "" || password == "" || len(username) > maxUsernameBytes || len(password) > maxPasswordBytes {
		return DevUser{}, fail(ErrBadCredentials, "")
	}
	select {
	case u.slots <- struct{}{}:
	case <-ctx.Done():
		return DevUser{}, fmt.Errorf("%w: %w", ErrIdPUnavailable, ctx.Err())
	}
	hash, known := u.hash[username]
	if !known {
		hash = u.dummy
	}
	err := bcrypt.CompareHashAndPassword(hash, []byte(password))
	<-u.slots
	if !known || err != nil {
		return DevUser{}, fail(ErrBadCredentials, "")
	}
	user := u.users[username]
	user.Roles = slices.Clone(user.Roles)
	return user, nil
}

// DevLogin implements Login for the built-in development issuer: it checks the users file
// and mints tokens with the development key, answering like Keycloak's password grant.
//
// The access token is DevIssuer.Mint's (sub and preferred_username = the username, the
// user's roles in realm_access.roles), so it verifies exactly like `switchboard token`'s.
// The refresh token is a JWT signed by the same key with typ "Refresh", aud DevIssuerID and
// no azp (as Keycloak's refresh tokens are JWTs with typ "Refresh"): self-contained, so a
// refresh endpoint redeems it (Refresh) without server-side state, and the Verifier refuses it
// as an access token on two counts (audience, typ).
type DevLogin struct {
	Users    *DevUsers
	Issuer   *DevIssuer
	ClientID string
	// TTL is the access token lifetime. Default DefaultDevTokenTTL.
	TTL time.Duration
	// RefreshTTL is the refresh token lifetime. Default DefaultDevRefreshTTL.
	RefreshTTL time.Duration
	// SessionMax bounds how long refreshing keeps a login alive: no refresh token outlives
	// the password check plus SessionMax. Default DefaultDevSessionMax.
	SessionMax time.Duration
}

// withDefaults checks the configuration and fills in the default lifetimes.
func (l DevLogin) withDefaults() (DevLogin, error) {
	if l.Users == nil || l.Issuer == nil {
		return l, errors.New("auth: DevLogin needs Users and Issuer")
	}
	if l.TTL < 0 || l.RefreshTTL < 0 || l.SessionMax < 0 {
		return l, fmt.Errorf("auth: DevLogin: negative lifetime (%s, refresh %s, session %s)", l.TTL, l.RefreshTTL, l.SessionMax)
	}
	if l.TTL == 0 {
		l.TTL = DefaultDevTokenTTL
	}
	if l.RefreshTTL == 0 {
		l.RefreshTTL = DefaultDevRefreshTTL
	}
	if l.SessionMax == 0 {
		l.SessionMax = DefaultDevSessionMax
	}
	return l, nil
}

// Login implements Login.
func (l DevLogin) Login(ctx context.Context, username, password string) (Tokens, error) {
	l, err := l.withDefaults()
	if err != nil {
		return Tokens{}, err
	}
	user, err := l.Users.Authenticate(ctx, username, password)
	if err != nil {
		return Tokens{}, err
	}
	return l.issue(user, time.Now())
}

// issue mints an access token and a refresh token for user, whose password was checked at
// authTime.
func (l DevLogin) issue(user DevUser, authTime time.Time) (Tokens, error) {
	access, _, err := l.Issuer.Mint(MintParams{
		Subject: user.Username, Username: user.Username, ClientID: l.ClientID, Roles: user.Roles, TTL: l.TTL,
	})
	if err != nil {
		return Tokens{}, err
	}
	refresh, err := l.Issuer.mintRefresh(refreshParams{
		subject: user.Username, clientID: l.ClientID, ttl: l.RefreshTTL, authTime: authTime, sessionMax: l.SessionMax,
	})
	if err != nil {
		return Tokens{}, err
	}
	// Like Keycloak: the configured lifetime (the token's exp is in whole seconds, so it
	// may end up to a second earlier, well within the verifier's leeway).
	return Tokens{AccessToken: access, RefreshToken: refresh, ExpiresIn: int(l.TTL / time.Second)}, nil
}
