package gar

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"golang.org/x/oauth2"
	"golang.org/x/oauth2/google"

	"github.com/cachemachine/cachemachine/cri"
	"github.com/cachemachine/cachemachine/image"
)

// CloudPlatformScope is the OAuth scope of the access tokens TokenCredentials hands out.
const CloudPlatformScope = "https://www.googleapis.com/auth/cloud-platform"

// TokenUsername is the user name that Artifact Registry and Container Registry accept with
// an OAuth access token as the password.
const TokenUsername = "oauth2accesstoken"

// EarlyRefresh is how long before its expiry a token is replaced, so that a pull that starts
// with it (pull_timeout: 10m) does not run into an expired token halfway. Where the token
// source caches tokens itself (ADC does, until 10s before expiry), the refresh happens when
// that cache hands out a newer token; asking it again is cheap.
const EarlyRefresh = 5 * time.Minute

// ErrToken: no access token could be obtained. The wrapped error comes from the token
// source; TokenCredentials never puts a token in an error.
var ErrToken = errors.New("google access token unavailable")

// TokenCredentials supplies registry credentials for pulls from Google registries
// (pull_auth: google): an OAuth access token of the pod's identity, for Artifact Registry
// hosts ({location}-docker.pkg.dev) and Container Registry hosts (gcr.io, *.gcr.io) only. It
// is safe for concurrent use.
type TokenCredentials struct {
	ts oauth2.TokenSource
}

// NewTokenCredentials returns credentials backed by ts. Tokens are reused until EarlyRefresh
// before their expiry.
func NewTokenCredentials(ts oauth2.TokenSource) *TokenCredentials {
	return &TokenCredentials{ts: oauth2.ReuseTokenSourceWithExpiry(nil, ts, EarlyRefresh)}
}

// DefaultTokenCredentials returns credentials backed by Application Default Credentials
// (workload identity on GKE) with the cloud-platform scope. ctx must live as long as the
// credentials: token refreshes use it.
func DefaultTokenCredentials(ctx context.Context) (*TokenCredentials, error) {
	ts, err := google.DefaultTokenSource(ctx, CloudPlatformScope)
	if err != nil {
		return nil, fmt.Errorf("application default credentials: %w", err)
	}
	return NewTokenCredentials(ts), nil
}

// AuthFor returns the credentials to pull ref (a full image reference such as
// "us-central1-docker.pkg.dev/p/r/img:tag"), or nil, nil when ref's registry is not a Google
// registry, so no token is ever sent elsewhere. It may block while a token is fetched (the
// token source applies its own timeouts; ctx is checked first).
func (c *TokenCredentials) AuthFor(ctx context.Context, ref string) (*cri.Auth, error) {
	r, err := image.ParseRef(ref)
	if err != nil {
		return nil, nil // not a reference: certainly no Google registry to send a token to
	}
	host := strings.ToLower(r.Registry())
	if !IsGoogleRegistry(host) {
		return nil, nil
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("credentials for %s: %w", host, err)
	}
	tok, err := c.ts.Token()
	if err != nil {
		return nil, fmt.Errorf("credentials for %s: %w: %w", host, ErrToken, err)
	}
	if tok.AccessToken == "" {
		return nil, fmt.Errorf("credentials for %s: %w: empty access token", host, ErrToken)
	}
	return &cri.Auth{Username: TokenUsername, Password: tok.AccessToken}, nil
}

// IsGoogleRegistry reports whether host (optionally with port 443) is an Artifact Registry
// Docker host ("{location}-docker.pkg.dev") or a Container Registry host ("gcr.io",
// "{region}.gcr.io"): the hosts a Google access token may be sent to.
func IsGoogleRegistry(host string) bool {
	if h, port, err := net.SplitHostPort(host); err == nil {
		if port != "443" {
			return false
		}
		host = h
	}
	host = strings.ToLower(host)
	if host == "gcr.io" {
		return true
	}
	if label, ok := strings.CutSuffix(host, ".gcr.io"); ok {
		return isLabel(label)
	}
	if loc, ok := strings.CutSuffix(host, "-docker.pkg.dev"); ok {
		return isLabel(loc)
	}
	return false
}

// isLabel reports whether s is one DNS label: letters, digits and inner hyphens.
func isLabel(s string) bool {
	if s == "" || len(s) > 63 || s[0] == '-' || s[len(s)-1] == '-' {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-') {
			return false
		}
	}
	return true
}
