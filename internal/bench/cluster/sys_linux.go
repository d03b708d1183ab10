package main

import (
	"os"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// cpuSample is this process's CPU time and the machine's, at one moment.
type cpuSample struct {
	at         time.Time
	self       time.Duration // user + system time of this process (and waited-for children)
	busy, all  uint64        // /proc/stat jiffies: non-idle, total
	haveSystem bool
}

func sampleCPU() cpuSample {
	s := cpuSample{at: time.Now()}
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) == nil {
		s.self = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	if b, err := os.ReadFile("/proc/stat"); err == nil {
		line, _, _ := strings.Cut(string(b), "\n")
		f := strings.Fields(line)
		if len(f) > 5 && f[0] == "cpu" {
			for i, v := range f[1:] {
				n, _ := strconv.ParseUint(v, 10, 64)
				s.all += n
				if i != 3 && i != 4 { // idle, iowait
					s.busy += n
				}
			}
			s.haveSystem = true
		}
	}
	return s
}

// busy returns the CPU use since s: this process's and the rest of the machine's, as a
// fraction of all cores.
func (s cpuSample) since() cpuUse {
	now := sampleCPU()
	wall := now.at.Sub(s.at)
	if wall <= 0 {
		return cpuUse{}
	}
	u := cpuUse{self: float64(now.self-s.self) / float64(wall) / float64(runtime.NumCPU())}
	if s.haveSystem && now.all > s.all {
		u.others = max(0, float64(now.busy-s.busy)/float64(now.all-s.all)-u.self)
	}
	return u
}
