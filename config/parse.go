package config

import (
	"fmt"
	"net/netip"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Source says where a setting's value came from.
type Source string

// The sources of a setting, strongest last.
const (
	SourceDefault Source = "default"
	SourceEnv     Source = "environment"
	SourceFlag    Source = "flag"
)

// parser applies environment variables (and command-line overrides, which win) to fields,
// collecting every error instead of stopping at the first, so a user fixes their environment
// in one go. It also remembers every variable it was asked about, where its value came from and
// how to show the field, so the list of variables has one source: Load's calls.
type parser struct {
	getenv    func(string) string
	overrides map[string]string // variable name → value given on the command line
	errs      []error
	bound     []binding
}

// binding is one variable applied to one field.
type binding struct {
	name   string
	source Source
	show   func() string // the field's value, as a user would write it
}

func (p *parser) lookup(name string, show func() string) (string, bool) {
	b := binding{name: name, source: SourceDefault, show: show}
	defer func() { p.bound = append(p.bound, b) }()
	if v, ok := p.overrides[name]; ok {
		b.source = SourceFlag
		return strings.TrimSpace(v), true
	}
	if p.getenv == nil {
		return "", false
	}
	v := strings.TrimSpace(p.getenv(name))
	if v == "" {
		return "", false
	}
	b.source = SourceEnv
	return v, true
}

func (p *parser) fail(name, want, got string) {
	p.errs = append(p.errs, fmt.Errorf("%s: want %s, got %q", name, want, got))
}

func (p *parser) str(name string, dst *string) {
	if v, ok := p.lookup(name, func() string { return *dst }); ok {
		*dst = v
	}
}

func (p *parser) boolean(name string, dst *bool) {
	v, ok := p.lookup(name, func() string { return strconv.FormatBool(*dst) })
	if !ok {
		return
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		p.fail(name, "true or false", v)
		return
	}
	*dst = b
}

func (p *parser) integer(name string, dst *int) {
	if v, ok := p.lookup(name, func() string { return strconv.Itoa(*dst) }); ok {
		n, err := strconv.Atoi(v)
		if err != nil {
			p.fail(name, "a whole number", v)
			return
		}
		*dst = n
	}
}

func (p *parser) int64(name string, dst *int64) {
	if v, ok := p.lookup(name, func() string { return strconv.FormatInt(*dst, 10) }); ok {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			p.fail(name, "a whole number of bytes", v)
			return
		}
		*dst = n
	}
}

func (p *parser) duration(name string, dst *time.Duration) {
	if v, ok := p.lookup(name, func() string { return dst.String() }); ok {
		d, err := time.ParseDuration(v)
		if err != nil {
			p.fail(name, "a duration with a unit such as 500ms, 10s or 1m", v)
			return
		}
		*dst = d
	}
}

func (p *parser) list(name string, dst *[]string) {
	if v, ok := p.lookup(name, func() string { return strings.Join(*dst, ",") }); ok {
		*dst = splitList(v)
	}
}

func (p *parser) prefixes(name string, dst *[]netip.Prefix) {
	v, ok := p.lookup(name, func() string {
		s := make([]string, len(*dst))
		for i, pr := range *dst {
			s[i] = pr.String()
		}
		return strings.Join(s, ",")
	})
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
