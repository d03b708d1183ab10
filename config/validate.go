package config

import (
	"fmt"
	"math"
	"net"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/cachemachine/cachemachine/image"
	"github.com/google/go-containerregistry/pkg/name"
)

// Problem is one thing wrong with a configuration.
type Problem struct {
	// Field is the path of the field, e.g. "repomen[1].num_weeklies"; "" for the whole file.
	Field string
	// Message says what is wrong, e.g. "must be >= 0".
	Message string
	// Line is the field's line in the file (of its parent when the field is absent); 0 when
	// unknown or when the value came from a flag or the environment.
	Line int
	// Source is the flag ("--bind-port") or environment variable ("$POD_IP") that set the
	// value, or "" when it came from the file or the defaults.
	Source string
}

// String formats p as "field: message (line N)".
func (p Problem) String() string {
	var b strings.Builder
	if p.Field != "" {
		b.WriteString(p.Field)
		b.WriteString(": ")
	}
	b.WriteString(p.Message)
	switch {
	case p.Source != "":
		fmt.Fprintf(&b, " (set by %s)", p.Source)
	case p.Line > 0:
		fmt.Fprintf(&b, " (line %d)", p.Line)
	}
	return b.String()
}

// ValidationError lists every problem found in one configuration. Parse, Load and Validate
// return it; cmd exits with status 2 on it.
type ValidationError struct {
	// File is the name the configuration was loaded from; "" for a Config built in code.
	File string
	// Problems are in file order for decoding problems, in schema order for validation.
	Problems []Problem
}

// Error returns one line per problem: "file: field: message (line N)".
func (e *ValidationError) Error() string {
	var b strings.Builder
	for i, p := range e.Problems {
		if i > 0 {
			b.WriteByte('\n')
		}
		if e.File != "" {
			b.WriteString(e.File)
			b.WriteString(": ")
		}
		b.WriteString(p.String())
	}
	return b.String()
}

// maxSocketPath is the longest unix socket path: sun_path is 108 bytes with the NUL.
const maxSocketPath = 107

var (
	dnsLabel   = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)
	tagRE      = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$`)
	digestRE   = regexp.MustCompile(`^sha256:[0-9a-f]{64}$`)
	repoPathRE = regexp.MustCompile(`^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$`)
	// gcpIDRE is loose on purpose: project IDs may be domain-scoped (example.com:proj).
	gcpIDRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._:-]*$`)
)

// Validate checks the whole configuration and returns a *ValidationError listing every
// problem, or nil. Run it after ApplyEnv and Flags.Apply: the overrides may fix or break
// what the file says.
func (c *Config) Validate() error {
	v := &validator{c: c}
	c.validateTop(v)
	for i := range c.Repomen {
		c.Repomen[i].validate(v, fmt.Sprintf("repomen[%d]", i))
	}
	c.Agent.validate(v)
	c.Cluster.validate(v)
	c.HTTP.validate(v)
	if len(v.problems) == 0 {
		return nil
	}
	return &ValidationError{File: c.file, Problems: v.problems}
}

type validator struct {
	c        *Config
	problems []Problem
}

func (v *validator) addf(field, format string, args ...any) {
	p := Problem{Field: field, Message: fmt.Sprintf(format, args...), Source: v.c.sources[field]}
	if p.Source == "" {
		p.Line = v.c.lineOf(field)
	}
	v.problems = append(v.problems, p)
}

// lineOf returns the line of field, or of its nearest ancestor present in the file.
func (c *Config) lineOf(field string) int {
	for field != "" {
		if l, ok := c.lines[field]; ok {
			return l
		}
		i := strings.LastIndexAny(field, ".[")
		if i < 0 {
			return 0
		}
		field = field[:i]
	}
	return 0
}

// within checks that d is in [lo, hi]: a setting outside it would hurt the node (a 1ns
// resync spins a core in the agent and another in containerd) or make the agent useless.
func (v *validator) within(field string, d Duration, lo, hi time.Duration) {
	if d.Duration < lo || d.Duration > hi {
		v.addf(field, "must be between %s and %s, got %s", lo, hi, d.Duration)
	}
}

func (v *validator) nonNegative(field string, n int) {
	if n < 0 {
		v.addf(field, "must be >= 0, got %d", n)
	}
}

