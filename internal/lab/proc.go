package lab

import (
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
)

// Memory is a process's resident memory as /proc/PID/status reports it (Linux).
type Memory struct {
	// RSSKiB is VmRSS: resident now.
	RSSKiB int64
	// PeakKiB is VmHWM: the most that was resident since the process started or since
	// ResetPeakMemory.
	PeakKiB int64
}

// ProcMemory reads the resident memory of process pid.
func ProcMemory(pid int) (Memory, error) {
	rss, err := ProcStatusKiB(pid, "VmRSS")
	if err != nil {
		return Memory{}, err
	}
	peak, err := ProcStatusKiB(pid, "VmHWM")
	return Memory{RSSKiB: rss, PeakKiB: peak}, err
}

// ProcStatusKiB reads one line in kB of /proc/PID/status ("VmRSS", "VmHWM", "RssAnon", …).
func ProcStatusKiB(pid int, field string) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			return strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		}
	}
	return 0, fmt.Errorf("/proc/%d/status: no %s", pid, field)
}

// ResetPeakMemory makes the kernel start process pid's VmHWM afresh from its present RSS
// (clear_refs, Linux 4.0 and later; needs the right to write the process's /proc files), so
// that a peak can be measured for one span of a long-lived process.
func ResetPeakMemory(pid int) error {
	if err := os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", pid), []byte("5"), 0); err != nil {
		return fmt.Errorf("reset peak memory: %w", err)
	}
	return nil
}

// Machine describes this machine for a benchmark's header: "2 cores (CPU model)".
func Machine() string {
	model := runtime.GOARCH
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range strings.Lines(string(b)) {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				model = strings.TrimSpace(v)
				break
			}
		}
	}
	return fmt.Sprintf("%d cores (%s)", runtime.NumCPU(), model)
}
