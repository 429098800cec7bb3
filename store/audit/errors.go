package audit

import "errors"

var (
	// ErrEntriesLost: Close could not write every entry it held, because the database refused
	// some of them or Close's context ended first. The error says how many and why.
	ErrEntriesLost = errors.New("audit entries lost")

	// errAbandoned: the Writer gave up a write because Close's context ended.
	errAbandoned = errors.New("abandoned: the shutdown deadline passed")
	// errBuild: the INSERT could not be built from the batch (bun refused a value).
	errBuild = errors.New("build insert")
)
