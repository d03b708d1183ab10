package agent

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/cachemachine/cachemachine/cri"
	"github.com/cachemachine/cachemachine/image"
)

// DockerConfig gives pull credentials from a .dockerconfigjson file (the format of a
// kubernetes.io/dockerconfigjson Secret). The file is read again when it changes, so a
// rotated Secret takes effect without a restart.
type DockerConfig struct {
	path string

	mu    sync.Mutex // guards the fields below
	mtime time.Time
	auths map[string]cri.Auth // by registry host
}

// NewDockerConfig reads path and fails, naming the file, when it is missing or malformed.
func NewDockerConfig(path string) (*DockerConfig, error) {
	c := &DockerConfig{path: path}
	if _, err := c.load(); err != nil {
		return nil, err
	}
	return c, nil
}

// AuthFor returns the credentials for ref's registry host, or nil when the file has none.
func (c *DockerConfig) AuthFor(_ context.Context, ref string) (*cri.Auth, error) {
	auths, err := c.load()
	if err != nil {
		return nil, err
	}
	r, err := image.ParseRef(ref)
	if err != nil {
		return nil, err
	}
	if a, ok := auths[r.Registry()]; ok {
		return &a, nil
	}
	return nil, nil
}

// load returns the credentials, re-reading the file when its modification time changed.
func (c *DockerConfig) load() (map[string]cri.Auth, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	fi, err := os.Stat(c.path)
	if err != nil {
		return nil, fmt.Errorf("dockerconfig %s: %w", c.path, err)
	}
	if c.auths != nil && fi.ModTime().Equal(c.mtime) {
		return c.auths, nil
	}
	b, err := os.ReadFile(c.path)
	if err != nil {
		return nil, fmt.Errorf("dockerconfig %s: %w", c.path, err)
	}
	auths, err := parseDockerConfig(b)
	if err != nil {
		return nil, fmt.Errorf("dockerconfig %s: %w", c.path, err)
	}
	c.auths, c.mtime = auths, fi.ModTime()
	return auths, nil
}

// parseDockerConfig decodes {"auths": {"host": {"username", "password"} | {"auth"}}}. Errors
// name the registry entry but never include credential values.
func parseDockerConfig(b []byte) (map[string]cri.Auth, error) {
	var f struct {
		Auths map[string]struct {
			Username string `json:"username"`
			Password string `json:"password"`
			Auth     string `json:"auth"`
		} `json:"auths"`
	}
	if err := json.Unmarshal(b, &f); err != nil {
		// json errors can quote input; keep only the offset-free description.
		return nil, fmt.Errorf("not valid JSON (want {\"auths\": {...}})")
	}
	out := make(map[string]cri.Auth, len(f.Auths))
	for key, e := range f.Auths {
		a := cri.Auth{Username: e.Username, Password: e.Password}
		if e.Auth != "" {
			dec, err := base64.StdEncoding.DecodeString(e.Auth)
			if err != nil {
				return nil, fmt.Errorf("auths[%q].auth: not base64", key)
			}
			user, pass, ok := strings.Cut(string(dec), ":")
			if !ok {
				return nil, fmt.Errorf("auths[%q].auth: not base64 of user:password", key)
			}
			a = cri.Auth{Username: user, Password: pass}
		}
		if a.Username == "" && a.Password == "" {
			continue
		}
		out[registryHost(key)] = a
	}
	return out, nil
}

// registryHost reduces a dockerconfig key ("https://index.docker.io/v1/", "ghcr.io") to the
// host name containerd stores in references.
func registryHost(key string) string {
	key = strings.TrimPrefix(strings.TrimPrefix(key, "https://"), "http://")
	key, _, _ = strings.Cut(key, "/")
	switch key {
	case "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com":
		// registry.hub.docker.com is kept as is by containerd when it is in the reference;
		// but credentials for Docker Hub are filed under any of these names.
		if key != "registry.hub.docker.com" {
			return "docker.io"
		}
	}
	return key
}
