//go:build !linux

package main

import (
	"runtime"
	"syscall"
	"time"
)

type cpuSample struct {
	at   time.Time
	self time.Duration
}

func sampleCPU() cpuSample {
	s := cpuSample{at: time.Now()}
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) == nil {
		s.self = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	return s
}

func (s cpuSample) since() cpuUse {
	wall := time.Since(s.at)
	if wall <= 0 {
		return cpuUse{}
	}
	now := sampleCPU()
	return cpuUse{self: float64(now.self-s.self) / float64(wall) / float64(runtime.NumCPU())}
}
