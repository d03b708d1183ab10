package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cachemachine/cachemachine/internal/lab"
	"github.com/cachemachine/cachemachine/status"
)

// The disk floor: containerd's root on a small tmpfs whose free space the scenario controls.
const (
	diskSizeMB   = 64
	diskFloorPct = 70 // min_free_disk_percent: 44.8 MiB of 64 must stay free
	diskBigMB    = 24 // would leave about 40 MiB free: held
	diskSmallMB  = 1
	diskObserve  = 10 * time.Second // how long the held pull is watched
)

func diskFloor() group {
	row := newCheck(fmt.Sprintf("disk floor: containerd root on a %d MiB tmpfs, min_free_disk_percent %d", diskSizeMB, diskFloorPct),
		fmt.Sprintf("the %d MiB image is held with its size in the reason and never pulled; the %d MiB image is cached; free space never below %d %%", diskBigMB, diskSmallMB, diskFloorPct))
	return group{rows: []*check{row}, run: func(ctx context.Context, e *env) error {
		big, err := e.push(ctx, "faults/disk", "w_2024_10", diskBigMB, 1)
		if err != nil {
			return err
		}
		small, err := e.push(ctx, "faults/disk", "w_2024_11", diskSmallMB, 1)
		if err != nil {
			return err
		}
		mnt := filepath.Join(e.dir, "tmpfs")
		if err := os.Mkdir(mnt, 0o700); err != nil {
			return err
		}
		if err := unix.Mount("tmpfs", mnt, "tmpfs", 0, fmt.Sprintf("size=%dm,mode=0700", diskSizeMB)); err != nil {
			return fmt.Errorf("mount a tmpfs for containerd's root: %w", err)
		}
		defer func() {
			if err := unix.Unmount(mnt, unix.MNT_DETACH); err != nil {
				progress("unmount %s: %v", mnt, err)
			}
		}()
		n, err := e.newNode(ctx, "disk", filepath.Join(mnt, "cd"))
		if err != nil {
			return err
		}
		defer n.close()
		cfg := e.config(n, simple(big, small))
		cfg.Agent.MinFreeDiskPercent = diskFloorPct
		if err := e.start(ctx, n, cfg); err != nil {
			return err
		}
		row.start()
		w := watch(ctx, 500*time.Millisecond, n, n)
		minFree := 100.0
		var reason string
		err = waitFor(ctx, time.Minute, "the big image held and the small one cached", func() bool {
			minFree = min(minFree, freePercent(mnt))
			reason = heldReason(ctx, n, big)
			return reason != "" && n.cachedAndShown(ctx, small)
		})
		row.expect(err == nil, "%v", err)
		pulledBig := false
		for end := time.Now().Add(diskObserve); time.Now().Before(end) && ctx.Err() == nil; lab.Sleep(ctx, pollEvery) {
			minFree = min(minFree, freePercent(mnt))
			pulledBig = pulledBig || n.holds(ctx, big)
		}
		w.stop()
		row.expect(!pulledBig, "the held image was pulled")
		row.figure("held: %q; least free %.1f %%", shorten(reason, 100), minFree)
		row.expect(strings.Contains(reason, fmt.Sprintf("pull needs %d.0 MiB", diskBigMB)), "held reason %q does not name the image's size", reason)
		row.expect(minFree >= diskFloorPct, "free space fell to %.1f %%", minFree)
		w.report(row, true)
		return nil
	}}
}

// heldReason is the reason n's agent holds img, "" when it does not.
func heldReason(ctx context.Context, n *node, img pushed) string {
	v, err := n.view(ctx)
	if err != nil {
		return ""
	}
	if i := slices.IndexFunc(v.Held, func(h status.Held) bool { return h.ImageURL == img.ref }); i >= 0 {
		return v.Held[i].Reason
	}
	return ""
}

// freePercent is the free space of the filesystem at path, in percent (100 when unknown).
func freePercent(path string) float64 {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil || st.Blocks == 0 {
		return 100
	}
	return 100 * float64(st.Bavail) / float64(st.Blocks)
}
