// Package redisconn turns SWITCHBOARD_REDIS_URL into a go-redis client: one Redis server, a
// primary watched by Redis Sentinel, or a Redis Cluster. Every Redis-backed part of Switchboard
// (limits, sessions, the bus) takes the client as a redis.UniversalClient and works on all three.
//
// The forms (user and password are optional; each host defaults to its port below):
//
//	redis://[user:password@]host[:6379][/db][?options]                 one server (as before)
//	rediss://…                                                          the same over TLS
//	redis-sentinel://[user:password@]s1[:26379],s2,…[/db]?master_name=m[&sentinel_password=…][&options]
//	redis-cluster://[user:password@]n1[:6379],n2,…[?options]            Redis Cluster (seed nodes)
//	redis://n1,n2,…                                                     also Redis Cluster: two or more hosts
//
// rediss-sentinel:// and rediss-cluster:// use TLS. For Sentinel, user and password are those of
// the primary and its replicas; sentinel_username and sentinel_password, when the sentinels
// want their own. The options are go-redis's URL options (dial_timeout, read_timeout,
// pool_size, …); an unknown one is an error.
//
// Concurrency: Parse is a pure function; a Target is read-only after Parse and may be shared.
package redisconn

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// Kind says what a URL names.
type Kind string

// The kinds of Redis deployment.
const (
	Single   Kind = "single"
	Sentinel Kind = "sentinel"
	Cluster  Kind = "cluster"
)

// ErrInvalidURL wraps every Parse error. Its messages never repeat the URL (it may hold a
// password).
var ErrInvalidURL = errors.New("invalid Redis URL")

// ErrClusterNode: a URL for one server names a node of a Redis Cluster.
var ErrClusterNode = errors.New("this server is a node of a Redis Cluster: name it (and other seed nodes) with redis-cluster://host:port,host2:port")

// Usage is the one-line reminder of the forms, for error messages.
const Usage = "want redis://[user:password@]host:port[/db], " +
	"redis-sentinel://host:26379,host2,…[/db]?master_name=NAME or redis-cluster://host:port,host2,…"

// Target is a parsed URL: its kind, the addresses it names and the go-redis options to reach it.
type Target struct {
	Kind Kind
	// Addrs are the server (Single), the sentinels (Sentinel) or the seed nodes (Cluster).
	Addrs []string
	// Master is the name the sentinels know the primary by (Sentinel only).
	Master string

	single   *redis.Options
	failover *redis.FailoverOptions
	cluster  *redis.ClusterOptions
}

// Parse reads a Redis URL in one of the forms of the package documentation.
func Parse(raw string) (*Target, error) {
	scheme, rest, ok := strings.Cut(raw, "://")
	if !ok {
		return nil, fmt.Errorf("%w: no scheme; %s", ErrInvalidURL, Usage)
	}
	tls := false
	kind := Single
	switch strings.ToLower(scheme) {
	case "redis":
	case "rediss":
		tls = true
	case "redis-sentinel", "redis+sentinel":
		kind = Sentinel
	case "rediss-sentinel", "rediss+sentinel":
		kind, tls = Sentinel, true
	case "redis-cluster", "redis+cluster":
		kind = Cluster
	case "rediss-cluster", "rediss+cluster":
		kind, tls = Cluster, true
	default:
		return nil, fmt.Errorf("%w: scheme %.20q; %s", ErrInvalidURL, scheme, Usage)
	}
	// The host list is split by hand: url.Parse takes "a:1,b:2" as one host and refuses a list
	// of bracketed IPv6 addresses.
	authority, tail := rest, ""
	if i := strings.IndexAny(rest, "/?#"); i >= 0 {
		authority, tail = rest[:i], rest[i:]
	}
	userinfo, hostlist := "", authority
	if i := strings.LastIndex(authority, "@"); i >= 0 {
		userinfo, hostlist = authority[:i+1], authority[i+1:]
	}
	defPort := "6379"
	if kind == Sentinel {
		defPort = "26379"
	}
	var addrs []string
	for _, h := range strings.Split(hostlist, ",") {
		addr, err := hostPort(h, defPort)
		if err != nil {
			return nil, err
		}
		addrs = append(addrs, addr)
	}
	if kind == Single && len(addrs) > 1 {
		kind = Cluster
	}
	base := "redis"
	if tls {
		base = "rediss"
	}
	// go-redis's own parsers read the options; they take the extra addresses as addr=….
	u, err := url.Parse(base + "://" + userinfo + addrs[0] + tail)
	if err != nil {
		var uerr *url.Error
		if errors.As(err, &uerr) {
			err = uerr.Err // url.Error quotes the URL, password included
		}
		return nil, fmt.Errorf("%w: %v", ErrInvalidURL, err)
	}
	if u.Fragment != "" {
		return nil, fmt.Errorf("%w: a fragment (#…) means nothing here", ErrInvalidURL)
	}
	t := &Target{Kind: kind, Addrs: addrs}
	q := u.Query()
	if q.Has("addr") {
		return nil, fmt.Errorf("%w: list the hosts in the URL (host1,host2,…), not as addr=", ErrInvalidURL)
	}
	for _, a := range addrs[1:] {
		q.Add("addr", a)
	}
	switch kind {
	case Single:
		t.single, err = redis.ParseURL(u.String())
	case Cluster:
		if p := strings.Trim(u.Path, "/"); p != "" && p != "0" {
			return nil, fmt.Errorf("%w: Redis Cluster has only database 0, got /%.10s", ErrInvalidURL, p)
		}
		u.Path = ""
		u.RawQuery = q.Encode()
		t.cluster, err = redis.ParseClusterURL(u.String())
	case Sentinel:
		err = t.parseSentinel(u, q)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidURL, cleanErr(err))
	}
	return t, nil
}

