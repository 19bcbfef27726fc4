package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"
)

// Exit codes, documented in the package comment.
const (
	exitOK          = 0
	exitFailure     = 1
	exitUsage       = 2
	exitInterrupted = 130
)

// env is what a command may touch outside its arguments, so that tests
// run commands in-process.
type env struct {
	stdout, stderr io.Writer
	stdin          io.Reader
	getenv         func(string) string
	// connectTimeout bounds connecting to the server when its URL sets no
	// connect_timeout. Defaults to defaultConnectTimeout; tests shorten it.
	connectTimeout time.Duration
}

// command is one node of the command tree: a group with subcommands, or a
// leaf with flags and a run function.
type command struct {
	name    string
	summary string // one line, for the parent's list
	args    string // the arguments after the flags, for the usage line
	help    string // what it does, and examples
	hidden  bool   // left out of the parent's list (internal commands)

	subcommands []*command
	// flags defines the leaf's flags on fs and returns the function that
	// runs it with the remaining arguments.
	flags func(fs *flag.FlagSet, e *env) func(ctx context.Context, e *env, args []string) error
}

// usageError is a bad command line: exit code 2, and a hint to -h.
type usageError struct {
	path string // "wharf bench drain"
	err  error
}

func (e *usageError) Error() string { return e.path + ": " + e.err.Error() }
func (e *usageError) Unwrap() error { return e.err }

// root is the wharf command tree.
var root = &command{
	name: "wharf",
	help: `wharf is the operators' tool for wharf, the PostgreSQL-backed webhook pipeline.
The server comes from --database-url, or $DATABASE_URL, or
postgres://postgres@127.0.0.1:5432/postgres. Connecting gives up after ` + defaultConnectTimeout.String() + `
unless the URL sets connect_timeout (in seconds, e.g. ?connect_timeout=30).`,
	subcommands: []*command{migrateCommand, queueCommand, pauseCommand, resumeCommand, dlqCommand, logCommand, sendCommand, benchCommand},
}

// run runs the command line args and returns the exit code; errors go to
// e.stderr.
func run(ctx context.Context, args []string, e *env) int {
	err := dispatch(ctx, root, root.name, args, e)
	var usage *usageError
	switch {
	case err == nil:
		return exitOK
	case errors.As(err, &usage):
		fmt.Fprintf(e.stderr, "%s\nRun '%s -h' for usage.\n", err, usage.path)
		return exitUsage
	case ctx.Err() != nil:
		fmt.Fprintf(e.stderr, "wharf: interrupted: %v\n", err)
		return exitInterrupted
	default:
		fmt.Fprintf(e.stderr, "wharf: %v\n", err)
		return exitFailure
	}
}

// dispatch finds the command args name under c and runs it. path is c's
// full name ("wharf bench").
func dispatch(ctx context.Context, c *command, path string, args []string, e *env) error {
	if c.flags != nil {
		return runLeaf(ctx, c, path, args, e)
	}
	if len(args) == 0 {
		return &usageError{path, errors.New("missing command")}
	}
	name := args[0]
	if isHelp(name) {
		if len(args) > 1 { // "wharf help bench drain"
			return dispatch(ctx, c, path, append(args[1:], "-h"), e)
		}
		printGroupHelp(e.stdout, c, path)
		return nil
	}
	i := slices.IndexFunc(c.subcommands, func(s *command) bool { return s.name == name })
	if i < 0 {
		return &usageError{path, fmt.Errorf("unknown command %q", name)}
	}
	return dispatch(ctx, c.subcommands[i], path+" "+name, args[1:], e)
}

func isHelp(arg string) bool {
	return arg == "help" || arg == "-h" || arg == "-help" || arg == "--help"
}

func runLeaf(ctx context.Context, c *command, path string, args []string, e *env) error {
	fs := flag.NewFlagSet(path, flag.ContinueOnError)
	fs.SetOutput(io.Discard) // errors are reported once, by run
	runFn := c.flags(fs, e)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			printLeafHelp(e.stdout, c, path, fs)
			return nil
		}
		return &usageError{path, err}
	}
	if c.args == "" && fs.NArg() > 0 {
		return &usageError{path, fmt.Errorf("unexpected argument %q (flags go before arguments)", fs.Arg(0))}
	}
	// Parsing stops at the first argument: a flag after it would be taken
	// as an argument, unless "--" ended the flags on purpose.
	endedByDashes := fs.NArg() < len(args) && args[len(args)-fs.NArg()-1] == "--"
	if i := slices.IndexFunc(fs.Args(), looksLikeFlag); i >= 0 && !endedByDashes {
		return &usageError{path, fmt.Errorf("flag %q after an argument (flags go before arguments)", fs.Arg(i))}
	}
	return runFn(ctx, e, fs.Args())
}

// looksLikeFlag reports whether a command-line argument has a flag's form.
func looksLikeFlag(arg string) bool { return len(arg) > 1 && arg[0] == '-' }

func printGroupHelp(w io.Writer, c *command, path string) {
	fmt.Fprintf(w, "%s\n\nUsage:\n  %s <command> [flags]\n\nCommands:\n", c.help, path)
	for _, s := range c.subcommands {
		if !s.hidden {
			fmt.Fprintf(w, "  %-10s %s\n", s.name, s.summary)
		}
	}
	fmt.Fprintf(w, "\nRun '%s <command> -h' for a command's flags and examples.\n", path)
}

func printLeafHelp(w io.Writer, c *command, path string, fs *flag.FlagSet) {
	fmt.Fprintf(w, "Usage:\n  %s [flags]%s\n\n%s\n\nFlags:\n", path, c.args, strings.TrimSpace(c.help))
	fs.SetOutput(w)
	fs.PrintDefaults()
	fs.SetOutput(io.Discard)
}
