package registry

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"maps"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"

	"github.com/cachemachine/cachemachine/cri"
	"github.com/cachemachine/cachemachine/image"
)

// dockerHub is the canonical host of Docker Hub credentials; dockerHubAliases all name it.
const dockerHub = "index.docker.io"

var dockerHubAliases = map[string]bool{
	"index.docker.io":         true,
	"docker.io":               true,
	"registry-1.docker.io":    true,
	"registry.hub.docker.com": true,
}

// ReloadInterval is the least time between two reads of a DockerConfig's file.
const ReloadInterval = time.Second

// DockerConfig holds registry credentials read from a Docker config file (the
// .dockerconfigjson of a kubernetes.io/dockerconfigjson Secret, or ~/.docker/config.json). It
// is the one source of registry credentials: an authn.Keychain for listing registries (it can
// be Config.Auth) and, through AuthFor, the pull credentials handed to the CRI runtime, with
// the same host matching for both.
//
// The file is read again when it is used (Resolve, Lookup, AuthFor, Generation) and at least
// ReloadInterval has passed since the last read; its content is compared by hash, so a rewrite
// with the same bytes changes nothing. The path is opened anew on every read, so a Secret
// volume's atomic swap of its "..data" symlink is seen. A read that fails (a missing file, a
// malformed one) keeps the last good credentials in force: the failure is logged once per
// distinct error and returned by Err until a good read. DockerConfig is safe for concurrent
// use. Its String method names the file, never a secret.
type DockerConfig struct {
	path     string
	logger   *slog.Logger
	interval time.Duration // least time between reads; ReloadInterval, tests shorten it

	mu       sync.Mutex                  // guards the fields below
	auths    map[string]authn.AuthConfig // canonical host -> credentials, the last good content
	sum      [sha256.Size]byte           // hash of the content auths came from
	gen      uint64                      // +1 each time auths is replaced
	readAt   time.Time                   // when the file was last read, good or bad
	reported string                      // the failure last logged, so each is logged once
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
// (a bearer token sent as is). An entry with none of these (`{}`, or only "email", as the
// Docker CLI writes next to a credsStore) is skipped. Keys may be a host, a host:port or a URL
// ("https://host/v1/", "http://host:5000/v2/"), in any case; Docker Hub's names
// (index.docker.io, docker.io, registry-1.docker.io, registry.hub.docker.com,
// https://index.docker.io/v1/) are one registry. Credential helpers (credsStore, credHelpers)
// are not supported and ignored.
//
// A missing or malformed file is an error naming the file and the entry, never a secret.
// logger (nil: none) receives the outcome of later re-reads.
func LoadDockerConfig(path string, logger *slog.Logger) (*DockerConfig, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	data, err := readDockerConfig(path)
	if err != nil {
		return nil, err
	}
	auths, err := parseDockerConfig(path, data)
	if err != nil {
		return nil, err
	}
	return &DockerConfig{
		path: path, logger: logger, interval: ReloadInterval,
		auths: auths, sum: sha256.Sum256(data), readAt: time.Now(),
	}, nil
}

// readDockerConfig reads the file; its errors name the path once.
func readDockerConfig(path string) ([]byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		var pe *fs.PathError
		if errors.As(err, &pe) {
			err = pe.Err // keeps errors.Is(err, fs.ErrNotExist) and drops the repeated path
		}
		return nil, fmt.Errorf("dockerconfig %s: %w", path, err)
	}
	return data, nil
}

// current returns the credentials in force and their generation, reading the file again
// first when it is due.
func (d *DockerConfig) current() (map[string]authn.AuthConfig, uint64) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.reload()
	return d.auths, d.gen
}

// reload reads the file again when it is due. The caller holds d.mu.
func (d *DockerConfig) reload() {
	now := time.Now()
	if now.Sub(d.readAt) < d.interval {
		return
	}
	d.readAt = now
	data, err := readDockerConfig(d.path)
	sum := sha256.Sum256(data)
	if err == nil && sum == d.sum {
		d.reported = ""
		return
	}
	var auths map[string]authn.AuthConfig
	if err == nil {
		auths, err = parseDockerConfig(d.path, data)
	}
	if err != nil {
		if msg := err.Error(); msg != d.reported {
			d.reported = msg
			d.logger.Warn("dockerconfig re-read failed, keeping the last good credentials", "err", err)
		}
		return
	}
	d.sum, d.reported = sum, ""
	if maps.Equal(auths, d.auths) {
		return // reformatted, same credentials: connections and tokens stay good
	}
	d.auths = auths
	d.gen++
	d.logger.Info("dockerconfig changed, credentials reloaded", "file", d.path, "registries", hostList(auths))
}

// Generation counts the changes of the credentials in force: it starts at 0 and grows by one
// each time a re-read of the file gives new credentials. A holder of connections or tokens
// obtained with the credentials (the Lister's transports) starts over when it changes. It
// reads the file again when due, as every use does.
func (d *DockerConfig) Generation() uint64 {
	_, gen := d.current()
	return gen
}

