package lab

// UnmountUnder lazily unmounts every mount point at or below dir, deepest first (nothing
// outside Linux): for other harnesses that leave mounts, such as the Kubernetes lab's.
func UnmountUnder(dir string) error { return unmountUnder(dir) }
