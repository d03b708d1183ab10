package gar_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/oauth2"

	"github.com/cachemachine/cachemachine/cri"
	"github.com/cachemachine/cachemachine/gar"
)

// fakeSource hands out "token-1", "token-2", … each valid for ttl, or fails with err.
type fakeSource struct {
	ttl time.Duration

	mu    sync.Mutex // guards the fields below
	calls int
	err   error
}

func (s *fakeSource) Token() (*oauth2.Token, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		return nil, s.err
	}
	s.calls++
	return &oauth2.Token{
		AccessToken: fmt.Sprintf("token-%d", s.calls),
		TokenType:   "Bearer",
		Expiry:      time.Now().Add(s.ttl),
	}, nil
}

func (s *fakeSource) fail(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.err = err
}

func TestAuthForHosts(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		ref  string
		want bool
	}{
		{name: "docker hub implicit", ref: "lsstsqre/sciplat-lab:w_2024_01", want: false},
		{name: "docker hub library", ref: "nginx:latest", want: false},
		{name: "docker.io", ref: "docker.io/lsstsqre/sciplat-lab:w_2024_01", want: false},
		{name: "registry.hub.docker.com", ref: "registry.hub.docker.com/lsstsqre/sciplat-lab:x", want: false},
		{name: "ghcr.io", ref: "ghcr.io/lsst-sqre/sciplat-lab:x", want: false},
		{name: "us-central1", ref: "us-central1-docker.pkg.dev/p/sciplat/sciplat-lab:w_2024_01", want: true},
		{name: "europe-west4", ref: "europe-west4-docker.pkg.dev/p/r/img@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", want: true},
		{name: "us multi-region", ref: "us-docker.pkg.dev/p/r/img:x", want: true},
		{name: "upper case host", ref: "US-Central1-Docker.PKG.dev/p/r/img:x", want: true},
		{name: "explicit port 443", ref: "us-central1-docker.pkg.dev:443/p/r/img:x", want: true},
		{name: "other port", ref: "us-central1-docker.pkg.dev:5000/p/r/img:x", want: false},
		{name: "gcr.io", ref: "gcr.io/p/img:x", want: true},
		{name: "eu.gcr.io", ref: "eu.gcr.io/p/img:x", want: true},
		{name: "suffix attack", ref: "evil-docker.pkg.dev.attacker.com/p/r/img:x", want: false},
		{name: "gcr suffix attack", ref: "gcr.io.attacker.com/p/img:x", want: false},
		{name: "gcr lookalike", ref: "evilgcr.io/p/img:x", want: false},
		{name: "nested gcr subdomain", ref: "a.b.gcr.io/p/img:x", want: false},
		{name: "bare pkg.dev", ref: "docker.pkg.dev/p/r/img:x", want: false},
		{name: "empty location", ref: "-docker.pkg.dev/p/r/img:x", want: false},
		{name: "maven host", ref: "us-central1-maven.pkg.dev/p/r/img:x", want: false},
		{name: "no path", ref: "gcr.io", want: false},
		{name: "localhost", ref: "localhost:5000/p/r/img:x", want: false},
		{name: "empty", ref: "", want: false},
	}
	src := &fakeSource{ttl: time.Hour}
	c := gar.NewTokenCredentials(src)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			auth, err := c.AuthFor(t.Context(), tt.ref)
			require.NoError(t, err)
			if !tt.want {
				require.Nil(t, auth)
				return
			}
			require.Equal(t, &cri.Auth{Username: "oauth2accesstoken", Password: "token-1"}, auth)
		})
	}
}

func TestAuthForReusesAndRefreshes(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		src := &fakeSource{ttl: time.Hour}
		c := gar.NewTokenCredentials(src)
		const ref = "us-central1-docker.pkg.dev/p/r/img:x"
		get := func() string {
			auth, err := c.AuthFor(t.Context(), ref)
			require.NoError(t, err)
			return auth.Password
		}

		require.Equal(t, "token-1", get())
		require.Equal(t, "token-1", get(), "reused while valid")
		time.Sleep(time.Hour - gar.EarlyRefresh - time.Second)
		require.Equal(t, "token-1", get(), "still more than EarlyRefresh left")
		time.Sleep(2 * time.Second)
		require.Equal(t, "token-2", get(), "refreshed EarlyRefresh before expiry")
		time.Sleep(2 * time.Hour)
		require.Equal(t, "token-3", get(), "refreshed after expiry")
	})
}

func TestAuthForErrors(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		src := &fakeSource{ttl: time.Hour}
		c := gar.NewTokenCredentials(src)
		const ref = "gcr.io/p/img:x"
		auth, err := c.AuthFor(t.Context(), ref)
		require.NoError(t, err)
		secret := auth.Password

		cause := errors.New("metadata server: connection refused")
		src.fail(cause)
		time.Sleep(2 * time.Hour)
		auth, err = c.AuthFor(t.Context(), ref)
		require.Nil(t, auth)
		require.ErrorIs(t, err, gar.ErrToken)
		require.ErrorIs(t, err, cause)
		require.Contains(t, err.Error(), "gcr.io")
		require.NotContains(t, err.Error(), secret)

		// Other hosts do not need a token, so a broken source does not affect them.
		auth, err = c.AuthFor(t.Context(), "ghcr.io/o/img:x")
		require.NoError(t, err)
		require.Nil(t, auth)

		ctx, cancel := context.WithCancel(t.Context())
		cancel()
		_, err = c.AuthFor(ctx, ref)
		require.ErrorIs(t, err, context.Canceled)
	})
}

type emptySource struct{}

func (emptySource) Token() (*oauth2.Token, error) { return &oauth2.Token{}, nil }

func TestAuthForEmptyToken(t *testing.T) {
	t.Parallel()
	_, err := gar.NewTokenCredentials(emptySource{}).AuthFor(t.Context(), "gcr.io/p/i:x")
	require.ErrorIs(t, err, gar.ErrToken)
}

func TestIsGoogleRegistry(t *testing.T) {
	t.Parallel()
	for host, want := range map[string]bool{
		"us-central1-docker.pkg.dev":       true,
		"asia-docker.pkg.dev":              true,
		"gcr.io":                           true,
		"us.gcr.io":                        true,
		"gcr.io:443":                       true,
		"gcr.io:80":                        false,
		"docker.io":                        false,
		"evil-docker.pkg.dev.attacker.com": false,
		"us_central1-docker.pkg.dev":       false,
		"":                                 false,
	} {
		require.Equal(t, want, gar.IsGoogleRegistry(host), host)
	}
}

func TestDefaultTokenCredentialsWithoutADC(t *testing.T) {
	t.Setenv("GOOGLE_APPLICATION_CREDENTIALS", t.TempDir()+"/missing.json")
	_, err := gar.DefaultTokenCredentials(t.Context())
	require.ErrorContains(t, err, "application default credentials")
}
