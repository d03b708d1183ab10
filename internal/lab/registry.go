package lab

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"
)

// portAttempts is how many free ports StartRegistry tries when one is taken between picking and
// binding it.
const portAttempts = 5

// RegistryOptions configures StartRegistry. The zero value is valid.
type RegistryOptions struct {
	// Dir holds the registry's storage, config and log. Default: a fresh temp dir, removed by
	// Close.
	Dir string
	// Username and Password, when Username is set, turn on htpasswd (HTTP Basic) auth.
	Username, Password string
	// Stdout receives the registry's log. Default: the file registry.log in Dir.
	Stdout io.Writer
	// Notify, when set, makes the registry POST a notification envelope to Notify.URL on
	// every manifest push and delete (docker-registry's notifications.endpoints), with
	// "Authorization: Bearer <Notify.Token>".
	Notify *RegistryNotify
}

// RegistryNotify is one notifications endpoint of the registry.
type RegistryNotify struct {
	URL   string
	Token string
}

// Registry is a docker-registry (distribution 2.8) running as a child process, serving plain
// HTTP on Addr with filesystem storage under Dir. Create it with StartRegistry or NewRegistry,
// release it with Close.
type Registry struct {
	// Addr is "127.0.0.1:PORT"; it stays the same across Stop and Start.
	Addr string
	// Dir holds the storage, config.yml and the default log.
	Dir string

	bin        string
	configPath string
	ownDir     bool
	out        io.Writer
	logFile    *os.File // non-nil when out is the default log file
	client     *http.Client

	mu     sync.Mutex  // guards the fields below
	proc   *Process    // running process, nil when stopped
	tail   *tailBuffer // output of the current or last run
	closed bool
}

// StartRegistry writes a config.yml under opts.Dir (filesystem storage, delete enabled, no
// redirects, 127.0.0.1 on a free port, htpasswd when opts.Username is set), starts
// `docker-registry serve` as a child process and waits until GET /v2/ answers 200 or 401. On
// failure nothing is left running and the error includes the tail of the registry's log.
func StartRegistry(ctx context.Context, opts RegistryOptions) (*Registry, error) {
	bin, err := lookPath("docker-registry")
	if err != nil {
		return nil, err
	}
	r := &Registry{bin: bin, client: &http.Client{Timeout: time.Second}}
	if opts.Dir == "" {
		if r.Dir, err = os.MkdirTemp("", "cmreg"); err != nil {
			return nil, fmt.Errorf("start registry: %w", err)
		}
		r.ownDir = true
	} else {
		if r.Dir, err = filepath.Abs(opts.Dir); err != nil {
			return nil, fmt.Errorf("start registry: %w", err)
		}
		if err := os.MkdirAll(r.Dir, 0o755); err != nil {
			return nil, fmt.Errorf("start registry: %w", err)
		}
	}
	started := false
	defer func() {
		if !started {
			_ = r.Close()
		}
	}()
	htpasswd := ""
	if opts.Username != "" {
		htpasswd = filepath.Join(r.Dir, "htpasswd")
		if err := writeHtpasswd(htpasswd, opts.Username, opts.Password); err != nil {
			return nil, fmt.Errorf("start registry: %w", err)
		}
	}
	if r.out, r.logFile, err = openLog(opts.Stdout, filepath.Join(r.Dir, "registry.log")); err != nil {
		return nil, fmt.Errorf("start registry: %w", err)
	}
	r.configPath = filepath.Join(r.Dir, "config.yml")
	secret := make([]byte, 16)
	_, _ = rand.Read(secret) // never fails since Go 1.24
	for attempt := 1; ; attempt++ {
		port, err := FreePort()
		if err != nil {
			return nil, fmt.Errorf("start registry: %w", err)
		}
		r.Addr = "127.0.0.1:" + strconv.Itoa(port)
		cfg := registryConfig(filepath.Join(r.Dir, "data"), r.Addr, hex.EncodeToString(secret), htpasswd, opts.Notify)
		if err := os.WriteFile(r.configPath, []byte(cfg), 0o644); err != nil {
			return nil, fmt.Errorf("start registry: %w", err)
		}
		err = r.start(ctx)
		if err == nil {
			started = true
			return r, nil
		}
		if attempt == portAttempts || !strings.Contains(err.Error(), "address already in use") {
			return nil, fmt.Errorf("start registry: %w", err)
		}
	}
}

// NewRegistry is StartRegistry for tests: it calls Require(t), registers Close with t.Cleanup
// and fails t on error.
func NewRegistry(t testing.TB, opts RegistryOptions) *Registry {
	t.Helper()
	Require(t)
	r, err := StartRegistry(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := r.Close(); err != nil {
			t.Errorf("close registry: %v", err)
		}
	})
	return r
}

// Stop stops the registry process (SIGTERM, SIGKILL after 10 s), keeping its data and port for
// Start. Stopping a stopped registry does nothing.
func (r *Registry) Stop() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.proc == nil {
		return nil
	}
	err := r.proc.Stop(stopGrace)
	r.proc = nil
	if err != nil {
		return withTail(fmt.Errorf("stop registry: %w", err), r.tail)
	}
	return nil
}

