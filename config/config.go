// Package config is cachemachine's configuration: the schema of
// /etc/cachemachine/config.yaml (design.md §2), its defaults, strict loading with precise
// error paths, validation, and the environment and flag overrides that win over the file.
//
// The intended sequence, in cmd:
//
//	cfg, err := config.Load(path)      // syntax, types, unknown fields: *ValidationError
//	cfg.ApplyEnv(os.Getenv)            // NODE_NAME, POD_IP fill empty fields
//	flags.Apply(cfg)                   // flags registered with RegisterFlags win
//	err = cfg.Validate()               // semantic checks: *ValidationError
//
// Load does not run Validate, because a flag may supply what the file lacks (for example
// --gossip-key-file); Validate must run after the overrides.
//
// A Python cachemachine autostart JSON file is valid input: JSON is YAML, and the three
// repoman types accept every field the Python service read.
package config

import (
	"fmt"
	"time"

	"github.com/cachemachine/cachemachine/image"
)

// Repoman types.
const (
	// TypeRubinRepoGar lists a Google Artifact Registry repository and applies the Rubin tag
	// policy.
	TypeRubinRepoGar = "RubinRepoGar"
	// TypeRubinRepoMan lists an OCI distribution registry repository and applies the Rubin
	// tag policy.
	TypeRubinRepoMan = "RubinRepoMan"
	// TypeSimpleRepoMan is a fixed list of images.
	TypeSimpleRepoMan = "SimpleRepoMan"
)

// Values of Agent.PullAuth.
const (
	// PullAuthNone pulls anonymously.
	PullAuthNone = "none"
	// PullAuthGoogle passes a workload-identity access token for GAR and gcr.io hosts.
	PullAuthGoogle = "google"
	// PullAuthDockerconfig reads credentials from the .dockerconfigjson at Agent.Dockerconfig.
	PullAuthDockerconfig = "dockerconfig"
)

// Defaults that are not obvious from Default alone.
const (
	// DefaultRecommendedTag is the recommended_tag of the Rubin repoman types when the
	// field is absent. An explicit "" or null means no recommended tag.
	DefaultRecommendedTag = "recommended"
	// DefaultRegistryURL is the registry_url of a RubinRepoMan when the field is absent,
	// as in the Python cachemachine.
	DefaultRegistryURL = "registry.hub.docker.com"
)

// Config is the whole configuration file. Decode it with Load or Parse, never with
// yaml.Unmarshal directly: only they fill defaults, reject unknown fields and report precise
// field paths. Marshalling with yaml.Marshal gives a file that Parse reads back unchanged.
// In a parsed Config every list and map is non-nil.
type Config struct {
	// Name is the cache name: the status path /cachemachine/{name} and the gossip label.
	Name string `yaml:"name"`
	// Labels are accepted for compatibility with the Python cachemachine and echoed in
	// status; node selection is the DaemonSet's nodeSelector.
	Labels map[string]string `yaml:"labels"`
	// RefreshInterval is how often the leader lists the sources again.
	RefreshInterval Duration `yaml:"refresh_interval"`
	// Repomen are the image sources in priority order; their lists are concatenated. An
	// empty list is valid and means nothing is cached.
	Repomen []Repoman `yaml:"repomen"`
	// Agent configures the node agent.
	Agent Agent `yaml:"agent"`
	// Cluster configures gossip membership.
	Cluster Cluster `yaml:"cluster"`
	// HTTP configures the status API server.
	HTTP HTTP `yaml:"http"`

	// file is the name used in error messages; set by Load and Parse.
	file string
	// lines maps a field path ("agent.pull_timeout") to its line in the file.
	lines map[string]int
	// sources maps a field path to the flag or environment variable that last set it.
	sources map[string]string
}

