package registry

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"testing/synctest"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/stretchr/testify/require"

	"github.com/cachemachine/cachemachine/cri"
	"github.com/cachemachine/cachemachine/image"
	"github.com/cachemachine/cachemachine/internal/lab"
)

// dockerconfigFor is a .dockerconfigjson with one "auth" entry for key.
func dockerconfigFor(key, user, pass string) string {
	return fmt.Sprintf(`{"auths": {%q: {"auth": %q}}}`, key, b64(user+":"+pass))
}

// TestAuthForMatchesHostsAsListingDoes checks that a pull (AuthFor with a reference) and a
// listing (Resolve with go-containerregistry's registry of the same reference) get the same
// credentials, for every way a reference and a config key can name a registry. The first
// cases are those the agent's own parser accepted.
func TestAuthForMatchesHostsAsListingDoes(t *testing.T) {
	t.Parallel()
	dc := mustParse(t, `{"auths": {
		"https://index.docker.io/v1/": {"auth": "`+b64("robot:"+secret)+`"},
		"ghcr.io": {"username": "u", "password": "p"},
		"http://127.0.0.1:5000": {"username": "local", "password": "pw"},
		"http://Reg.Example:5000/v2/": {"username": "ex", "password": "pw2"},
		"token.example": {"identitytoken": "`+secret+`"},
		"quay.io": {}}}`)
	hub := &cri.Auth{Username: "robot", Password: secret}
	tests := []struct {
		ref  string
		want *cri.Auth
	}{
		{ref: "lsstsqre/sciplat-lab:w_2022_40", want: hub},
		{ref: "docker.io/lsstsqre/sciplat-lab:w_2022_40", want: hub},
		{ref: "index.docker.io/lsstsqre/sciplat-lab:w_2022_40", want: hub},
		{ref: "registry-1.docker.io/lsstsqre/sciplat-lab:w_2022_40", want: hub},
		{ref: "registry.hub.docker.com/lsstsqre/sciplat-lab:w_2022_40", want: hub},
		{ref: "ubuntu", want: hub},
		{ref: "ghcr.io/lsst/x:1", want: &cri.Auth{Username: "u", Password: "p"}},
		{ref: "ghcr.io/lsst/x@sha256:" + strings.Repeat("ab", 32), want: &cri.Auth{Username: "u", Password: "p"}},
		{ref: "127.0.0.1:5000/a/b:c", want: &cri.Auth{Username: "local", Password: "pw"}},
		{ref: "127.0.0.1:5001/a/b:c"},
		{ref: "reg.example:5000/a:b", want: &cri.Auth{Username: "ex", Password: "pw2"}},
		{ref: "reg.example/a:b"},
		{ref: "quay.io/a/b:c"},
	}
	for _, tt := range tests {
		t.Run(tt.ref, func(t *testing.T) {
			t.Parallel()
			got, err := dc.AuthFor(t.Context(), tt.ref)
			require.NoError(t, err)
			require.Equal(t, tt.want, got)

			// What a Lister of the same repository sends.
			r, err := name.ParseReference(tt.ref)
			require.NoError(t, err)
			a, err := dc.Resolve(r.Context().Registry)
			require.NoError(t, err)
			if tt.want == nil {
				require.Equal(t, authn.Anonymous, a)
				return
			}
			cfg, err := authn.Authorization(t.Context(), a)
			require.NoError(t, err)
			require.Equal(t, authn.AuthConfig{Username: tt.want.Username, Password: tt.want.Password}, *cfg)
		})
	}

	t.Run("a token is for listing only", func(t *testing.T) {
		t.Parallel()
		got, err := dc.AuthFor(t.Context(), "token.example/a:1")
		require.NoError(t, err)
		require.Nil(t, got, "a CRI pull passes a username and password")
		cfg, ok := dc.Lookup("token.example")
		require.True(t, ok)
		require.Equal(t, secret, cfg.IdentityToken)
	})

	t.Run("invalid reference", func(t *testing.T) {
		t.Parallel()
		_, err := dc.AuthFor(t.Context(), "ghcr.io/UPPER/x:1")
		require.ErrorIs(t, err, image.ErrInvalidRef)
		require.NotContains(t, err.Error(), secret)
	})
}

