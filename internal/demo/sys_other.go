//go:build !linux

package main

import "syscall"

// sysProcAttr: the demo needs containerd, so it only runs on Linux; this keeps it compiling.
func sysProcAttr() *syscall.SysProcAttr { return nil }
