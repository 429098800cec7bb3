package config

import (
	"fmt"
	"net/netip"
	"sort"
	"strconv"
	"strings"
	"time"
)

// parser applies environment variables to fields, collecting every error instead of stopping
// at the first, so a user fixes their environment in one go.
type parser struct {
	getenv func(string) string
	errs   []error
}

func (p *parser) lookup(name string) (string, bool) {
	v := strings.TrimSpace(p.getenv(name))
	return v, v != ""
}

func (p *parser) fail(name, want, got string) {
	p.errs = append(p.errs, fmt.Errorf("%s: want %s, got %q", name, want, got))
}

func (p *parser) str(name string, dst *string) {
	if v, ok := p.lookup(name); ok {
		*dst = v
	}
}

func (p *parser) integer(name string, dst *int) {
	if v, ok := p.lookup(name); ok {
		n, err := strconv.Atoi(v)
		if err != nil {
			p.fail(name, "a whole number", v)
			return
		}
		*dst = n
	}
}

func (p *parser) int64(name string, dst *int64) {
	if v, ok := p.lookup(name); ok {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			p.fail(name, "a whole number of bytes", v)
			return
		}
		*dst = n
	}
}

func (p *parser) duration(name string, dst *time.Duration) {
	if v, ok := p.lookup(name); ok {
		d, err := time.ParseDuration(v)
		if err != nil {
			p.fail(name, "a duration with a unit such as 500ms, 10s or 1m", v)
			return
		}
		*dst = d
	}
}

func (p *parser) list(name string, dst *[]string) {
	if v, ok := p.lookup(name); ok {
		*dst = splitList(v)
	}
}

func (p *parser) prefixes(name string, dst *[]netip.Prefix) {
	v, ok := p.lookup(name)
	if !ok {
		return
	}
	var out []netip.Prefix
	for _, s := range splitList(v) {
		if !strings.Contains(s, "/") {
			if a, err := netip.ParseAddr(s); err == nil {
				out = append(out, netip.PrefixFrom(a, a.BitLen()))
				continue
			}
		}
		pr, err := netip.ParsePrefix(s)
		if err != nil {
			p.fail(name, "comma-separated CIDRs such as 10.0.0.0/8,127.0.0.1", s)
			continue
		}
		out = append(out, pr.Masked())
	}
	*dst = out
}

func splitList(v string) []string {
	var out []string
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