// Start starts a stopped registry again on the same port and data, for "registry down, then
// back" tests, and waits until it answers. It fails when the registry runs or is closed, or when
// the port was taken meanwhile.
func (r *Registry) Start(ctx context.Context) error {
	if err := r.start(ctx); err != nil {
		return fmt.Errorf("start registry: %w", err)
	}
	return nil
}

// Close stops the registry and removes Dir when StartRegistry created it. Close is idempotent.
func (r *Registry) Close() error {
	r.mu.Lock()
	closed := r.closed
	r.closed = true
	r.mu.Unlock()
	if closed {
		return nil
	}
	errs := []error{r.Stop()}
	if r.logFile != nil {
		errs = append(errs, r.logFile.Close())
	}
	if r.ownDir {
		if err := os.RemoveAll(r.Dir); err != nil {
			errs = append(errs, fmt.Errorf("remove %s: %w", r.Dir, err))
		}
	}
	return errors.Join(errs...)
}

// start launches the process and waits for /v2/ to answer; on failure it kills the process.
func (r *Registry) start(ctx context.Context) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return errors.New("closed")
	}
	if r.proc != nil {
		return errors.New("already running")
	}
	r.tail = newTail()
	p, err := StartProcess(r.bin, []string{"serve", r.configPath}, io.MultiWriter(r.out, r.tail))
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	if err := waitProcOr(ctx, p, r.ping); err != nil {
		p.Kill()
		return withTail(err, r.tail)
	}
	r.proc = p
	return nil
}

// ping succeeds when GET /v2/ answers 200 (no auth) or 401 (auth on).
func (r *Registry) ping(ctx context.Context) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+r.Addr+"/v2/", nil)
	if err != nil {
		return err
	}
	resp, err := r.client.Do(req)
	if err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusUnauthorized {
		return fmt.Errorf("GET /v2/: %s", resp.Status)
	}
	return nil
}

// writeHtpasswd writes a one-user htpasswd file. docker-registry accepts only bcrypt entries and
// checks the password on every request, so the minimum cost keeps requests fast (~1 ms instead
// of ~0.1 s at the default cost); this is a test credential.
func writeHtpasswd(path, user, password string) error {
	if strings.ContainsAny(user, ":\n") {
		return fmt.Errorf("username %q: must not contain ':' or a newline", user)
	}
	hash, err := bcrypt.GenerateFromPassword([]byte(password), bcrypt.MinCost)
	if err != nil {
		return err
	}
	return os.WriteFile(path, []byte(user+":"+string(hash)+"\n"), 0o600)
}

// registryConfig renders a docker-registry 2.8 config.yml. Strings are written with %q: a Go
// quoted string of a path or host is a valid YAML double-quoted scalar.
func registryConfig(dataDir, addr, secret, htpasswd string, notify *RegistryNotify) string {
	var b strings.Builder
	fmt.Fprintf(&b, `version: 0.1
log:
  level: info
  fields:
    service: registry
storage:
  filesystem:
    rootdirectory: %q
  delete:
    enabled: true
  redirect:
    disable: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: %q
  secret: %q
  headers:
    X-Content-Type-Options: [nosniff]
`, dataDir, addr, secret)
	if htpasswd != "" {
		fmt.Fprintf(&b, `auth:
  htpasswd:
    realm: cachemachine-lab
    path: %q
`, htpasswd)
	}
	if notify != nil {
		// Blobs and pulls are no news; a failed delivery is retried every second, and a
		// backlog of undelivered events is dropped after a few tries rather than piling up.
		fmt.Fprintf(&b, `notifications:
  endpoints:
    - name: cachemachine
      url: %q
      headers:
        Authorization: [%q]
      timeout: 2s
      threshold: 3
      backoff: 1s
      ignoredmediatypes:
        - application/octet-stream
      ignore:
        actions: [pull]
`, notify.URL, "Bearer "+notify.Token)
	}
	return b.String()
}

// SetPassword replaces the registry's one htpasswd user, as a password rotation does; the
// registry must have been started with a Username. docker-registry reads the file again when
// its modification time changes, within a moment: wait for AuthStatus to show the switch.
func (r *Registry) SetPassword(user, password string) error {
	path := filepath.Join(r.Dir, "htpasswd")
	if _, err := os.Stat(path); err != nil {
		return fmt.Errorf("set registry password: no htpasswd (started without a Username?): %w", err)
	}
	tmp := path + ".tmp"
	if err := writeHtpasswd(tmp, user, password); err != nil {
		return fmt.Errorf("set registry password: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("set registry password: %w", err)
	}
	return nil
}

// AuthStatus is the HTTP status of GET /v2/ with HTTP Basic credentials user and password:
// 200 when the registry takes them, 401 when it refuses them.
func (r *Registry) AuthStatus(ctx context.Context, user, password string) (int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+r.Addr+"/v2/", nil)
	if err != nil {
		return 0, err
	}
	req.SetBasicAuth(user, password)
	resp, err := r.client.Do(req)
	if err != nil {
		return 0, err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	_ = resp.Body.Close()
	return resp.StatusCode, nil
}