func TestDockerConfigReloadsWhenTheFileChanges(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		const old, rotated, third = "old-" + secret, "new-" + secret, "third-" + secret
		path := filepath.Join(t.TempDir(), ".dockerconfigjson")
		write := func(body string) { require.NoError(t, os.WriteFile(path, []byte(body), 0o600)) }
		write(dockerconfigFor("ghcr.io", "robot", old))
		var logs lab.LogBuffer
		dc, err := LoadDockerConfig(path, slog.New(slog.NewJSONHandler(&logs, nil)))
		require.NoError(t, err)
		pull := func() string {
			t.Helper()
			a, err := dc.AuthFor(t.Context(), "ghcr.io/lsst/lab:w_2024_01")
			require.NoError(t, err)
			require.NotNil(t, a)
			return a.Password
		}
		list := func() string {
			t.Helper()
			a, err := dc.Resolve(name.MustParseReference("ghcr.io/lsst/lab").Context().Registry)
			require.NoError(t, err)
			cfg, err := authn.Authorization(t.Context(), a)
			require.NoError(t, err)
			return cfg.Password
		}
		require.Equal(t, old, pull())
		require.Equal(t, uint64(0), dc.Generation())

		// The Secret is rotated: within ReloadInterval the file is not read again, then both
		// pulls and listings see the new password.
		write(dockerconfigFor("https://ghcr.io/v2/", "robot", rotated))
		require.Equal(t, old, pull(), "at most one read per ReloadInterval")
		time.Sleep(ReloadInterval)
		require.Equal(t, rotated, list())
		require.Equal(t, rotated, pull())
		require.Equal(t, uint64(1), dc.Generation())
		require.NotContains(t, logs.String(), "re-read failed")

		// A malformed rewrite keeps the last good credentials and says why, once.
		write(`{"auths": {"ghcr.io": {"auth": "` + b64("robot:"+third) + `"`)
		time.Sleep(ReloadInterval)
		require.Equal(t, rotated, pull())
		require.Contains(t, logs.String(), "dockerconfig "+path+": not valid JSON")
		time.Sleep(ReloadInterval)
		require.Equal(t, rotated, list())
		require.Equal(t, uint64(1), dc.Generation())
		require.Equal(t, 1, strings.Count(logs.String(), "re-read failed"), logs.String())
		require.Contains(t, logs.String(), `"level":"WARN"`)

		// So does a file that is gone.
		require.NoError(t, os.Remove(path))
		time.Sleep(ReloadInterval)
		require.Equal(t, rotated, pull())
		require.Equal(t, 2, strings.Count(logs.String(), "re-read failed"), logs.String())
		require.Contains(t, logs.String(), "dockerconfig "+path+": "+syscall.ENOENT.Error()+`"`)

		// The same credentials again, even reformatted, are no change.
		write("{\n  \"auths\": {\"https://ghcr.io/v2/\": {\"auth\": \"" + b64("robot:"+rotated) + "\"}}\n}\n")
		time.Sleep(ReloadInterval)
		require.Equal(t, rotated, pull())
		require.Equal(t, 2, strings.Count(logs.String(), "re-read failed"), "a good read: "+logs.String())
		require.Equal(t, uint64(1), dc.Generation())

		write(dockerconfigFor("ghcr.io", "robot", third))
		time.Sleep(ReloadInterval)
		require.Equal(t, third, list())
		require.Equal(t, uint64(2), dc.Generation())

		require.Contains(t, logs.String(), "credentials reloaded")
		for _, s := range []string{old, rotated, third, b64("robot:" + third)} {
			require.NotContains(t, logs.String(), s)
			require.NotContains(t, dc.String()+fmt.Sprintf("%#v", dc), s)
		}
	})
}

// TestDockerConfigFollowsASecretVolumeSwap rotates the file the way the kubelet updates a
// Secret volume: the file is a symlink through "..data", and "..data" is replaced atomically
// by a symlink to a new directory.
func TestDockerConfigFollowsASecretVolumeSwap(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		dir := t.TempDir()
		version := func(n int, pass string) {
			v := filepath.Join(dir, fmt.Sprintf("..2024_01_0%d", n))
			require.NoError(t, os.Mkdir(v, 0o755))
			require.NoError(t, os.WriteFile(filepath.Join(v, ".dockerconfigjson"), []byte(dockerconfigFor("ghcr.io", "robot", pass)), 0o600))
			require.NoError(t, os.Symlink(filepath.Base(v), filepath.Join(dir, "..data_tmp")))
			require.NoError(t, os.Rename(filepath.Join(dir, "..data_tmp"), filepath.Join(dir, "..data")))
		}
		version(1, "one")
		path := filepath.Join(dir, ".dockerconfigjson")
		require.NoError(t, os.Symlink("..data/.dockerconfigjson", path))
		var logs lab.LogBuffer
		dc, err := LoadDockerConfig(path, slog.New(slog.NewJSONHandler(&logs, nil)))
		require.NoError(t, err)

		version(2, "two")
		require.NoError(t, os.RemoveAll(filepath.Join(dir, "..2024_01_01")))
		time.Sleep(ReloadInterval)
		a, err := dc.AuthFor(t.Context(), "ghcr.io/a/b:c")
		require.NoError(t, err)
		require.Equal(t, &cri.Auth{Username: "robot", Password: "two"}, a)
		require.NotContains(t, logs.String(), "re-read failed")
	})
}

// tokenRegistry is a minimal distribution registry with one repository and one tag that
// demands credentials: HTTP Basic on every request, or (bearer) a token from its token
// endpoint, which takes HTTP Basic. A token stays valid after the password changes, as a
// real registry's does until it expires.
type tokenRegistry struct {
	srv    *httptest.Server
	bearer bool

	mu       sync.Mutex        // guards the fields below
	password string            // the one accepted now
	tokens   map[string]string // token -> the password it was issued for
	used     []string          // the password behind each tag-list or manifest request
}