// Repoman is one image source. It is the union of the fields of the three types; a field
// that does not belong to Type is rejected by Parse, and the `types` struct tag says which
// types own each field.
type Repoman struct {
	// Type is RubinRepoGar, RubinRepoMan or SimpleRepoMan.
	Type string `yaml:"type" types:"RubinRepoGar,RubinRepoMan,SimpleRepoMan"`

	// ProjectID is the GCP project that hosts the Artifact Registry repository.
	ProjectID string `yaml:"project_id" types:"RubinRepoGar"`
	// Location is the Artifact Registry region, e.g. us-central1.
	Location string `yaml:"location" types:"RubinRepoGar"`
	// GARRepository is the Artifact Registry repository, e.g. sciplat.
	GARRepository string `yaml:"gar_repository" types:"RubinRepoGar"`
	// GARImage is the image (package) inside GARRepository, e.g. sciplat-lab.
	GARImage string `yaml:"gar_image" types:"RubinRepoGar"`
	// Endpoint optionally overrides the Artifact Registry API endpoint (emulators, tests).
	Endpoint string `yaml:"endpoint" types:"RubinRepoGar"`
	// InsecureEndpoint talks to Endpoint in plaintext without credentials: only for
	// emulators and tests.
	InsecureEndpoint bool `yaml:"insecure_endpoint" types:"RubinRepoGar"`
	// PubSubSubscription ("projects/P/subscriptions/S") is a subscription to the `gcr` topic
	// that Artifact Registry publishes every push, tag and delete of the project to: the
	// leader receives from it and lists the source again soon after a push of its image. The
	// Pub/Sub client honours PUBSUB_EMULATOR_HOST.
	PubSubSubscription string `yaml:"pubsub_subscription,omitempty" types:"RubinRepoGar"`

	// RegistryURL is the registry host of a RubinRepoMan (default registry.hub.docker.com).
	// A RubinRepoGar accepts it because Python-era configs set it, but ignores it: GAR
	// images always live on {location}-docker.pkg.dev.
	RegistryURL string `yaml:"registry_url" types:"RubinRepoGar,RubinRepoMan"`
	// Repo is the repository of a RubinRepoMan, e.g. lsstsqre/sciplat-lab.
	Repo string `yaml:"repo" types:"RubinRepoMan"`

	// RecommendedTag is always cached and listed first (default "recommended"; "" for none).
	RecommendedTag string `yaml:"recommended_tag" types:"RubinRepoGar,RubinRepoMan"`
	// NumReleases is how many of the newest releases to cache.
	NumReleases int `yaml:"num_releases" types:"RubinRepoGar,RubinRepoMan"`
	// NumWeeklies is how many of the newest weeklies to cache.
	NumWeeklies int `yaml:"num_weeklies" types:"RubinRepoGar,RubinRepoMan"`
	// NumDailies is how many of the newest dailies to cache.
	NumDailies int `yaml:"num_dailies" types:"RubinRepoGar,RubinRepoMan"`
	// Cycle, when set, restricts images to this SAL XML cycle.
	Cycle *int `yaml:"cycle" types:"RubinRepoGar,RubinRepoMan"`
	// AliasTags are tags known to be aliases of other images (e.g. latest_weekly).
	AliasTags []string `yaml:"alias_tags" types:"RubinRepoGar,RubinRepoMan"`
	// Pin are extra tags that are always cached.
	Pin []string `yaml:"pin" types:"RubinRepoGar,RubinRepoMan"`

	// Images is the fixed list of a SimpleRepoMan.
	Images []Image `yaml:"images" types:"SimpleRepoMan"`
}

// Image is one entry of a SimpleRepoMan.
type Image struct {
	// ImageURL is the image reference, with an explicit tag or digest.
	ImageURL string `yaml:"image_url"`
	// Ref is ImageURL parsed and normalised by Validate.
	Ref image.Ref `yaml:"-"`
	// Name is the display name; consumers show the tag when it is empty.
	Name string `yaml:"name"`
	// ImageHash optionally pins the manifest digest (sha256:...), as the Python
	// cachemachine allowed.
	ImageHash string `yaml:"image_hash,omitempty"`
}

// Agent configures the node agent.
type Agent struct {
	// CRISocket is the CRI endpoint: unix:///path or an absolute path.
	CRISocket string `yaml:"cri_socket"`
	// MaxParallelPulls bounds concurrent pulls per node.
	MaxParallelPulls int `yaml:"max_parallel_pulls"`
	// PullTimeout is the deadline of one pull attempt.
	PullTimeout Duration `yaml:"pull_timeout"`
	// BackoffInitial is the first per-image retry delay; it doubles, with jitter.
	BackoffInitial Duration `yaml:"backoff_initial"`
	// BackoffMax caps the per-image retry delay.
	BackoffMax Duration `yaml:"backoff_max"`
	// ResyncInterval is how often the agent takes a full CRI inventory even when nothing
	// asked for one; it bounds how long an image removed by kubelet image GC stays missing.
	ResyncInterval Duration `yaml:"resync_interval"`
	// MinFreeDiskPercent holds a pull that would leave less free space than this on the
	// image filesystem; 0 disables the guard.
	MinFreeDiskPercent float64 `yaml:"min_free_disk_percent"`
	// PinImages pins the desired images the node holds against the kubelet's image GC
	// (containerd's io.cri-containerd.pinned label; honoured from containerd 1.6.25, 1.7.10
	// and 2.x).
	PinImages bool `yaml:"pin_images"`
	// MaxPinnedPercent caps the pins at this share of the image filesystem; images beyond
	// it, lowest priority first, stay unpinned so that image GC can still free space.
	MaxPinnedPercent float64 `yaml:"max_pinned_percent"`
	// PullAuth is google, dockerconfig or none (the default, so that a config without it
	// works off GKE; GKE deployments set google).
	PullAuth string `yaml:"pull_auth"`
	// Dockerconfig is the .dockerconfigjson path, required when PullAuth is dockerconfig.
	Dockerconfig string `yaml:"dockerconfig"`
	// StateDir keeps agent state across restarts.
	StateDir string `yaml:"state_dir"`
	// DebugSocket is the path of the node debug socket.
	DebugSocket string `yaml:"debug_socket"`

	// NodeName is this node's name, from NODE_NAME or --node-name; never read from the
	// file. Validate does not require it: cmd falls back to the host name.
	NodeName string `yaml:"-"`
}

