// Package config holds Switchboard's typed configuration: defaults, environment overrides and
// validation with messages a user can act on.
//
// It imports no other project package. A Config is a plain value: build it once in main with
// Load, then pass it (or parts of it) down; nothing here is mutated after start.
package config
