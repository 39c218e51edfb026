package main

import (
	"errors"
	"os"
	"syscall"
)

// exitError is an error that decides the process's exit code.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

// ExitCode is the process exit code; it also satisfies cli.ExitCoder.
func (e *exitError) ExitCode() int { return e.code }

// The ways pgtrace ends other than success (0) and plain failure (1).
var (
	// errSigInt: SIGINT received (Ctrl-C); 128+2 as shells report it, so
	// that a script sees it was interrupted.
	errSigInt = &exitError{code: 130, err: errors.New("SIGINT signal received")}
	// errSigTerm: SIGTERM received. It is how systemd, Kubernetes and
	// docker stop a service, and a graceful stop is a success: exit 0.
	// systemd counts 143 as a failure (unless SuccessExitStatus=143), and
	// so would a restart policy or an alert on failed containers.
	errSigTerm = &exitError{code: 0, err: errors.New("SIGTERM signal received")}
)

// usageError marks err as a usage error (bad flag, bad value, stray
// argument): exit code 2.
func usageError(err error) error { return &exitError{code: 2, err: err} }

// signalError is the exit error for a termination signal.
func signalError(sig os.Signal) error {
	if sig == syscall.SIGINT {
		return errSigInt
	}
	return errSigTerm
}

// isSignal reports whether err is only the record of a termination signal,
// which is how pgtrace is meant to stop and needs no error message.
func isSignal(err error) bool { return err == errSigInt || err == errSigTerm }

// exitCode maps the error run returned to the process exit code.
func exitCode(err error) int {
	if err == nil {
		return 0
	}
	var ee *exitError
	if errors.As(err, &ee) {
		if ee.code == 0 && err != error(ee) {
			return 1 // a clean stop, but something else failed with it
		}
		return ee.code
	}
	return 1
}
