package lab

// UnmountUnder lazily unmounts every mount point at or below dir, deepest first (nothing
// outside Linux): for other harnesses that leave mounts, such as the Kubernetes lab's.
func UnmountUnder(dir string) error { return unmountUnder(dir) }

// MountsUnder lists the mount points at or below dir (its symlinks resolved, the kernel's
// escapes undone), deepest first; none outside Linux.
func MountsUnder(dir string) ([]string, error) { return mountsUnder(dir) }

// LookPath finds a binary in PATH or in the usual system directories (/usr/sbin, which a
// non-root PATH may lack, among them).
func LookPath(name string) (string, error) { return lookPath(name) }
