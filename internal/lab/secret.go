package lab

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
)

// DockerconfigJSON is a .dockerconfigjson granting user and password on registry (a host,
// host:port or URL key).
func DockerconfigJSON(registry, user, password string) []byte {
	auth := base64.StdEncoding.EncodeToString([]byte(user + ":" + password))
	b, _ := json.Marshal(map[string]any{"auths": map[string]any{registry: map[string]string{"auth": auth}}}) // cannot fail
	return b
}

// MountSecret writes version n (1, 2, …) of a Secret volume in dir as the kubelet does: the
// files in a new timestamped directory, an atomic swap of the "..data" symlink to it, then
// removal of the previous version. Point the consumer at dir/..data/NAME, or at a symlink
// dir/NAME -> ..data/NAME as the kubelet makes.
func MountSecret(dir string, n int, files map[string][]byte) error {
	version := fmt.Sprintf("..2024_01_01_00_00_%02d.000", n)
	if err := os.Mkdir(filepath.Join(dir, version), 0o755); err != nil {
		return fmt.Errorf("mount secret: %w", err)
	}
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(dir, version, name), body, 0o644); err != nil {
			return fmt.Errorf("mount secret: %w", err)
		}
	}
	tmp := filepath.Join(dir, "..data_tmp")
	if err := os.Symlink(version, tmp); err != nil {
		return fmt.Errorf("mount secret: %w", err)
	}
	old, _ := os.Readlink(filepath.Join(dir, "..data"))
	if err := os.Rename(tmp, filepath.Join(dir, "..data")); err != nil {
		return fmt.Errorf("mount secret: %w", err)
	}
	if old != "" {
		if err := os.RemoveAll(filepath.Join(dir, old)); err != nil {
			return fmt.Errorf("mount secret: %w", err)
		}
	}
	return nil
}
