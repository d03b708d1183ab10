//go:build !linux

package lab

import "syscall"

// sysProcAttr puts a child in its own process group.
func sysProcAttr() *syscall.SysProcAttr { return &syscall.SysProcAttr{Setpgid: true} }

// unmountUnder does nothing: only Linux leaves snapshotter mounts behind.
func unmountUnder(string) error { return nil }
