package main

import "errors"

// usageError is a command line the program does not understand: an unknown command, flag or
// argument. main prints it with a hint to --help and exits 2, as command-line tools do.
type usageError struct {
	msg string
	cmd string // the command whose usage to point at; "" for the program's
}

func (e usageError) Error() string { return e.msg }

// hint points at the usage that would have helped.
func (e usageError) hint() string {
	if e.cmd == "" {
		return "Run 'switchboard --help' for usage."
	}
	return "Run 'switchboard " + e.cmd + " --help' for usage."
}

// errHelpShown ends a command whose --help was printed: nothing else to do, exit 0.
var errHelpShown = errors.New("help shown")

// errCheckFailed: `switchboard config --check` found a dependency it cannot use.
var errCheckFailed = errors.New("configuration check failed")