// Cluster configures gossip membership.
type Cluster struct {
	// Enabled false runs the agent standalone: it lists the sources itself.
	Enabled bool `yaml:"enabled"`
	// BindAddr is the IP address memberlist binds (UDP and TCP).
	BindAddr string `yaml:"bind_addr"`
	// BindPort is the memberlist port; 0 picks a free port (tests).
	BindPort int `yaml:"bind_port"`
	// AdvertiseAddr is the IP address advertised to peers; POD_IP fills it when empty.
	AdvertiseAddr string `yaml:"advertise_addr"`
	// Join lists DNS names (all A records) or host:port of peers to join.
	Join []string `yaml:"join"`
	// GossipKeyFile holds base64 of a 16, 24 or 32 byte key; required when Enabled and
	// not InsecureGossip.
	GossipKeyFile string `yaml:"gossip_key_file"`
	// InsecureGossip disables gossip encryption (local demos and tests only); the key file
	// is then not required.
	InsecureGossip bool `yaml:"insecure_gossip"`
	// WarmupGrace is how long after its agent started a node that has not yet held every
	// desired image is warming: it does not count for common_cache meanwhile, so a node that
	// joins the pool does not shrink the available images. 0 counts every alive node at once
	// (the Python rule).
	WarmupGrace Duration `yaml:"warmup_grace"`
}

// HTTP configures the status API server.
type HTTP struct {
	// Listen is the host:port of the status API (":8080").
	Listen string `yaml:"listen"`
	// NotificationsTokenFile holds the bearer token a registry must send to
	// POST /cachemachine/{name}/notifications (Docker distribution push notifications, which
	// make the leader list the matching RubinRepoMan sources again). "" turns the endpoint off.
	NotificationsTokenFile string `yaml:"notifications_token_file,omitempty"`
}

// Default returns the configuration used for every field the file leaves out.
func Default() Config {
	return Config{
		Name:            "jupyter",
		Labels:          map[string]string{},
		RefreshInterval: Duration{5 * time.Minute},
		Repomen:         []Repoman{},
		Agent: Agent{
			CRISocket:          "unix:///run/containerd/containerd.sock",
			MaxParallelPulls:   2,
			PullTimeout:        Duration{10 * time.Minute},
			BackoffInitial:     Duration{10 * time.Second},
			BackoffMax:         Duration{5 * time.Minute},
			ResyncInterval:     Duration{15 * time.Second},
			MinFreeDiskPercent: 15,
			PinImages:          true,
			MaxPinnedPercent:   50,
			PullAuth:           PullAuthNone,
			StateDir:           "/var/lib/cachemachine",
			DebugSocket:        "/run/cachemachine/agent.sock",
		},
		Cluster: Cluster{
			Enabled:     true,
			BindAddr:    "0.0.0.0",
			BindPort:    7946,
			Join:        []string{},
			WarmupGrace: Duration{10 * time.Minute},
		},
		HTTP: HTTP{Listen: ":8080"},
	}
}

// DefaultRepoman returns the defaults of a repoman of type typ: the recommended tag for the
// Rubin types, the Docker Hub registry for RubinRepoMan, and empty (non-nil) lists.
func DefaultRepoman(typ string) Repoman {
	r := Repoman{Type: typ}
	switch typ {
	case TypeRubinRepoGar, TypeRubinRepoMan:
		r.RecommendedTag = DefaultRecommendedTag
		r.AliasTags, r.Pin = []string{}, []string{}
		if typ == TypeRubinRepoMan {
			r.RegistryURL = DefaultRegistryURL
		}
	case TypeSimpleRepoMan:
		r.Images = []Image{}
	}
	return r
}

// File returns the name Load or Parse read the configuration from ("" for Default).
func (c *Config) File() string { return c.file }

// Duration is a time.Duration written as a Go duration string ("5m", "10s") in YAML and
// JSON.
type Duration struct {
	time.Duration
}

// MarshalText writes the duration as a Go duration string; yaml.v3 and encoding/json use it.
func (d Duration) MarshalText() ([]byte, error) {
	return []byte(d.Duration.String()), nil
}

// UnmarshalText parses a Go duration string.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return fmt.Errorf("invalid duration %q", b)
	}
	d.Duration = v
	return nil
}