const tokenUser = "robot"

func newTokenRegistry(t *testing.T, bearer bool, password string) *tokenRegistry {
	r := &tokenRegistry{bearer: bearer, password: password, tokens: map[string]string{}}
	r.srv = httptest.NewServer(http.HandlerFunc(r.serve))
	t.Cleanup(r.srv.Close)
	return r
}

func (r *tokenRegistry) setPassword(p string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.password = p
}

func (r *tokenRegistry) usedPasswords() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.used...)
}

func (r *tokenRegistry) serve(w http.ResponseWriter, req *http.Request) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if req.URL.Path == "/token" {
		user, pass, ok := req.BasicAuth()
		if !ok || user != tokenUser || pass != r.password {
			http.Error(w, `{"errors": [{"code": "UNAUTHORIZED"}]}`, http.StatusUnauthorized)
			return
		}
		tok := fmt.Sprintf("tok-%d", len(r.tokens))
		r.tokens[tok] = pass
		_ = json.NewEncoder(w).Encode(map[string]string{"token": tok})
		return
	}
	// The credentials behind the request, if any are valid.
	var pass string
	var ok bool
	if r.bearer {
		tok, found := strings.CutPrefix(req.Header.Get("Authorization"), "Bearer ")
		pass, ok = r.tokens[tok]
		ok = ok && found
	} else {
		var user string
		user, pass, ok = req.BasicAuth()
		ok = ok && user == tokenUser && pass == r.password
	}
	if !ok {
		if r.bearer {
			w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer realm="%s/token",service="test"`, r.srv.URL))
		} else {
			w.Header().Set("WWW-Authenticate", `Basic realm="test"`)
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusUnauthorized)
		_, _ = w.Write([]byte(`{"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]}`))
		return
	}
	switch {
	case req.URL.Path == "/v2/":
		w.WriteHeader(http.StatusOK)
	case req.URL.Path == "/v2/lsst/lab/tags/list":
		r.used = append(r.used, pass)
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"name": "lsst/lab", "tags": ["w_2024_01"]}`))
	case req.URL.Path == "/v2/lsst/lab/manifests/w_2024_01" && req.Method == http.MethodHead:
		r.used = append(r.used, pass)
		w.Header().Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
		w.Header().Set("Docker-Content-Digest", "sha256:"+strings.Repeat("ab", 32))
		w.Header().Set("Content-Length", "100")
	default:
		http.NotFound(w, req)
	}
}

// TestListerUsesRotatedCredentials rotates the registry's password and the dockerconfig
// together, as a Secret rotation does, and checks that the very next listing and lookup use the
// new password: go-containerregistry keeps credentials and tokens in per-repository
// transports, so without starting over a Lister kept sending the old basic auth (refused) or
// the old token (still accepted, but obtained with a revoked password).
func TestListerUsesRotatedCredentials(t *testing.T) {
	t.Parallel()
	const old, rotated = "old-" + secret, "new-" + secret
	for _, bearer := range []bool{false, true} {
		t.Run(map[bool]string{false: "basic", true: "bearer"}[bearer], func(t *testing.T) {
			t.Parallel()
			reg := newTokenRegistry(t, bearer, old)
			host := reg.srv.Listener.Addr().String()
			path := filepath.Join(t.TempDir(), ".dockerconfigjson")
			require.NoError(t, os.WriteFile(path, []byte(dockerconfigFor(host, tokenUser, old)), 0o600))
			dc, err := LoadDockerConfig(path, nil)
			require.NoError(t, err)
			dc.interval = 0 // read on every use: no waiting in the test
			l, err := New(Config{RegistryURL: host, Repo: "lsst/lab", Auth: dc})
			require.NoError(t, err)
			res := NewResolver(dc)
			ref := image.MustParseRef(host + "/lsst/lab:w_2024_01")

			images, err := l.ListImages(t.Context())
			require.NoError(t, err)
			require.Len(t, images, 1)
			_, err = res.Resolve(t.Context(), ref)
			require.NoError(t, err)
			require.Equal(t, []string{old, old}, reg.usedPasswords())

			reg.setPassword(rotated)
			require.NoError(t, os.WriteFile(path, []byte(dockerconfigFor(host, tokenUser, rotated)), 0o600))
			images, err = l.ListImages(t.Context())
			require.NoError(t, err)
			require.Len(t, images, 1)
			digests, err := l.ResolveDigests(t.Context(), []string{"w_2024_01"})
			require.NoError(t, err)
			require.Len(t, digests, 1)
			_, err = res.Resolve(t.Context(), ref)
			require.NoError(t, err)
			require.Equal(t, []string{old, old, rotated, rotated, rotated}, reg.usedPasswords())

			// Unchanged credentials keep the transports: no new token per listing.
			calls := l.Calls()
			_, err = l.ListImages(t.Context())
			require.NoError(t, err)
			require.Equal(t, calls+1, l.Calls(), "one request: the tag list")
		})
	}
}