// parseSentinel reads a sentinel URL: the user information is the primary's, the sentinels'
// own credentials come as sentinel_username and sentinel_password.
func (t *Target) parseSentinel(u *url.URL, q url.Values) error {
	t.Master = q.Get("master_name")
	if t.Master == "" {
		return errors.New("a sentinel URL needs ?master_name=<the name the sentinels know the primary by>")
	}
	sUser, sPass := q.Get("sentinel_username"), q.Get("sentinel_password")
	q.Del("sentinel_username")
	q.Del("sentinel_password")
	user := u.User
	u.User = nil
	u.RawQuery = q.Encode()
	o, err := redis.ParseFailoverURL(u.String())
	if err != nil {
		return err
	}
	o.SentinelUsername, o.SentinelPassword = sUser, sPass
	if user != nil {
		o.Username = user.Username()
		o.Password, _ = user.Password()
	}
	t.failover = o
	return nil
}

// hostPort checks one host of the list and adds the default port.
func hostPort(h, defPort string) (string, error) {
	if h == "" {
		return "", fmt.Errorf("%w: an empty host in the host list; %s", ErrInvalidURL, Usage)
	}
	host, port := h, defPort
	if strings.HasPrefix(h, "[") || strings.Count(h, ":") == 1 {
		var err error
		if host, port, err = net.SplitHostPort(h); err != nil {
			if !strings.HasSuffix(h, "]") {
				return "", fmt.Errorf("%w: host %.60q: %v", ErrInvalidURL, h, cleanErr(err))
			}
			host, port = strings.Trim(h, "[]"), defPort
		}
	}
	if host == "" || port == "" || strings.ContainsAny(host, "/?#@[] ") {
		return "", fmt.Errorf("%w: host %.60q; %s", ErrInvalidURL, h, Usage)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return "", fmt.Errorf("%w: invalid port %.10q of host %.60q (want 1..65535)", ErrInvalidURL, port, h)
	}
	return net.JoinHostPort(host, port), nil
}

// cleanErr drops the URL that url.Error and net.AddrError messages repeat.
func cleanErr(err error) error {
	var uerr *url.Error
	if errors.As(err, &uerr) {
		return uerr.Err
	}
	return err
}

// ClusterStateReload is how stale a cluster client's slot map may get before a call reads it
// again.
const ClusterStateReload = 2 * time.Second

// Ping checks that c answers: on a Redis Cluster, every primary of its slot map, which it reads
// again when one does not answer (a failover moved its slots), so the next check sees the
// cluster as it is now.
//
// A redis:// URL that names one node of a Redis Cluster works for keys of that node's slots
// only; every other call fails with MOVED (and the limits fail open). Ping says so.
func Ping(ctx context.Context, c redis.UniversalClient) error {
	cc, ok := c.(*redis.ClusterClient)
	if !ok {
		info, err := c.Info(ctx, "cluster").Result()
		if err != nil {
			return err
		}
		if strings.Contains(info, "cluster_enabled:1") {
			return ErrClusterNode
		}
		return nil
	}
	err := cc.ForEachMaster(ctx, func(ctx context.Context, node *redis.Client) error {
		if err := node.Ping(ctx).Err(); err != nil {
			return fmt.Errorf("%s: %w", node.Options().Addr, err)
		}
		return nil
	})
	if err != nil {
		cc.ReloadState(ctx)
	}
	return err
}

// Settings are what Switchboard sets on every client, whatever the URL says.
type Settings struct {
	DialTimeout time.Duration // 0: go-redis's default (5 s)
	// MaxRetries: 0 leaves go-redis's default, -1 disables retries.
	MaxRetries int
}

// NewClient builds the client. Context deadlines are always honoured on the socket
// (ContextTimeoutEnabled), which the callers' per-call timeouts rely on. The caller closes it.
func (t *Target) NewClient(s Settings) redis.UniversalClient {
	switch t.Kind {
	case Sentinel:
		o := *t.failover
		o.ContextTimeoutEnabled = true
		if s.DialTimeout > 0 {
			o.DialTimeout = s.DialTimeout
		}
		if s.MaxRetries != 0 {
			o.MaxRetries = s.MaxRetries
		}
		return redis.NewFailoverClient(&o)
	case Cluster:
		o := *t.cluster
		o.ContextTimeoutEnabled = true
		// go-redis reads the slot map again only on MOVED or after this interval (60 s by
		// default); a primary that died makes its slots' calls fail (limits fail open) until
		// then, so read it often: one CLUSTER SLOTS at most every two seconds, and only while
		// calls are made.
		o.ClusterStateReloadInterval = ClusterStateReload
		if s.DialTimeout > 0 {
			o.DialTimeout = s.DialTimeout
		}
		if s.MaxRetries != 0 {
			o.MaxRetries = s.MaxRetries
		}
		return redis.NewClusterClient(&o)
	default:
		o := *t.single
		o.ContextTimeoutEnabled = true
		if s.DialTimeout > 0 {
			o.DialTimeout = s.DialTimeout
		}
		if s.MaxRetries != 0 {
			o.MaxRetries = s.MaxRetries
		}
		return redis.NewClient(&o)
	}
}

// String describes the target without credentials, for logs and messages: the address of one
// server, "sentinel s1:26379,s2:26379 master NAME" or "cluster n1:6379,n2:6379".
func (t *Target) String() string {
	addrs := strings.Join(t.Addrs, ",")
	switch t.Kind {
	case Sentinel:
		return "sentinel " + addrs + " master " + t.Master
	case Cluster:
		return "cluster " + addrs
	}
	return addrs
}
