package main

import "syscall"

// sysProcAttr puts an agent in its own process group, so Ctrl-C at the terminal reaches only
// the demo, which then stops the agents in order; and kills the agent if the demo dies.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}
