package registry

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"

	"github.com/google/go-containerregistry/pkg/authn"
)

// dockerHub is the canonical host of Docker Hub credentials; dockerHubAliases all name it.
const dockerHub = "index.docker.io"

var dockerHubAliases = map[string]bool{
	"index.docker.io":         true,
	"docker.io":               true,
	"registry-1.docker.io":    true,
	"registry.hub.docker.com": true,
}

// DockerConfig holds registry credentials read from a Docker config file (the
// .dockerconfigjson of a kubernetes.io/dockerconfigjson Secret, or ~/.docker/config.json). It
// implements authn.Keychain, so it can be Config.Auth. It is immutable and safe for concurrent
// use. Its String method names the file, never a secret.
type DockerConfig struct {
	path  string
	auths map[string]authn.AuthConfig // canonical host -> credentials
}

var _ authn.Keychain = (*DockerConfig)(nil)

// dockerConfigEntry is one value of the "auths" object.
type dockerConfigEntry struct {
	Auth          string `json:"auth"`
	Username      string `json:"username"`
	Password      string `json:"password"`
	IdentityToken string `json:"identitytoken"`
	RegistryToken string `json:"registrytoken"`
}

// LoadDockerConfig reads a Docker config file: {"auths": {"<host>": {...}}}, where an entry
// holds "auth" (base64 of "user:password", which wins over separate fields as in the Docker
// CLI), "username" and "password", "identitytoken" (an OAuth refresh token) or "registrytoken"
// (a bearer token sent as is). Keys may be a host, a host:port or a URL ("https://host/v1/");
// Docker Hub's names (index.docker.io, docker.io, registry-1.docker.io,
// registry.hub.docker.com, https://index.docker.io/v1/) are one registry. Credential helpers
// (credsStore, credHelpers) are not supported and ignored.
//
// Errors name the file and the entry, never a secret.
func LoadDockerConfig(path string) (*DockerConfig, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("load dockerconfig: %w", err)
	}
	return parseDockerConfig(path, data)
}

// parseDockerConfig parses the content of a Docker config file; path is for messages.
func parseDockerConfig(path string, data []byte) (*DockerConfig, error) {
	var file struct {
		Auths *map[string]json.RawMessage `json:"auths"`
	}
	if err := json.Unmarshal(data, &file); err != nil {
		return nil, fmt.Errorf("dockerconfig %s: %s", path, jsonProblem(err))
	}
	if file.Auths == nil {
		return nil, fmt.Errorf("dockerconfig %s: no \"auths\" object", path)
	}
	d := &DockerConfig{path: path, auths: make(map[string]authn.AuthConfig, len(*file.Auths))}
	keyOf := make(map[string]string, len(*file.Auths)) // canonical host -> key it came from
	keys := make([]string, 0, len(*file.Auths))
	for k := range *file.Auths {
		keys = append(keys, k)
	}
	sort.Strings(keys) // deterministic conflict messages
	for _, key := range keys {
		cfg, err := parseEntry((*file.Auths)[key])
		if err != nil {
			return nil, fmt.Errorf("dockerconfig %s: auths[%q]: %w", path, key, err)
		}
		host := canonicalHost(key)
		if host == "" {
			return nil, fmt.Errorf("dockerconfig %s: auths[%q]: no registry host in the key", path, key)
		}
		if prev, ok := keyOf[host]; ok {
			if d.auths[host] != cfg {
				return nil, fmt.Errorf("dockerconfig %s: auths[%q] and auths[%q] both name registry %s with different credentials", path, prev, key, host)
			}
			continue
		}
		keyOf[host] = key
		d.auths[host] = cfg
	}
	return d, nil
}