func (c *Config) validateTop(v *validator) {
	switch {
	case c.Name == "":
		v.addf("name", "required")
	case len(c.Name) > 63 || !dnsLabel.MatchString(c.Name):
		v.addf("name", "must be a DNS label (lower-case letters, digits and '-', at most 63 characters), got %q", c.Name)
	}
	v.within("refresh_interval", c.RefreshInterval, 10*time.Second, 24*time.Hour)
}

func (r *Repoman) validate(v *validator, path string) {
	f := func(name string) string { return path + "." + name }
	required := func(name, value string) bool {
		if value == "" {
			v.addf(f(name), "required for %s", r.Type)
			return false
		}
		return true
	}
	switch r.Type {
	case TypeRubinRepoGar:
		for _, fv := range []struct{ name, value string }{
			{"project_id", r.ProjectID}, {"location", r.Location},
			{"gar_repository", r.GARRepository}, {"gar_image", r.GARImage},
		} {
			if required(fv.name, fv.value) && !gcpIDRE.MatchString(fv.value) {
				v.addf(f(fv.name), "invalid value %q", fv.value)
			}
		}
		if strings.ContainsAny(r.Endpoint, " \t\n") {
			v.addf(f("endpoint"), "invalid endpoint %q", r.Endpoint)
		}
		if r.InsecureEndpoint && r.Endpoint == "" {
			v.addf(f("insecure_endpoint"), "requires endpoint")
		}
		if r.PubSubSubscription != "" {
			if err := validSubscription(r.PubSubSubscription); err != nil {
				v.addf(f("pubsub_subscription"), "%v", err)
			}
		}
		r.validateRubin(v, path)
	case TypeRubinRepoMan:
		if required("registry_url", r.RegistryURL) {
			if err := validRegistry(r.RegistryURL); err != nil {
				v.addf(f("registry_url"), "%v", err)
			}
		}
		if required("repo", r.Repo) && !repoPathRE.MatchString(r.Repo) {
			v.addf(f("repo"), "invalid repository %q (lower-case path like lsstsqre/sciplat-lab)", r.Repo)
		}
		r.validateRubin(v, path)
	case TypeSimpleRepoMan:
		if len(r.Images) == 0 {
			v.addf(f("images"), "required for SimpleRepoMan (at least one image)")
		}
		for i, img := range r.Images {
			ip := fmt.Sprintf("%s.images[%d]", path, i)
			if img.ImageURL == "" {
				v.addf(ip+".image_url", "required")
			} else if ref, err := parseImageRef(img.ImageURL); err != nil {
				v.addf(ip+".image_url", "%v", err)
			} else {
				r.Images[i].Ref = ref
			}
			if len(img.Name) > maxDisplayName {
				v.addf(ip+".name", "must be at most %d bytes, got %d", maxDisplayName, len(img.Name))
			}
			if img.ImageHash != "" && !digestRE.MatchString(img.ImageHash) {
				v.addf(ip+".image_hash", "must be a digest sha256:<64 hex digits>, got %q", img.ImageHash)
			}
		}
	case "":
		v.addf(f("type"), "required (want %s)", typeList)
	default:
		v.addf(f("type"), "unknown repoman type %q (want %s)", r.Type, typeList)
	}
}

// validateRubin checks the fields the two Rubin types share.
func (r *Repoman) validateRubin(v *validator, path string) {
	f := func(name string) string { return path + "." + name }
	if r.RecommendedTag != "" && !tagRE.MatchString(r.RecommendedTag) {
		v.addf(f("recommended_tag"), "invalid tag %q", r.RecommendedTag)
	}
	v.nonNegative(f("num_releases"), r.NumReleases)
	v.nonNegative(f("num_weeklies"), r.NumWeeklies)
	v.nonNegative(f("num_dailies"), r.NumDailies)
	if r.Cycle != nil {
		v.nonNegative(f("cycle"), *r.Cycle)
	}
	for i, t := range r.AliasTags {
		if !tagRE.MatchString(t) {
			v.addf(fmt.Sprintf("%s[%d]", f("alias_tags"), i), "invalid tag %q", t)
		}
	}
	for i, t := range r.Pin {
		if !tagRE.MatchString(t) {
			v.addf(fmt.Sprintf("%s[%d]", f("pin"), i), "invalid tag %q", t)
		}
	}
}