// parseDockerConfig parses the content of a Docker config file into credentials by canonical
// host; path is for messages.
func parseDockerConfig(path string, data []byte) (map[string]authn.AuthConfig, error) {
	var file struct {
		Auths *map[string]json.RawMessage `json:"auths"`
	}
	if err := json.Unmarshal(data, &file); err != nil {
		return nil, fmt.Errorf("dockerconfig %s: %s", path, jsonProblem(err))
	}
	if file.Auths == nil {
		return nil, fmt.Errorf("dockerconfig %s: no \"auths\" object", path)
	}
	auths := make(map[string]authn.AuthConfig, len(*file.Auths))
	keyOf := make(map[string]string, len(*file.Auths)) // canonical host -> key it came from
	keys := make([]string, 0, len(*file.Auths))
	for k := range *file.Auths {
		keys = append(keys, k)
	}
	sort.Strings(keys) // deterministic conflict messages
	for _, key := range keys {
		cfg, ok, err := parseEntry((*file.Auths)[key])
		if err != nil {
			return nil, fmt.Errorf("dockerconfig %s: auths[%q]: %w", path, key, err)
		}
		if !ok {
			continue
		}
		host := canonicalHost(key)
		if host == "" {
			return nil, fmt.Errorf("dockerconfig %s: auths[%q]: no registry host in the key", path, key)
		}
		if prev, ok := keyOf[host]; ok {
			if auths[host] != cfg {
				return nil, fmt.Errorf("dockerconfig %s: auths[%q] and auths[%q] both name registry %s with different credentials", path, prev, key, host)
			}
			continue
		}
		keyOf[host] = key
		auths[host] = cfg
	}
	return auths, nil
}

// parseEntry decodes and checks one "auths" entry; ok is false for an entry without
// credentials, which is skipped.
func parseEntry(raw json.RawMessage) (cfg authn.AuthConfig, ok bool, err error) {
	var e dockerConfigEntry
	if err := json.Unmarshal(raw, &e); err != nil {
		return authn.AuthConfig{}, false, errors.New(jsonProblem(err))
	}
	cfg = authn.AuthConfig{
		Username:      e.Username,
		Password:      e.Password,
		IdentityToken: e.IdentityToken,
		RegistryToken: e.RegistryToken,
	}
	if auth := strings.TrimSpace(e.Auth); auth != "" {
		dec, err := base64.StdEncoding.DecodeString(auth)
		if err != nil {
			if dec, err = base64.RawStdEncoding.DecodeString(auth); err != nil {
				return authn.AuthConfig{}, false, errors.New(`"auth" is not valid base64`)
			}
		}
		user, pass, found := strings.Cut(string(dec), ":")
		if !found {
			return authn.AuthConfig{}, false, errors.New(`decoded "auth" has no ':' between username and password`)
		}
		cfg.Username, cfg.Password = user, pass
	}
	if cfg == (authn.AuthConfig{}) {
		return cfg, false, nil
	}
	if cfg.Username == "" && cfg.Password != "" {
		return authn.AuthConfig{}, false, errors.New("password without a username")
	}
	return cfg, true, nil
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
		// typ.Value is the offending value's kind, but for a number it carries the number
		// itself, which may be a secret: name the kinds only.
		got, _, _ := strings.Cut(typ.Value, " ")
		return fmt.Sprintf("%s: want a JSON %s, got %s", field, jsonKind(typ.Type.Kind().String()), got)
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
// Hub alias).
func (d *DockerConfig) Lookup(host string) (authn.AuthConfig, bool) {
	auths, _ := d.current()
	cfg, ok := auths[canonicalHost(host)]
	return cfg, ok
}

// AuthFor returns the credentials to pull ref (a full image reference such as
// "ghcr.io/lsst/lab:w_2024_01", or a Docker Hub short name) with, looked up by the host of
// image.ParseRef exactly as Resolve looks up a registry, or nil when the file has none or has
// only a token for it (a CRI pull passes a username and password). It implements the agent's
// Credentials; its errors (an invalid reference) never hold a secret.
func (d *DockerConfig) AuthFor(_ context.Context, ref string) (*cri.Auth, error) {
	r, err := image.ParseRef(ref)
	if err != nil {
		return nil, fmt.Errorf("credentials for %q: %w", ref, err)
	}
	cfg, ok := d.Lookup(r.Registry())
	if !ok || cfg.Username == "" {
		return nil, nil
	}
	return &cri.Auth{Username: cfg.Username, Password: cfg.Password}, nil
}

// String names the file and its registries, never a secret, so a DockerConfig can be logged.
// It does not read the file.
func (d *DockerConfig) String() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return fmt.Sprintf("dockerconfig %s [%s]", d.path, hostList(d.auths))
}

// GoString is String, so %#v does not print the credentials either.
func (d *DockerConfig) GoString() string { return d.String() }

// hostList is the sorted, space-separated registries of auths.
func hostList(auths map[string]authn.AuthConfig) string {
	hosts := make([]string, 0, len(auths))
	for h := range auths {
		hosts = append(hosts, h)
	}
	sort.Strings(hosts)
	return strings.Join(hosts, " ")
}