// parseEntry decodes and checks one "auths" entry.
func parseEntry(raw json.RawMessage) (authn.AuthConfig, error) {
	var e dockerConfigEntry
	if err := json.Unmarshal(raw, &e); err != nil {
		return authn.AuthConfig{}, errors.New(jsonProblem(err))
	}
	cfg := authn.AuthConfig{
		Username:      e.Username,
		Password:      e.Password,
		IdentityToken: e.IdentityToken,
		RegistryToken: e.RegistryToken,
	}
	if e.Auth != "" {
		dec, err := base64.StdEncoding.DecodeString(strings.TrimSpace(e.Auth))
		if err != nil {
			if dec, err = base64.RawStdEncoding.DecodeString(strings.TrimSpace(e.Auth)); err != nil {
				return authn.AuthConfig{}, errors.New(`"auth" is not valid base64`)
			}
		}
		user, pass, ok := strings.Cut(string(dec), ":")
		if !ok {
			return authn.AuthConfig{}, errors.New(`decoded "auth" has no ':' between username and password`)
		}
		cfg.Username, cfg.Password = user, pass
	}
	if cfg.Username == "" && cfg.Password != "" {
		return authn.AuthConfig{}, errors.New("password without a username")
	}
	if cfg.Username == "" && cfg.IdentityToken == "" && cfg.RegistryToken == "" {
		return authn.AuthConfig{}, errors.New(`no credentials: want "auth", "username" and "password", "identitytoken" or "registrytoken"`)
	}
	return cfg, nil
}

// jsonProblem describes a JSON decoding error without quoting the input, which may hold a
// secret.
func jsonProblem(err error) string {
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.As(err, &syn):
		return fmt.Sprintf("not valid JSON (syntax error at byte %d)", syn.Offset)
	case errors.As(err, &typ):
		field := typ.Field
		if field == "" {
			field = "value"
		}
		return fmt.Sprintf("%s: want a JSON %s, got %s", field, jsonKind(typ.Type.Kind().String()), typ.Value)
	}
	return "not valid JSON"
}

// jsonKind names a Go kind the way a config author thinks of JSON.
func jsonKind(kind string) string {
	switch kind {
	case "struct", "map":
		return "object"
	case "slice", "array":
		return "array"
	}
	return kind
}

// canonicalHost reduces a config key or a registry name to a lower-case host[:port], with
// Docker Hub's aliases mapped to one name, as the Docker CLI does: a scheme and any path are
// dropped ("https://index.docker.io/v1/" is index.docker.io).
func canonicalHost(key string) string {
	h := strings.TrimSpace(key)
	if _, rest, ok := strings.Cut(h, "://"); ok {
		h = rest
	}
	h, _, _ = strings.Cut(h, "/")
	h = strings.ToLower(h)
	if dockerHubAliases[h] {
		return dockerHub
	}
	return h
}

// Resolve implements authn.Keychain: the credentials for target's registry, or
// authn.Anonymous when the file has none. It never fails.
func (d *DockerConfig) Resolve(target authn.Resource) (authn.Authenticator, error) {
	cfg, ok := d.Lookup(target.RegistryStr())
	if !ok {
		return authn.Anonymous, nil
	}
	return authn.FromConfig(cfg), nil
}

// Lookup returns the credentials for a registry host ("ghcr.io", "127.0.0.1:5000", any Docker
// Hub alias), for callers that pass credentials on themselves (a CRI PullImage AuthConfig).
func (d *DockerConfig) Lookup(host string) (authn.AuthConfig, bool) {
	cfg, ok := d.auths[canonicalHost(host)]
	return cfg, ok
}

// String names the file and its registries, never a secret, so a DockerConfig can be logged.
func (d *DockerConfig) String() string {
	hosts := make([]string, 0, len(d.auths))
	for h := range d.auths {
		hosts = append(hosts, h)
	}
	sort.Strings(hosts)
	return fmt.Sprintf("dockerconfig %s [%s]", d.path, strings.Join(hosts, " "))
}

// GoString is String, so %#v does not print the credentials either.
func (d *DockerConfig) GoString() string { return d.String() }
