//go:build !linux

package lab

import (
	"errors"
	"syscall"
)

// sysProcAttr puts a child in its own process group.
func sysProcAttr() *syscall.SysProcAttr { return &syscall.SysProcAttr{Setpgid: true} }

// unmountUnder does nothing: only Linux leaves snapshotter mounts behind.
func unmountUnder(string) error { return nil }

// mountsUnder finds nothing: only Linux leaves snapshotter mounts behind.
func mountsUnder(string) ([]string, error) { return nil, nil }

// RaiseNoFile is not supported here.
func RaiseNoFile() (uint64, error) {
	return 0, errors.New("raise the open-file limit: not supported on this system")
}