var (
	// Google Cloud resource names (cloud.google.com/resource-manager and Pub/Sub's resource
	// name rules): a project ID is 6 to 30 lower-case letters, digits and hyphens starting
	// with a letter, optionally domain-scoped ("example.com:proj"); a subscription ID is 3 to
	// 255 characters, letters, digits and - _ . ~ + %, starting with a letter, not "goog…".
	projectIDRE      = regexp.MustCompile(`^([a-z0-9][a-z0-9.-]*[a-z0-9]:)?[a-z][a-z0-9-]{4,28}[a-z0-9]$`)
	subscriptionIDRE = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9_.~+%-]{2,254}$`)
)

// validSubscription checks a Pub/Sub subscription resource name.
func validSubscription(s string) error {
	parts := strings.Split(s, "/")
	if len(parts) != 4 || parts[0] != "projects" || parts[2] != "subscriptions" {
		return fmt.Errorf("must be projects/PROJECT/subscriptions/SUBSCRIPTION, got %q", s)
	}
	if !projectIDRE.MatchString(parts[1]) {
		return fmt.Errorf("invalid project ID %q in %q (6 to 30 lower-case letters, digits and hyphens, starting with a letter)", parts[1], s)
	}
	if !subscriptionIDRE.MatchString(parts[3]) || strings.HasPrefix(parts[3], "goog") {
		return fmt.Errorf("invalid subscription ID %q in %q (3 to 255 letters, digits and - _ . ~ + %%, starting with a letter, not goog…)", parts[3], s)
	}
	return nil
}

// validRegistry checks a registry host[:port] as RubinRepoMan uses it (https:// is added).
func validRegistry(s string) error {
	if strings.Contains(s, "://") {
		return fmt.Errorf("must be a host or host:port without a scheme, got %q", s)
	}
	if _, err := name.NewRegistry(s, name.StrictValidation); err != nil || strings.ContainsAny(s, "/ \t") {
		return fmt.Errorf("invalid registry host %q", s)
	}
	return nil
}

// parseImageRef parses and normalises an image reference and checks that it names a tag or
// a digest explicitly: an implicit :latest is a moving target nobody meant to cache.
func parseImageRef(s string) (image.Ref, error) {
	ref, err := image.ParseRef(s)
	if err != nil {
		return image.Ref{}, err
	}
	if last := s[strings.LastIndexByte(s, '/')+1:]; ref.Digest() == "" && !strings.Contains(last, ":") {
		return image.Ref{}, fmt.Errorf("image reference %q needs a tag or a digest", s)
	}
	return ref, nil
}

// maxDisplayName bounds a SimpleRepoMan image's display name: gossip carries 256 bytes of it.
const maxDisplayName = 256

// maxParallelPulls bounds agent.max_parallel_pulls: every pull holds a download and an
// unpack in containerd, on a node that runs people's labs.
const maxParallelPulls = 16

func (a *Agent) validate(v *validator) {
	switch {
	case a.CRISocket == "":
		v.addf("agent.cri_socket", "required")
	default:
		p, ok := strings.CutPrefix(a.CRISocket, "unix://")
		if !filepath.IsAbs(p) || (!ok && strings.Contains(a.CRISocket, "://")) {
			v.addf("agent.cri_socket", "must be unix:///path or an absolute path, got %q", a.CRISocket)
		} else if len(p) > maxSocketPath {
			v.addf("agent.cri_socket", "socket path must be shorter than 108 bytes, got %d", len(p))
		}
	}
	if a.MaxParallelPulls < 1 || a.MaxParallelPulls > maxParallelPulls {
		v.addf("agent.max_parallel_pulls", "must be between 1 and %d, got %d", maxParallelPulls, a.MaxParallelPulls)
	}
	v.within("agent.pull_timeout", a.PullTimeout, 10*time.Second, 6*time.Hour)
	v.within("agent.backoff_initial", a.BackoffInitial, 100*time.Millisecond, time.Hour)
	v.within("agent.backoff_max", a.BackoffMax, 100*time.Millisecond, 24*time.Hour)
	v.within("agent.resync_interval", a.ResyncInterval, time.Second, time.Hour)
	if a.BackoffInitial.Duration > 0 && a.BackoffMax.Duration > 0 && a.BackoffInitial.Duration > a.BackoffMax.Duration {
		v.addf("agent.backoff_initial", "must be <= backoff_max (%s), got %s", a.BackoffMax.Duration, a.BackoffInitial.Duration)
	}
	if p := a.MinFreeDiskPercent; math.IsNaN(p) || p < 0 || p >= 100 {
		v.addf("agent.min_free_disk_percent", "must be >= 0 and < 100, got %v", p)
	}
	if p := a.MaxPinnedPercent; math.IsNaN(p) || p < 1 || p > 90 {
		v.addf("agent.max_pinned_percent", "must be between 1 and 90, got %v", p)
	}
	switch a.PullAuth {
	case PullAuthGoogle, PullAuthNone:
	case PullAuthDockerconfig:
		if a.Dockerconfig == "" {
			v.addf("agent.dockerconfig", "required when pull_auth is dockerconfig")
		}
	default:
		v.addf("agent.pull_auth", "must be google, dockerconfig or none, got %q", a.PullAuth)
	}
	if a.StateDir != "" && !filepath.IsAbs(a.StateDir) {
		v.addf("agent.state_dir", "must be an absolute path, got %q", a.StateDir)
	}
	switch {
	case a.DebugSocket == "":
		v.addf("agent.debug_socket", "required")
	case !filepath.IsAbs(a.DebugSocket):
		v.addf("agent.debug_socket", "must be an absolute path, got %q", a.DebugSocket)
	case len(a.DebugSocket) > maxSocketPath:
		v.addf("agent.debug_socket", "socket path must be shorter than 108 bytes, got %d", len(a.DebugSocket))
	}
}

func (cl *Cluster) validate(v *validator) {
	switch {
	case cl.BindAddr == "":
		if cl.Enabled {
			v.addf("cluster.bind_addr", "required when cluster.enabled")
		}
	case net.ParseIP(cl.BindAddr) == nil:
		v.addf("cluster.bind_addr", "must be an IP address, got %q", cl.BindAddr)
	}
	if cl.BindPort < 0 || cl.BindPort > 65535 {
		v.addf("cluster.bind_port", "must be between 0 and 65535, got %d", cl.BindPort)
	}
	if cl.AdvertiseAddr != "" && net.ParseIP(cl.AdvertiseAddr) == nil {
		v.addf("cluster.advertise_addr", "must be an IP address, got %q", cl.AdvertiseAddr)
	}
	for i, j := range cl.Join {
		if err := validJoin(j); err != nil {
			v.addf(fmt.Sprintf("cluster.join[%d]", i), "%v", err)
		}
	}
	if cl.Enabled && !cl.InsecureGossip && cl.GossipKeyFile == "" {
		v.addf("cluster.gossip_key_file", "required when cluster.enabled and not insecure_gossip")
	}
	if cl.WarmupGrace.Duration != 0 {
		v.within("cluster.warmup_grace", cl.WarmupGrace, time.Second, 24*time.Hour)
	}
}

// validJoin checks a join entry: host, host:port, IP, [IPv6]:port.
func validJoin(s string) error {
	if strings.TrimSpace(s) == "" {
		return fmt.Errorf("must not be empty")
	}
	host := s
	if net.ParseIP(s) == nil && strings.Contains(s, ":") {
		h, port, err := net.SplitHostPort(s)
		if err != nil {
			return fmt.Errorf("must be host or host:port, got %q", s)
		}
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
			return fmt.Errorf("invalid port %q in %q", port, s)
		}
		host = h
	}
	if !validHost(host) {
		return fmt.Errorf("invalid host %q", host)
	}
	return nil
}

// validHost accepts an IP address or a DNS name.
func validHost(h string) bool {
	if net.ParseIP(h) != nil {
		return true
	}
	if h == "" || len(h) > 253 {
		return false
	}
	for _, label := range strings.Split(strings.TrimSuffix(h, "."), ".") {
		if len(label) == 0 || len(label) > 63 {
			return false
		}
		for _, r := range label {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
				return false
			}
		}
	}
	return true
}

func (h *HTTP) validate(v *validator) {
	if h.Listen == "" {
		v.addf("http.listen", "required")
		return
	}
	host, port, err := net.SplitHostPort(h.Listen)
	if err != nil {
		v.addf("http.listen", "must be host:port or :port, got %q", h.Listen)
		return
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		v.addf("http.listen", "invalid port %q in %q", port, h.Listen)
	}
	if host != "" && !validHost(host) {
		v.addf("http.listen", "invalid host %q in %q", host, h.Listen)
	}
	if h.NotificationsTokenFile != "" && !filepath.IsAbs(h.NotificationsTokenFile) {
		v.addf("http.notifications_token_file", "must be an absolute path, got %q", h.NotificationsTokenFile)
	}
}
