package agent

import (
	"fmt"
	"syscall"

	"github.com/cachemachine/cachemachine/cri"
	"github.com/cachemachine/cachemachine/image"
)

// statfs is the real StatFS.
func statfs(path string) (total, avail uint64, err error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(path, &st); err != nil {
		return 0, 0, fmt.Errorf("statfs %s: %w", path, err)
	}
	return st.Blocks * uint64(st.Bsize), st.Bavail * uint64(st.Bsize), nil
}

// measureDisk combines the runtime's image filesystem usage with statfs of its mountpoint.
// In a pod the image filesystem is usually not mounted, so the state dir (a hostPath on the
// same node disk in the standard deployment) is measured instead.
func (a *Agent) measureDisk(fs []cri.FsUsage) Disk {
	var d Disk
	paths := []string{}
	if len(fs) > 0 {
		d.UsedBytes = fs[0].UsedBytes
		if fs[0].Mountpoint != "" {
			paths = append(paths, fs[0].Mountpoint)
		}
	}
	if a.cfg.StateDir != "" {
		paths = append(paths, a.cfg.StateDir)
	}
	for _, p := range paths {
		total, avail, err := a.statfs(p)
		if err != nil || total == 0 {
			continue
		}
		d.CapacityBytes, d.FreeBytes, d.Path = total, avail, p
		// Other users of the disk count against it too, but the runtime's own usage may
		// be fresher than the kernel's accounting right after a pull: take the smaller.
		if d.UsedBytes < total {
			d.FreeBytes = min(avail, total-d.UsedBytes)
		} else {
			d.FreeBytes = 0
		}
		break
	}
	return d
}

// sizeGuess is the space a pull of d may take: its size when the source knows it, else the
// largest image seen on this node.
func (a *Agent) sizeGuess(d image.Image) uint64 {
	if d.Size > 0 {
		return d.Size
	}
	return a.largest
}

// diskGuardLocked returns why d must not be pulled now, or "". A pull is held when the space
// it needs, plus what pulls in flight reserved, would leave less than MinFreeDiskPercent of
// the image filesystem free. Without a measurement the guard cannot judge and lets pulls
// run. Callers hold a.mu.
func (a *Agent) diskGuardLocked(d image.Image, disk Disk) string {
	if a.cfg.MinFreeDiskPercent <= 0 || disk.CapacityBytes == 0 {
		return ""
	}
	var reserved uint64
	for _, r := range a.reserved {
		reserved += r
	}
	need := a.sizeGuess(d)
	keep := uint64(float64(disk.CapacityBytes) * a.cfg.MinFreeDiskPercent / 100)
	if disk.FreeBytes >= reserved+need+keep {
		return ""
	}
	return fmt.Sprintf("insufficient disk: pull needs %s, %s free of %s (%s reserved by pulls in flight), %g%% must stay free",
		image.FormatSize(need), image.FormatSize(disk.FreeBytes), image.FormatSize(disk.CapacityBytes), image.FormatSize(reserved), a.cfg.MinFreeDiskPercent)
}
