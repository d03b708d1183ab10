package registry

import (
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/stretchr/testify/require"
)

// secret appears in every credential of these tests; no message may contain it.
const secret = "Sup3r-Secret"

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

func TestLoadDockerConfig(t *testing.T) {
	t.Parallel()
	basic := authn.AuthConfig{Username: "rubin", Password: secret}
	tests := []struct {
		name string
		body string
		// lookups maps a registry host to the credentials it must resolve to; a zero AuthConfig
		// means anonymous.
		lookups map[string]authn.AuthConfig
	}{
		{
			name:    "auth field",
			body:    `{"auths": {"ghcr.io": {"auth": "` + b64("rubin:"+secret) + `"}}}`,
			lookups: map[string]authn.AuthConfig{"ghcr.io": basic, "GHCR.io": basic, "quay.io": {}},
		},
		{
			name:    "password with colons, unpadded base64",
			body:    `{"auths": {"ghcr.io": {"auth": "` + strings.TrimRight(b64("rubin:a:b:"+secret), "=") + `"}}}`,
			lookups: map[string]authn.AuthConfig{"ghcr.io": {Username: "rubin", Password: "a:b:" + secret}},
		},
		{
			name:    "username and password",
			body:    `{"auths": {"ghcr.io": {"username": "rubin", "password": "` + secret + `", "email": "x@y"}}}`,
			lookups: map[string]authn.AuthConfig{"ghcr.io": basic},
		},
		{
			name:    "auth wins over username and password",
			body:    `{"auths": {"ghcr.io": {"auth": "` + b64("rubin:"+secret) + `", "username": "other", "password": "x"}}}`,
			lookups: map[string]authn.AuthConfig{"ghcr.io": basic},
		},
		{
			name:    "identity token",
			body:    `{"auths": {"example.com": {"identitytoken": "` + secret + `"}}}`,
			lookups: map[string]authn.AuthConfig{"example.com": {IdentityToken: secret}},
		},
		{
			name:    "registry token",
			body:    `{"auths": {"example.com": {"registrytoken": "` + secret + `"}}}`,
			lookups: map[string]authn.AuthConfig{"example.com": {RegistryToken: secret}},
		},
		{
			name: "docker login's Docker Hub key serves every alias",
			body: `{"auths": {"https://index.docker.io/v1/": {"auth": "` + b64("rubin:"+secret) + `"}}}`,
			lookups: map[string]authn.AuthConfig{
				"registry.hub.docker.com": basic, "index.docker.io": basic, "docker.io": basic,
				"registry-1.docker.io": basic, "hub.docker.com": {},
			},
		},
		{
			name: "registry.hub.docker.com key serves Docker Hub",
			body: `{"auths": {"registry.hub.docker.com": {"auth": "` + b64("rubin:"+secret) + `"}}}`,
			lookups: map[string]authn.AuthConfig{
				"index.docker.io": basic, "registry.hub.docker.com": basic, "docker.io": basic,
			},
		},
		{
			name:    "same credentials under two Docker Hub names",
			body:    `{"auths": {"docker.io": {"auth": "` + b64("rubin:"+secret) + `"}, "https://index.docker.io/v1/": {"username": "rubin", "password": "` + secret + `"}}}`,
			lookups: map[string]authn.AuthConfig{"registry.hub.docker.com": basic},
		},
		{
			name: "URL keys and ports",
			body: `{"auths": {"https://GHCR.io/v2/": {"auth": "` + b64("rubin:"+secret) + `"}, "http://127.0.0.1:5000": {"username": "u", "password": "p"}}}`,
			lookups: map[string]authn.AuthConfig{
				"ghcr.io": basic, "127.0.0.1:5000": {Username: "u", Password: "p"}, "127.0.0.1": {},
			},
		},
		{
			name:    "no entries",
			body:    `{"auths": {}, "credsStore": "desktop"}`,
			lookups: map[string]authn.AuthConfig{"index.docker.io": {}},
		},
		{
			// The Docker CLI writes empty entries next to a credsStore; the agent's own parser
			// skipped them, so one parser must too.
			name:    "entries without credentials are skipped",
			body:    `{"auths": {"ghcr.io": {}, "quay.io": {"email": "x@y", "auth": ""}, "https://": {}, "127.0.0.1:5000": {"username": "u", "password": "p"}}, "credsStore": "desktop"}`,
			lookups: map[string]authn.AuthConfig{"ghcr.io": {}, "quay.io": {}, "127.0.0.1:5000": {Username: "u", Password: "p"}},
		},
		{
			name:    "padded auth with white space",
			body:    `{"auths": {"ghcr.io": {"auth": " ` + b64("rubin:"+secret) + `\n"}}}`,
			lookups: map[string]authn.AuthConfig{"ghcr.io": basic},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			path := filepath.Join(t.TempDir(), "config.json")
			require.NoError(t, os.WriteFile(path, []byte(tt.body), 0o600))
			dc, err := LoadDockerConfig(path, nil)
			require.NoError(t, err)
			for host, want := range tt.lookups {
				got, ok := dc.Lookup(host)
				require.Equal(t, want != authn.AuthConfig{}, ok, host)
				require.Equal(t, want, got, host)

				// Through the Keychain interface, as go-containerregistry calls it.
				reg, err := name.NewRegistry(host)
				require.NoError(t, err)
				auth, err := dc.Resolve(reg)
				require.NoError(t, err)
				if !ok {
					require.Equal(t, authn.Anonymous, auth, host)
					continue
				}
				cfg, err := authn.Authorization(t.Context(), auth)
				require.NoError(t, err)
				require.Equal(t, want, *cfg, host)
			}
			for _, s := range []string{dc.String(), fmt.Sprintf("%v", dc), fmt.Sprintf("%+v", dc), fmt.Sprintf("%#v", dc)} {
				require.NotContains(t, s, secret)
				require.Contains(t, s, path)
			}
		})
	}
}

func TestLoadDockerConfigErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		body    string
		wantErr string // after "dockerconfig <path>: "
	}{
		{name: "not JSON", body: `{"auths": {"ghcr.io": {"auth": "` + secret + `"`, wantErr: "not valid JSON (syntax error at byte"},
		{name: "not JSON, secret in the bad token", body: `{"auths": {"ghcr.io": {"password": ` + secret + `}}}`, wantErr: "not valid JSON (syntax error at byte"},
		{name: "no auths", body: `{"ghcr.io": {"auth": "` + b64("u:"+secret) + `"}}`, wantErr: `no "auths" object`},
		{name: "auths not an object", body: `{"auths": ["` + secret + `"]}`, wantErr: "auths: want a JSON object, got array"},
		{name: "entry not an object", body: `{"auths": {"ghcr.io": "` + secret + `"}}`, wantErr: `auths["ghcr.io"]: value: want a JSON object, got string`},
		{name: "auth not a string", body: `{"auths": {"ghcr.io": {"auth": 12345}}}`, wantErr: `auths["ghcr.io"]: auth: want a JSON string, got number`},
		{name: "bad base64", body: `{"auths": {"ghcr.io": {"auth": "` + secret + `!!"}}}`, wantErr: `auths["ghcr.io"]: "auth" is not valid base64`},
		{name: "no colon", body: `{"auths": {"ghcr.io": {"auth": "` + b64(secret) + `"}}}`, wantErr: `auths["ghcr.io"]: decoded "auth" has no ':' between username and password`},
		{name: "password only", body: `{"auths": {"ghcr.io": {"password": "` + secret + `"}}}`, wantErr: `auths["ghcr.io"]: password without a username`},
		{name: "empty key", body: `{"auths": {"https://": {"username": "u", "password": "` + secret + `"}}}`, wantErr: `auths["https://"]: no registry host in the key`},
		{
			name:    "conflicting Docker Hub entries",
			body:    `{"auths": {"docker.io": {"auth": "` + b64("a:"+secret) + `"}, "https://index.docker.io/v1/": {"auth": "` + b64("b:"+secret) + `"}}}`,
			wantErr: `auths["docker.io"] and auths["https://index.docker.io/v1/"] both name registry index.docker.io with different credentials`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			path := filepath.Join(t.TempDir(), ".dockerconfigjson")
			require.NoError(t, os.WriteFile(path, []byte(tt.body), 0o600))
			_, err := LoadDockerConfig(path, nil)
			require.ErrorContains(t, err, "dockerconfig "+path+": "+tt.wantErr)
			require.NotContains(t, err.Error(), secret)
			require.NotContains(t, err.Error(), strings.TrimRight(b64("a:"+secret), "="))
			require.NotContains(t, err.Error(), "12345", "a numeric value (perhaps a secret) is not quoted")
		})
	}

	t.Run("missing file", func(t *testing.T) {
		t.Parallel()
		path := filepath.Join(t.TempDir(), "absent.json")
		_, err := LoadDockerConfig(path, nil)
		require.ErrorIs(t, err, os.ErrNotExist)
		require.EqualError(t, err, "dockerconfig "+path+": no such file or directory", "the path once, then the reason")
	})
}
