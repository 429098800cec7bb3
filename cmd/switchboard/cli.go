package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"

	"switchboard/config"
)

// command is one subcommand: its name, what it does, and its usage line.
type command struct {
	name    string
	summary string
	usage   string // after "Usage: "
	about   string // a paragraph under the usage line
	// env lists the variables the command reads; nil means all of them.
	env []string
}

// commands in the order the help lists them.
var commands = []command{
	{name: "serve", summary: "run the server (the default command)",
		usage: "switchboard [serve] [--addr HOST:PORT] [--data-dir DIR]",
		about: "Runs the server until SIGINT or SIGTERM, then shuts down in order. Flags override the\n" +
			"environment variables of the same meaning."},
	{name: "migrate", summary: "apply the database migrations and exit",
		usage: "switchboard migrate [--data-dir DIR]",
		about: "Applies the embedded migrations (serve does it too; safe from several nodes at once).",
		env:   []string{"SWITCHBOARD_DATABASE_URL", "SWITCHBOARD_DATA_DIR", "SWITCHBOARD_DB_CONNECT_TIMEOUT"}},
	{name: "token", summary: "print a token signed by the development issuer",
		usage: "switchboard token --user NAME [--roles r1,r2] [--ttl 1h] [--data-dir DIR]",
		about: "Signs an access token with the development issuer's key in the data directory\n" +
			"(SWITCHBOARD_DATA_DIR or --data-dir), the same key the server uses. It never creates a\n" +
			"key: start the server once first. When a server answers on SWITCHBOARD_ADDR with\n" +
			"another key, it refuses rather than print a token that server would reject.",
		env: []string{"SWITCHBOARD_DATA_DIR", "SWITCHBOARD_ADDR", "SWITCHBOARD_OIDC_ISSUER", "SWITCHBOARD_OIDC_CLIENT_ID"}},
	{name: "config", summary: "print the configuration in effect; --check also reaches its dependencies",
		usage: "switchboard config [--check] [--timeout 5s] [--addr HOST:PORT] [--data-dir DIR]",
		about: "Prints every setting with its value (secrets redacted) and where it came from: default,\n" +
			"environment or flag. With --check it also reaches PostgreSQL, Redis and the identity\n" +
			"provider and exits 1 naming what failed, without serving."},
	{name: "version", summary: "print the version", usage: "switchboard version", env: []string{}},
	{name: "help", summary: "print this help, or a command's (switchboard help token)",
		usage: "switchboard help [command]", env: []string{}},
}

func lookupCommand(name string) (command, bool) {
	for _, c := range commands {
		if c.name == name {
			return c, true
		}
	}
	return command{}, false
}

// writeUsage prints the whole program's help.
func writeUsage(w io.Writer) {
	fmt.Fprintln(w, "Usage: switchboard [command] [flags]")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Switchboard is a real-time hub: WebSocket and HTTP clients, RBAC, broadcasts.")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Commands:")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	for _, c := range commands {
		fmt.Fprintf(tw, "  %s\t%s\n", c.name, c.summary)
	}
	_ = tw.Flush()
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Flags (of serve, which runs when no command is given):")
	writeFlags(w, serveFlags(&cliFlags{}),
		[2]string{"-h, --help", "this help; 'switchboard COMMAND --help' for a command's"},
		[2]string{"--version", "print the version"})
	fmt.Fprintln(w)
	writeEnv(w, nil)
}

// writeCommandUsage prints one command's help: usage, flags and the variables it reads.
func writeCommandUsage(w io.Writer, c command, fs *flag.FlagSet) {
	fmt.Fprintln(w, "Usage:", c.usage)
	if c.about != "" {
		fmt.Fprintln(w)
		fmt.Fprintln(w, c.about)
	}
	if fs != nil && hasFlags(fs) {
		fmt.Fprintln(w)
		fmt.Fprintln(w, "Flags:")
		writeFlags(w, fs)
	}
	if c.env == nil || len(c.env) > 0 {
		fmt.Fprintln(w)
		writeEnv(w, c.env)
	}
}

