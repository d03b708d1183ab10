package agent

import (
	"encoding/base64"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/cachemachine/cachemachine/cri"
)

func TestDockerConfig(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), ".dockerconfigjson")
	basic := base64.StdEncoding.EncodeToString([]byte("robot:s3cret"))
	require.NoError(t, os.WriteFile(path, []byte(`{"auths": {
		"https://index.docker.io/v1/": {"auth": "`+basic+`"},
		"ghcr.io": {"username": "u", "password": "p"},
		"http://127.0.0.1:5000": {"username": "local", "password": "pw"}}}`), 0o600))
	c, err := NewDockerConfig(path)
	require.NoError(t, err)

	for ref, want := range map[string]*cri.Auth{
		"lsstsqre/sciplat-lab:w_2022_40": {Username: "robot", Password: "s3cret"},
		"ghcr.io/lsst/x:1":               {Username: "u", Password: "p"},
		"127.0.0.1:5000/a/b:c":           {Username: "local", Password: "pw"},
		"quay.io/a/b:c":                  nil,
	} {
		got, err := c.AuthFor(t.Context(), ref)
		require.NoError(t, err, ref)
		require.Equal(t, want, got, ref)
	}

	// A rotated secret is picked up without a restart.
	require.NoError(t, os.WriteFile(path, []byte(`{"auths": {"ghcr.io": {"username": "u2", "password": "p2"}}}`), 0o600))
	require.NoError(t, os.Chtimes(path, time.Now().Add(time.Minute), time.Now().Add(time.Minute)))
	got, err := c.AuthFor(t.Context(), "ghcr.io/lsst/x:1")
	require.NoError(t, err)
	require.Equal(t, &cri.Auth{Username: "u2", Password: "p2"}, got)
}

func TestDockerConfigErrorsNameTheFileNotTheSecret(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	tests := []struct{ name, body, want string }{
		{name: "not json", body: `{"auths": {"ghcr.io": {"password": "hunter2"`, want: "not valid JSON"},
		{name: "bad base64", body: `{"auths": {"ghcr.io": {"auth": "hunter2!!"}}}`, want: `auths["ghcr.io"].auth: not base64`},
		{name: "no colon", body: `{"auths": {"ghcr.io": {"auth": "` + base64.StdEncoding.EncodeToString([]byte("hunter2")) + `"}}}`, want: "user:password"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			path := filepath.Join(dir, tt.name)
			require.NoError(t, os.WriteFile(path, []byte(tt.body), 0o600))
			_, err := NewDockerConfig(path)
			require.ErrorContains(t, err, path)
			require.ErrorContains(t, err, tt.want)
			require.NotContains(t, err.Error(), "hunter2")
		})
	}
	_, err := NewDockerConfig(filepath.Join(dir, "missing"))
	require.ErrorContains(t, err, "missing")
}
