// Package usage marks errors caused by the command line or a configuration
// file. memberd exits with code 2 on them (1 on every other error), so the
// packages that check a configuration (internal/appliance, internal/relayd)
// return them and the command line needs to know no more.
package usage

import "fmt"

// Error marks an error caused by the command line or a config file.
type Error struct{ Err error }

func (e *Error) Error() string { return e.Err.Error() }
func (e *Error) Unwrap() error { return e.Err }

// Errorf returns an Error with a formatted message.
func Errorf(format string, args ...any) error {
	return &Error{Err: fmt.Errorf(format, args...)}
}