func hasFlags(fs *flag.FlagSet) bool {
	n := 0
	fs.VisitAll(func(*flag.Flag) { n++ })
	return n > 0
}

// writeFlags lists fs's flags as --name VALUE, their meaning and a non-empty default, then
// the extra rows.
func writeFlags(w io.Writer, fs *flag.FlagSet, extra ...[2]string) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	defer func() {
		for _, row := range extra {
			fmt.Fprintf(tw, "  %s\t%s\n", row[0], row[1])
		}
		_ = tw.Flush()
	}()
	fs.VisitAll(func(f *flag.Flag) {
		value, usage := flag.UnquoteUsage(f)
		name := "--" + f.Name
		if value != "" {
			name += " " + value
		}
		if f.DefValue != "" && f.DefValue != "false" {
			usage += " (default " + f.DefValue + ")"
		}
		fmt.Fprintf(tw, "  %s\t%s\n", name, usage)
	})
}

// writeEnv lists the variables (all when names is nil) with their defaults and meanings, from
// config: the same list README.md's table shows.
func writeEnv(w io.Writer, names []string) {
	fmt.Fprintln(w, "Environment:")
	for _, v := range config.Vars() {
		if names != nil && !slices.Contains(names, v.Name) {
			continue
		}
		fmt.Fprintf(w, "  %s (default: %s)\n      %s\n", v.Name, config.Plain(v.Default), config.Plain(v.Meaning))
	}
}

// cliFlags are the flags that override configuration variables.
type cliFlags struct {
	addr, dataDir string
}

// overrides returns the variables the flags set, for config.Resolve.
func (f *cliFlags) overrides() map[string]string {
	o := map[string]string{}
	if f.addr != "" {
		o["SWITCHBOARD_ADDR"] = f.addr
	}
	if f.dataDir != "" {
		o["SWITCHBOARD_DATA_DIR"] = f.dataDir
	}
	return o
}

func newFlagSet(name string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard) // errors and help are printed by parseFlags, once
	fs.Usage = func() {}
	return fs
}

func addAddrFlag(fs *flag.FlagSet, f *cliFlags) {
	fs.StringVar(&f.addr, "addr", "", "listen on `HOST:PORT` (overrides SWITCHBOARD_ADDR)")
}

func addDataDirFlag(fs *flag.FlagSet, f *cliFlags) {
	fs.StringVar(&f.dataDir, "data-dir", "", "the data `DIR` (overrides SWITCHBOARD_DATA_DIR)")
}

func serveFlags(f *cliFlags) *flag.FlagSet {
	fs := newFlagSet("serve")
	addAddrFlag(fs, f)
	addDataDirFlag(fs, f)
	return fs
}

// parseFlags parses args for c. --help (-h) prints c's usage to stdout and returns
// errHelpShown; a flag it does not know, a bad value or a stray argument is a usageError.
func parseFlags(c command, fs *flag.FlagSet, args []string, stdout io.Writer) error {
	err := fs.Parse(args)
	switch {
	case errors.Is(err, flag.ErrHelp):
		writeCommandUsage(stdout, c, fs)
		return errHelpShown
	case err != nil:
		return usageError{msg: c.name + ": " + flagError(err, args), cmd: c.name}
	case fs.NArg() > 0:
		return usageError{msg: fmt.Sprintf("%s: unexpected argument %q", c.name, fs.Arg(0)), cmd: c.name}
	}
	return nil
}

// flagError rewrites the flag package's "flag provided but not defined: -x" as the user
// typed the flag, and spells the others' flag names with two dashes, as the help does.
func flagError(err error, args []string) string {
	msg := err.Error()
	name, ok := strings.CutPrefix(msg, "flag provided but not defined: -")
	if !ok {
		return strings.NewReplacer(" flag -", " flag --", "argument: -", "argument: --").Replace(msg)
	}
	for _, a := range args {
		if n := strings.TrimLeft(a, "-"); n == name || strings.HasPrefix(n, name+"=") {
			return "unknown flag " + strings.SplitN(a, "=", 2)[0]
		}
	}
	return "unknown flag -" + name
}
