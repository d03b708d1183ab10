package config

import (
	"errors"
	"flag"
	"io"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/cachemachine/cachemachine/image"
	"github.com/stretchr/testify/require"
	"gopkg.in/yaml.v3"
)

// validYAML is the smallest file that validates: the gossip key is the only setting without
// a usable default.
const validYAML = "cluster:\n  gossip_key_file: /etc/cachemachine/gossip/key\n"

func problems(t *testing.T, err error) *ValidationError {
	t.Helper()
	require.Error(t, err)
	var ve *ValidationError
	require.True(t, errors.As(err, &ve), "want *ValidationError, got %T: %v", err, err)
	return ve
}

// requireProblem asserts that ve has a problem at field whose message contains msg, and that
// Error() renders it as "file: field: msg".
func requireProblem(t *testing.T, ve *ValidationError, field, msg string) {
	t.Helper()
	for _, p := range ve.Problems {
		if p.Field == field && strings.Contains(p.Message, msg) {
			prefix := field + ": "
			if field == "" {
				prefix = ""
			}
			if ve.File != "" {
				prefix = ve.File + ": " + prefix
			}
			require.Contains(t, ve.Error(), prefix+p.Message)
			return
		}
	}
	require.Failf(t, "problem not found", "want %s: %s\ngot:\n%s", field, msg, ve.Error())
}

func TestDesignExample(t *testing.T) {
	t.Parallel()
	c, err := Load("testdata/design-example.yaml")
	require.NoError(t, err)
	require.NoError(t, c.Validate())
	require.Equal(t, "testdata/design-example.yaml", c.File())

	require.Equal(t, "jupyter", c.Name)
	require.Equal(t, map[string]string{}, c.Labels)
	require.Equal(t, 5*time.Minute, c.RefreshInterval.Duration)
	require.Len(t, c.Repomen, 3)

	gar := c.Repomen[0]
	require.Equal(t, Repoman{
		Type: TypeRubinRepoGar, ProjectID: "rubin-shared-services-71ec", Location: "us-central1",
		GARRepository: "sciplat", GARImage: "sciplat-lab", RecommendedTag: "recommended",
		NumReleases: 1, NumWeeklies: 2, NumDailies: 3, Cycle: nil,
		AliasTags: []string{}, Pin: []string{},
	}, gar)

	man := c.Repomen[1]
	require.Equal(t, Repoman{
		Type: TypeRubinRepoMan, RegistryURL: "registry.hub.docker.com", Repo: "lsstsqre/sciplat-lab",
		RecommendedTag: "recommended", NumReleases: 1, NumWeeklies: 2, NumDailies: 3,
		AliasTags: []string{}, Pin: []string{},
	}, man)

	require.Equal(t, Repoman{Type: TypeSimpleRepoMan, Images: []Image{{
		ImageURL: "registry.hub.docker.com/lsstsqre/sciplat-lab:w_2022_40", Name: "Weekly 2022_40",
		Ref: image.MustParseRef("registry.hub.docker.com/lsstsqre/sciplat-lab:w_2022_40"),
	}}}, c.Repomen[2])

	require.Equal(t, Agent{
		CRISocket:          "unix:///run/containerd/containerd.sock",
		MaxParallelPulls:   2,
		PullTimeout:        Duration{10 * time.Minute},
		BackoffInitial:     Duration{10 * time.Second},
		BackoffMax:         Duration{5 * time.Minute},
		ResyncInterval:     Duration{15 * time.Second},
		MinFreeDiskPercent: 15,
		PinImages:          true,
		MaxPinnedPercent:   50,
		PullAuth:           PullAuthGoogle,
		Dockerconfig:       "/etc/secrets/.dockerconfigjson",
		StateDir:           "/var/lib/cachemachine",
		DebugSocket:        "/run/cachemachine/agent.sock",
	}, c.Agent)
	require.Equal(t, Cluster{
		Enabled: true, BindAddr: "0.0.0.0", BindPort: 7946,
		Join:          []string{"cachemachine-gossip.cachemachine.svc.cluster.local"},
		GossipKeyFile: "/etc/cachemachine/gossip/key",
		WarmupGrace:   Duration{10 * time.Minute},
	}, c.Cluster)
	require.Equal(t, ":8080", c.HTTP.Listen)
}

func TestPythonAutostartJSON(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		file  string
		check func(t *testing.T, c *Config)
	}{
		{
			name: "idf GAR with registry_url and SimpleRepoMan",
			file: "testdata/python-idf.json",
			check: func(t *testing.T, c *Config) {
				require.Len(t, c.Repomen, 2)
				require.Equal(t, TypeRubinRepoGar, c.Repomen[0].Type)
				require.Equal(t, "us-central1-docker.pkg.dev", c.Repomen[0].RegistryURL)
				require.Equal(t, "sciplat-lab", c.Repomen[0].GARImage)
				require.Equal(t, 3, c.Repomen[0].NumDailies)
				require.Equal(t, "Weekly 2022_40", c.Repomen[1].Images[0].Name)
			},
		},
		{
			name: "summit cycle, alias tags, default registry, image_hash",
			file: "testdata/python-summit.json",
			check: func(t *testing.T, c *Config) {
				require.Equal(t, map[string]string{"jupyterlab": "ok"}, c.Labels)
				require.Len(t, c.Repomen, 3)
				require.NotNil(t, c.Repomen[0].Cycle)
				require.Equal(t, 34, *c.Repomen[0].Cycle)
				require.Equal(t, []string{"latest", "latest_daily", "latest_weekly"}, c.Repomen[0].AliasTags)
				require.Equal(t, "recommended_c0034", c.Repomen[0].RecommendedTag)
				require.Equal(t, DefaultRegistryURL, c.Repomen[1].RegistryURL)
				require.Equal(t, DefaultRecommendedTag, c.Repomen[1].RecommendedTag)
				require.Equal(t, "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", c.Repomen[2].Images[0].ImageHash)
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c, err := Load(tt.file)
			require.NoError(t, err)
			tt.check(t, c)
			// Defaults fill what the Python file never had.
			require.Equal(t, Default().Agent, c.Agent)
			// The gossip key comes from a flag in a deployment that keeps the Python file.
			fs := flag.NewFlagSet("test", flag.ContinueOnError)
			f := RegisterFlags(fs)
			require.NoError(t, fs.Parse([]string{"--gossip-key-file", "/etc/key"}))
			f.Apply(c)
			require.NoError(t, c.Validate())
		})
	}
}

func TestDefaults(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		input string
		check func(t *testing.T, c *Config)
	}{
		{"empty file", "", func(t *testing.T, c *Config) {
			requireSameConfig(t, Default(), *c)
		}},
		{"null document", "~\n", func(t *testing.T, c *Config) {
			requireSameConfig(t, Default(), *c)
		}},
		{"comments only", "# nothing\n", func(t *testing.T, c *Config) {
			requireSameConfig(t, Default(), *c)
		}},
		{"partial section keeps other defaults", "agent:\n  max_parallel_pulls: 5\n", func(t *testing.T, c *Config) {
			want := Default().Agent
			want.MaxParallelPulls = 5
			require.Equal(t, want, c.Agent)
			require.Equal(t, Default().Cluster, c.Cluster)
		}},
		{"rubin types default recommended_tag", "repomen:\n- type: RubinRepoGar\n- type: RubinRepoMan\n- type: SimpleRepoMan\n", func(t *testing.T, c *Config) {
			require.Equal(t, "recommended", c.Repomen[0].RecommendedTag)
			require.Empty(t, c.Repomen[0].RegistryURL)
			require.Equal(t, "recommended", c.Repomen[1].RecommendedTag)
			require.Equal(t, "registry.hub.docker.com", c.Repomen[1].RegistryURL)
			require.Empty(t, c.Repomen[2].RecommendedTag)
		}},
		{"explicit empty recommended_tag means none", "repomen:\n- {type: RubinRepoMan, repo: a/b, recommended_tag: ''}\n- {type: RubinRepoMan, repo: a/b, recommended_tag: null}\n", func(t *testing.T, c *Config) {
			require.Empty(t, c.Repomen[0].RecommendedTag)
			require.Empty(t, c.Repomen[1].RecommendedTag)
		}},
		{"cycle null and set", "repomen:\n- {type: RubinRepoMan, repo: a/b, cycle: null}\n- {type: RubinRepoMan, repo: a/b, cycle: 0}\n", func(t *testing.T, c *Config) {
			require.Nil(t, c.Repomen[0].Cycle)
			require.NotNil(t, c.Repomen[1].Cycle)
			require.Equal(t, 0, *c.Repomen[1].Cycle)
		}},
		{"YAML anchors and merge keys", "x: &base {type: RubinRepoMan, repo: a/b, num_dailies: 4}\n", nil},
		{"merge key in repomen", "repomen:\n- &r {type: RubinRepoMan, repo: a/b, num_dailies: 4}\n- {<<: *r, num_dailies: 1}\n", func(t *testing.T, c *Config) {
			require.Equal(t, c.Repomen[0].Repo, c.Repomen[1].Repo)
			require.Equal(t, TypeRubinRepoMan, c.Repomen[1].Type)
			require.Equal(t, 4, c.Repomen[0].NumDailies)
			require.Equal(t, 1, c.Repomen[1].NumDailies)
		}},
		{"null section keeps defaults", "agent:\ncluster: ~\n", func(t *testing.T, c *Config) {
			require.Equal(t, Default().Agent, c.Agent)
			require.Equal(t, Default().Cluster, c.Cluster)
		}},
		{"null list is empty", "repomen:\nlabels:\n", func(t *testing.T, c *Config) {
			require.Equal(t, []Repoman{}, c.Repomen)
			require.Equal(t, map[string]string{}, c.Labels)
		}},
		{"integers in string fields", "name: 123\nlabels: {a: 1}\n", func(t *testing.T, c *Config) {
			require.Equal(t, "123", c.Name)
			require.Equal(t, map[string]string{"a": "1"}, c.Labels)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c, err := Parse("config.yaml", []byte(tt.input))
			if tt.check == nil {
				// Top-level x is not a field: anchors are fine, unknown fields are not.
				requireProblem(t, problems(t, err), "x", "unknown field")
				return
			}
			require.NoError(t, err)
			tt.check(t, c)
		})
	}
}

// requireSameConfig compares the schema fields only.
func requireSameConfig(t *testing.T, want, got Config) {
	t.Helper()
	want.file, want.lines, want.sources = "", nil, nil
	got.file, got.lines, got.sources = "", nil, nil
	require.Equal(t, want, got)
}

func TestParseErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		input string
		field string
		msg   string
	}{
		{"syntax", "agent: [\n", "", "invalid YAML: "},
		{"root not a mapping", "- a\n", "", "must be a mapping, got a list"},
		{"unknown top-level field", "nmae: x\n", "nmae", "unknown field (did you mean name?)"},
		{"unknown nested field", "agent:\n  max_paralel_pulls: 3\n", "agent.max_paralel_pulls", "unknown field (did you mean max_parallel_pulls?)"},
		{"unknown field no suggestion", "cluster:\n  zzzzzzzz: 1\n", "cluster.zzzzzzzz", "unknown field"},
		{"node_name is not a file field", "agent:\n  node_name: n1\n", "agent.node_name", "unknown field"},
		{"duplicate field", "name: a\nname: b\n", "name", "duplicate field (first at line 1)"},
		{"invalid duration", "agent:\n  pull_timeout: 10 minutes\n", "agent.pull_timeout", `invalid duration "10 minutes"`},
		{"duration without unit", "refresh_interval: 300\n", "refresh_interval", `invalid duration "300"`},
		{"duration not scalar", "agent:\n  backoff_max: [1]\n", "agent.backoff_max", "must be a duration, got a list"},
		{"int from string", "cluster:\n  bind_port: abc\n", "cluster.bind_port", `must be an integer, got "abc"`},
		{"int from quoted number", "cluster:\n  bind_port: \"7946\"\n", "cluster.bind_port", `must be an integer, got "7946"`},
		{"int from float", "agent:\n  max_parallel_pulls: 1.5\n", "agent.max_parallel_pulls", `must be an integer, got "1.5"`},
		{"int overflow", "agent:\n  max_parallel_pulls: 99999999999999999999999\n", "agent.max_parallel_pulls", "must be an integer"},
		{"float from string", "agent:\n  min_free_disk_percent: lots\n", "agent.min_free_disk_percent", `must be a number, got "lots"`},
		{"float NaN", "agent:\n  min_free_disk_percent: .nan\n", "agent.min_free_disk_percent", "must be a number"},
		{"bool from string", "cluster:\n  enabled: \"yes\"\n", "cluster.enabled", `must be true or false, got "yes"`},
		{"string from mapping", "name: {a: b}\n", "name", "must be a string, got a mapping"},
		{"list from scalar", "cluster:\n  join: host1\n", "cluster.join", `must be a list, got "host1"`},
		{"section not a mapping", "agent: 3\n", "agent", `must be a mapping, got "3"`},
		{"labels not a mapping", "labels: [a]\n", "labels", "must be a mapping, got a list"},
		{"labels value not scalar", "labels: {a: [b]}\n", "labels.a", "must be a string, got a list"},
		{"repomen not a list", "repomen: {type: SimpleRepoMan}\n", "repomen", "must be a list, got a mapping"},
		{"repoman not a mapping", "repomen: [x]\n", "repomen[0]", `must be a mapping, got "x"`},
		{"repoman null", "repomen:\n-\n", "repomen[0]", "must be a mapping, got null"},
		{"repoman type missing", "repomen:\n- repo: a/b\n", "repomen[0].type", "required (want RubinRepoGar, RubinRepoMan or SimpleRepoMan)"},
		{"repoman type unknown", "repomen:\n- type: Foo\n", "repomen[0].type", `unknown repoman type "Foo" (want RubinRepoGar, RubinRepoMan or SimpleRepoMan)`},
		{"repoman type not a string", "repomen:\n- type: [a]\n", "repomen[0].type", "must be a string, got a list"},
		{"field of another type", "repomen:\n- type: RubinRepoGar\n  project_id: p\n- type: RubinRepoMan\n  repo: a/b\n- type: SimpleRepoMan\n  repo: a/b\n", "repomen[2].repo", "not a field of SimpleRepoMan"},
		{"gar field on RubinRepoMan", "repomen:\n- type: RubinRepoMan\n  gar_image: x\n", "repomen[0].gar_image", "not a field of RubinRepoMan"},
		{"endpoint on RubinRepoMan", "repomen:\n- type: RubinRepoMan\n  endpoint: x\n", "repomen[0].endpoint", "not a field of RubinRepoMan"},
		{"images on RubinRepoGar", "repomen:\n- type: RubinRepoGar\n  images: []\n", "repomen[0].images", "not a field of RubinRepoGar"},
		{"unknown repoman field", "repomen:\n- type: RubinRepoMan\n  num_weekly: 1\n", "repomen[0].num_weekly", "unknown field (did you mean num_weeklies?)"},
		{"unknown image field", "repomen:\n- type: SimpleRepoMan\n  images: [{image_url: a:b, nme: x}]\n", "repomen[0].images[0].nme", "unknown field (did you mean name?)"},
		{"num_* wrong type", "repomen:\n- type: RubinRepoMan\n  repo: a/b\n  num_weeklies: two\n", "repomen[0].num_weeklies", `must be an integer, got "two"`},
		{"cycle wrong type", "repomen:\n- type: RubinRepoMan\n  cycle: c34\n", "repomen[0].cycle", `must be an integer, got "c34"`},
		{"non-string key", "agent:\n  [a]: 1\n", "agent", "keys must be strings, got a list"},
		{"merge of a scalar", "agent:\n  <<: 3\n", "agent", `merge (<<) must be a mapping, got "3"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := Parse("config.yaml", []byte(tt.input))
			requireProblem(t, problems(t, err), tt.field, tt.msg)
		})
	}
}

// validConfig returns a Config that passes Validate, with one repoman of each type.
func validConfig(t *testing.T) *Config {
	t.Helper()
	c, err := Load("testdata/design-example.yaml")
	require.NoError(t, err)
	require.NoError(t, c.Validate())
	return c
}

func TestValidateErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		mutate func(c *Config)
		field  string
		msg    string
	}{
		{"name empty", func(c *Config) { c.Name = "" }, "name", "required"},
		{"name not a DNS label", func(c *Config) { c.Name = "Jupyter Lab" }, "name", `must be a DNS label`},
		{"name with slash", func(c *Config) { c.Name = "a/b" }, "name", `must be a DNS label`},
		{"name too long", func(c *Config) { c.Name = strings.Repeat("a", 64) }, "name", `must be a DNS label`},
		{"refresh_interval zero", func(c *Config) { c.RefreshInterval = Duration{} }, "refresh_interval", "must be between 10s and 24h0m0s, got 0s"},
		{"refresh_interval 1ns", func(c *Config) { c.RefreshInterval = Duration{time.Nanosecond} }, "refresh_interval", "must be between 10s and 24h0m0s, got 1ns"},

		{"gar project_id", func(c *Config) { c.Repomen[0].ProjectID = "" }, "repomen[0].project_id", "required for RubinRepoGar"},
		{"gar location", func(c *Config) { c.Repomen[0].Location = "" }, "repomen[0].location", "required for RubinRepoGar"},
		{"gar repository", func(c *Config) { c.Repomen[0].GARRepository = "" }, "repomen[0].gar_repository", "required for RubinRepoGar"},
		{"gar image", func(c *Config) { c.Repomen[0].GARImage = "" }, "repomen[0].gar_image", "required for RubinRepoGar"},
		{"gar project_id with slash", func(c *Config) { c.Repomen[0].ProjectID = "a/b" }, "repomen[0].project_id", `invalid value "a/b"`},
		{"insecure_endpoint without endpoint", func(c *Config) { c.Repomen[0].InsecureEndpoint = true }, "repomen[0].insecure_endpoint", "requires endpoint"},
		{"pubsub_subscription a topic", func(c *Config) { c.Repomen[0].PubSubSubscription = "projects/rubin-71ec/topics/gcr" }, "repomen[0].pubsub_subscription", `must be projects/PROJECT/subscriptions/SUBSCRIPTION, got "projects/rubin-71ec/topics/gcr"`},
		{"pubsub_subscription bare ID", func(c *Config) { c.Repomen[0].PubSubSubscription = "gcr-cachemachine" }, "repomen[0].pubsub_subscription", "must be projects/PROJECT/subscriptions/SUBSCRIPTION"},
		{"pubsub_subscription project", func(c *Config) { c.Repomen[0].PubSubSubscription = "projects/Rubin/subscriptions/gcr" }, "repomen[0].pubsub_subscription", `invalid project ID "Rubin"`},
		{"pubsub_subscription ID", func(c *Config) { c.Repomen[0].PubSubSubscription = "projects/rubin-71ec/subscriptions/1x" }, "repomen[0].pubsub_subscription", `invalid subscription ID "1x"`},
		{"pubsub_subscription goog", func(c *Config) { c.Repomen[0].PubSubSubscription = "projects/rubin-71ec/subscriptions/goog-x" }, "repomen[0].pubsub_subscription", `invalid subscription ID "goog-x"`},
		{"num_releases negative", func(c *Config) { c.Repomen[0].NumReleases = -1 }, "repomen[0].num_releases", "must be >= 0"},
		{"num_weeklies negative", func(c *Config) { c.Repomen[1].NumWeeklies = -2 }, "repomen[1].num_weeklies", "must be >= 0"},
		{"num_dailies negative", func(c *Config) { c.Repomen[1].NumDailies = -3 }, "repomen[1].num_dailies", "must be >= 0"},
		{"cycle negative", func(c *Config) { n := -1; c.Repomen[1].Cycle = &n }, "repomen[1].cycle", "must be >= 0"},
		{"alias tag invalid", func(c *Config) { c.Repomen[0].AliasTags = []string{"ok", "not ok"} }, "repomen[0].alias_tags[1]", `invalid tag "not ok"`},
		{"pin tag invalid", func(c *Config) { c.Repomen[1].Pin = []string{""} }, "repomen[1].pin[0]", `invalid tag ""`},
		{"recommended tag invalid", func(c *Config) { c.Repomen[1].RecommendedTag = ":x" }, "repomen[1].recommended_tag", `invalid tag ":x"`},
		{"rubinrepoman registry_url", func(c *Config) { c.Repomen[1].RegistryURL = "" }, "repomen[1].registry_url", "required for RubinRepoMan"},
		{"rubinrepoman registry_url scheme", func(c *Config) { c.Repomen[1].RegistryURL = "https://ghcr.io" }, "repomen[1].registry_url", "without a scheme"},
		{"rubinrepoman registry_url path", func(c *Config) { c.Repomen[1].RegistryURL = "ghcr.io/x" }, "repomen[1].registry_url", "invalid registry host"},
		{"rubinrepoman repo", func(c *Config) { c.Repomen[1].Repo = "" }, "repomen[1].repo", "required for RubinRepoMan"},
		{"rubinrepoman repo invalid", func(c *Config) { c.Repomen[1].Repo = "LSST/Lab" }, "repomen[1].repo", `invalid repository "LSST/Lab"`},
		{"simple images empty", func(c *Config) { c.Repomen[2].Images = nil }, "repomen[2].images", "required for SimpleRepoMan"},
		{"image_url empty", func(c *Config) { c.Repomen[2].Images[0].ImageURL = "" }, "repomen[2].images[0].image_url", "required"},
		{"image name too long", func(c *Config) { c.Repomen[2].Images[0].Name = strings.Repeat("x", 257) }, "repomen[2].images[0].name", "must be at most 256 bytes, got 257"},
		{"image_url without tag", func(c *Config) { c.Repomen[2].Images[0].ImageURL = "lsstsqre/sciplat-lab" }, "repomen[2].images[0].image_url", "needs a tag or a digest"},
		{"image_url registry port no tag", func(c *Config) { c.Repomen[2].Images[0].ImageURL = "localhost:5000/lab" }, "repomen[2].images[0].image_url", "needs a tag or a digest"},
		{"image_url invalid", func(c *Config) { c.Repomen[2].Images[0].ImageURL = "UPPER/case:tag" }, "repomen[2].images[0].image_url", "invalid image reference"},
		{"image_hash invalid", func(c *Config) { c.Repomen[2].Images[0].ImageHash = "md5:abc" }, "repomen[2].images[0].image_hash", "must be a digest"},
		{"repoman type empty in code", func(c *Config) { c.Repomen[2].Type = "" }, "repomen[2].type", "required"},
		{"repoman type unknown in code", func(c *Config) { c.Repomen[2].Type = "Foo" }, "repomen[2].type", `unknown repoman type "Foo"`},

		{"cri_socket empty", func(c *Config) { c.Agent.CRISocket = "" }, "agent.cri_socket", "required"},
		{"cri_socket relative", func(c *Config) { c.Agent.CRISocket = "run/containerd.sock" }, "agent.cri_socket", "must be unix:///path or an absolute path"},
		{"cri_socket tcp", func(c *Config) { c.Agent.CRISocket = "tcp://localhost:1234" }, "agent.cri_socket", "must be unix:///path or an absolute path"},
		{"cri_socket unix relative", func(c *Config) { c.Agent.CRISocket = "unix://run/c.sock" }, "agent.cri_socket", "must be unix:///path or an absolute path"},
		{"cri_socket too long", func(c *Config) { c.Agent.CRISocket = "unix:///" + strings.Repeat("a", 120) }, "agent.cri_socket", "shorter than 108 bytes"},
		{"max_parallel_pulls zero", func(c *Config) { c.Agent.MaxParallelPulls = 0 }, "agent.max_parallel_pulls", "must be between 1 and 16, got 0"},
		{"max_parallel_pulls 1000", func(c *Config) { c.Agent.MaxParallelPulls = 1000 }, "agent.max_parallel_pulls", "must be between 1 and 16, got 1000"},
		{"pull_timeout zero", func(c *Config) { c.Agent.PullTimeout = Duration{} }, "agent.pull_timeout", "must be between 10s and 6h0m0s, got 0s"},
		{"pull_timeout a week", func(c *Config) { c.Agent.PullTimeout = Duration{7 * 24 * time.Hour} }, "agent.pull_timeout", "must be between 10s and 6h0m0s"},
		{"backoff_initial negative", func(c *Config) { c.Agent.BackoffInitial = Duration{-time.Second} }, "agent.backoff_initial", "must be between 100ms and 1h0m0s, got -1s"},
		{"backoff_max zero", func(c *Config) { c.Agent.BackoffMax = Duration{} }, "agent.backoff_max", "must be between 100ms and 24h0m0s, got 0s"},
		{"resync_interval zero", func(c *Config) { c.Agent.ResyncInterval = Duration{} }, "agent.resync_interval", "must be between 1s and 1h0m0s, got 0s"},
		{"resync_interval 1ns", func(c *Config) { c.Agent.ResyncInterval = Duration{time.Nanosecond} }, "agent.resync_interval", "must be between 1s and 1h0m0s, got 1ns"},
		{"backoff_initial above max", func(c *Config) { c.Agent.BackoffInitial = Duration{time.Hour} }, "agent.backoff_initial", "must be <= backoff_max (5m0s), got 1h0m0s"},
		{"min_free_disk_percent negative", func(c *Config) { c.Agent.MinFreeDiskPercent = -1 }, "agent.min_free_disk_percent", "must be >= 0 and < 100"},
		{"min_free_disk_percent 100", func(c *Config) { c.Agent.MinFreeDiskPercent = 100 }, "agent.min_free_disk_percent", "must be >= 0 and < 100"},
		{"max_pinned_percent 0", func(c *Config) { c.Agent.MaxPinnedPercent = 0 }, "agent.max_pinned_percent", "must be between 1 and 90, got 0"},
		{"max_pinned_percent 95", func(c *Config) { c.Agent.MaxPinnedPercent = 95 }, "agent.max_pinned_percent", "must be between 1 and 90, got 95"},
		{"pull_auth unknown", func(c *Config) { c.Agent.PullAuth = "basic" }, "agent.pull_auth", `must be google, dockerconfig or none, got "basic"`},
		{"pull_auth empty", func(c *Config) { c.Agent.PullAuth = "" }, "agent.pull_auth", `must be google, dockerconfig or none, got ""`},
		{"dockerconfig required", func(c *Config) { c.Agent.PullAuth = PullAuthDockerconfig; c.Agent.Dockerconfig = "" }, "agent.dockerconfig", "required when pull_auth is dockerconfig"},
		{"state_dir relative", func(c *Config) { c.Agent.StateDir = "state" }, "agent.state_dir", "must be an absolute path"},
		{"debug_socket empty", func(c *Config) { c.Agent.DebugSocket = "" }, "agent.debug_socket", "required"},
		{"debug_socket relative", func(c *Config) { c.Agent.DebugSocket = "agent.sock" }, "agent.debug_socket", "must be an absolute path"},
		{"debug_socket too long", func(c *Config) { c.Agent.DebugSocket = "/" + strings.Repeat("a", 107) }, "agent.debug_socket", "shorter than 108 bytes, got 108"},

		{"bind_addr not an IP", func(c *Config) { c.Cluster.BindAddr = "localhost" }, "cluster.bind_addr", "must be an IP address"},
		{"bind_addr empty", func(c *Config) { c.Cluster.BindAddr = "" }, "cluster.bind_addr", "required when cluster.enabled"},
		{"bind_port too big", func(c *Config) { c.Cluster.BindPort = 65536 }, "cluster.bind_port", "must be between 0 and 65535, got 65536"},
		{"bind_port negative", func(c *Config) { c.Cluster.BindPort = -1 }, "cluster.bind_port", "must be between 0 and 65535"},
		{"advertise_addr not an IP", func(c *Config) { c.Cluster.AdvertiseAddr = "pod" }, "cluster.advertise_addr", "must be an IP address"},
		{"join empty entry", func(c *Config) { c.Cluster.Join = []string{"a", " "} }, "cluster.join[1]", "must not be empty"},
		{"join bad port", func(c *Config) { c.Cluster.Join = []string{"host:99999"} }, "cluster.join[0]", `invalid port "99999"`},
		{"join non-numeric port", func(c *Config) { c.Cluster.Join = []string{"host:gossip"} }, "cluster.join[0]", `invalid port "gossip"`},
		{"join bad host", func(c *Config) { c.Cluster.Join = []string{"bad host:7946"} }, "cluster.join[0]", `invalid host "bad host"`},
		{"join garbage", func(c *Config) { c.Cluster.Join = []string{"a:b:c"} }, "cluster.join[0]", "must be host or host:port"},
		{"gossip_key_file required", func(c *Config) { c.Cluster.GossipKeyFile = "" }, "cluster.gossip_key_file", "required when cluster.enabled and not insecure_gossip"},
		{"warmup_grace negative", func(c *Config) { c.Cluster.WarmupGrace = Duration{-time.Minute} }, "cluster.warmup_grace", "must be between 1s and 24h0m0s, got -1m0s"},
		{"warmup_grace 1ns", func(c *Config) { c.Cluster.WarmupGrace = Duration{time.Nanosecond} }, "cluster.warmup_grace", "must be between 1s and 24h0m0s, got 1ns"},

		{"http.listen empty", func(c *Config) { c.HTTP.Listen = "" }, "http.listen", "required"},
		{"http.listen no port", func(c *Config) { c.HTTP.Listen = "8080" }, "http.listen", `must be host:port or :port, got "8080"`},
		{"http.listen bad port", func(c *Config) { c.HTTP.Listen = ":http-alt" }, "http.listen", `invalid port "http-alt"`},
		{"http.listen bad host", func(c *Config) { c.HTTP.Listen = "a b:80" }, "http.listen", `invalid host "a b"`},
		{"notifications_token_file relative", func(c *Config) { c.HTTP.NotificationsTokenFile = "token" }, "http.notifications_token_file", `must be an absolute path, got "token"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c := validConfig(t)
			tt.mutate(c)
			ve := problems(t, c.Validate())
			require.Equal(t, "testdata/design-example.yaml", ve.File)
			requireProblem(t, ve, tt.field, tt.msg)
			require.Len(t, ve.Problems, 1, ve.Error())
		})
	}
}

func TestValidateAccepts(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		mutate func(c *Config)
	}{
		{"no repomen", func(c *Config) { c.Repomen = nil }},
		{"cri_socket plain path", func(c *Config) { c.Agent.CRISocket = "/run/containerd/containerd.sock" }},
		{"pull_auth none", func(c *Config) { c.Agent.PullAuth = PullAuthNone }},
		{"dockerconfig", func(c *Config) { c.Agent.PullAuth = PullAuthDockerconfig }},
		{"min free 0 disables the guard", func(c *Config) { c.Agent.MinFreeDiskPercent = 0 }},
		{"state_dir empty keeps nothing", func(c *Config) { c.Agent.StateDir = "" }},
		{"standalone needs no gossip key", func(c *Config) { c.Cluster.Enabled = false; c.Cluster.GossipKeyFile = "" }},
		{"insecure gossip needs no key", func(c *Config) { c.Cluster.InsecureGossip = true; c.Cluster.GossipKeyFile = "" }},
		{"bind_port 0", func(c *Config) { c.Cluster.BindPort = 0 }},
		{"join forms", func(c *Config) {
			c.Cluster.Join = []string{"gossip.svc", "gossip.svc:7946", "10.0.0.1", "10.0.0.1:7946", "::1", "[::1]:7946"}
		}},
		{"advertise IPv6", func(c *Config) { c.Cluster.AdvertiseAddr = "fd00::1" }},
		{"http.listen forms", func(c *Config) { c.HTTP.Listen = "127.0.0.1:0" }},
		{"image by digest", func(c *Config) {
			c.Repomen[2].Images[0].ImageURL = "ghcr.io/a/b@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
		}},
		{"image with registry port and tag", func(c *Config) { c.Repomen[2].Images[0].ImageURL = "localhost:5000/lab:w_2024_01" }},
		{"image short name with tag", func(c *Config) { c.Repomen[2].Images[0].ImageURL = "lsstsqre/sciplat-lab:w_2020_35" }},
		{"registry with port", func(c *Config) { c.Repomen[1].RegistryURL = "localhost:5000" }},
		{"cycle zero", func(c *Config) { n := 0; c.Repomen[0].Cycle = &n }},
		{"no recommended tag", func(c *Config) { c.Repomen[0].RecommendedTag = "" }},
		{"gar endpoint emulator", func(c *Config) { c.Repomen[0].Endpoint = "127.0.0.1:9999"; c.Repomen[0].InsecureEndpoint = true }},
		{"pubsub_subscription", func(c *Config) {
			c.Repomen[0].PubSubSubscription = "projects/rubin-shared-services-71ec/subscriptions/gcr-cachemachine"
		}},
		{"pubsub_subscription domain-scoped", func(c *Config) {
			c.Repomen[0].PubSubSubscription = "projects/example.com:rubin-lab/subscriptions/gcr.push~1"
		}},
		{"warmup_grace 0 is the Python rule", func(c *Config) { c.Cluster.WarmupGrace = Duration{} }},
		{"notifications_token_file", func(c *Config) { c.HTTP.NotificationsTokenFile = "/etc/cachemachine/notifications/token" }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c := validConfig(t)
			tt.mutate(c)
			require.NoError(t, c.Validate())
		})
	}
}

func TestAllProblemsCollected(t *testing.T) {
	t.Parallel()
	t.Run("parse", func(t *testing.T) {
		t.Parallel()
		input := `nmae: x
refresh_interval: 5 minutes
repomen:
  - type: Foo
  - type: SimpleRepoMan
    repo: a/b
agent:
  max_paralel_pulls: 3
  pull_timeout: 10 minutes
cluster:
  bind_port: abc
`
		_, err := Parse("config.yaml", []byte(input))
		ve := problems(t, err)
		require.Equal(t, []Problem{
			{Field: "nmae", Message: "unknown field (did you mean name?)", Line: 1},
			{Field: "refresh_interval", Message: `invalid duration "5 minutes"`, Line: 2},
			{Field: "repomen[0].type", Message: `unknown repoman type "Foo" (want RubinRepoGar, RubinRepoMan or SimpleRepoMan)`, Line: 4},
			{Field: "repomen[1].repo", Message: "not a field of SimpleRepoMan", Line: 6},
			{Field: "agent.max_paralel_pulls", Message: "unknown field (did you mean max_parallel_pulls?)", Line: 8},
			{Field: "agent.pull_timeout", Message: `invalid duration "10 minutes"`, Line: 9},
			{Field: "cluster.bind_port", Message: `must be an integer, got "abc"`, Line: 11},
		}, ve.Problems)
		require.Equal(t, `config.yaml: nmae: unknown field (did you mean name?) (line 1)
config.yaml: refresh_interval: invalid duration "5 minutes" (line 2)
config.yaml: repomen[0].type: unknown repoman type "Foo" (want RubinRepoGar, RubinRepoMan or SimpleRepoMan) (line 4)
config.yaml: repomen[1].repo: not a field of SimpleRepoMan (line 6)
config.yaml: agent.max_paralel_pulls: unknown field (did you mean max_parallel_pulls?) (line 8)
config.yaml: agent.pull_timeout: invalid duration "10 minutes" (line 9)
config.yaml: cluster.bind_port: must be an integer, got "abc" (line 11)`, ve.Error())
	})
	t.Run("validate", func(t *testing.T) {
		t.Parallel()
		input := `name: Bad_Name
repomen:
  - type: RubinRepoGar
    num_weeklies: -1
  - type: RubinRepoMan
    repo: a/b
    num_weeklies: -1
agent:
  max_parallel_pulls: 0
  backoff_initial: 1h
cluster:
  bind_port: 70000
http:
  listen: nope
`
		c, err := Parse("config.yaml", []byte(input))
		require.NoError(t, err)
		ve := problems(t, c.Validate())
		var got []string
		for _, p := range ve.Problems {
			got = append(got, p.Field)
		}
		require.Equal(t, []string{
			"name",
			"repomen[0].project_id", "repomen[0].location", "repomen[0].gar_repository", "repomen[0].gar_image",
			"repomen[0].num_weeklies",
			"repomen[1].num_weeklies",
			"agent.max_parallel_pulls", "agent.backoff_initial",
			"cluster.bind_port", "cluster.gossip_key_file",
			"http.listen",
		}, got)
		require.Contains(t, ve.Error(), "config.yaml: repomen[1].num_weeklies: must be >= 0, got -1 (line 7)\n")
		// An absent required field points at its parent's line.
		require.Contains(t, ve.Error(), "config.yaml: repomen[0].project_id: required for RubinRepoGar (line 3)\n")
		require.Equal(t, 12, ve.Problems[9].Line)
	})
}

func TestFlagsOverrideFile(t *testing.T) {
	t.Parallel()
	c := validConfig(t)
	fs := flag.NewFlagSet("agent", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	f := RegisterFlags(fs)
	require.NoError(t, fs.Parse([]string{
		"--cri-socket=/run/k3s/containerd/containerd.sock",
		"--bind-addr", "127.0.0.2",
		"--bind-port=0",
		"--advertise-addr=127.0.0.2",
		"--http-listen=127.0.0.1:0",
		"--debug-socket=/tmp/cm/agent.sock",
		"--state-dir=/tmp/cm/state",
		"--join=127.0.0.3:7946,127.0.0.4:7946", "--join", "127.0.0.5",
		"--node-name=node-a",
		"--max-parallel-pulls=4",
		"--pull-timeout=90s",
		"--min-free-disk-percent=7.5",
		"--pull-auth=none",
		"--gossip-key-file=/tmp/key",
		"--insecure-gossip",
		"--cluster-enabled=false",
	}))
	f.Apply(c)
	require.NoError(t, c.Validate())
	require.Equal(t, Agent{
		CRISocket:          "/run/k3s/containerd/containerd.sock",
		MaxParallelPulls:   4,
		PullTimeout:        Duration{90 * time.Second},
		BackoffInitial:     Duration{10 * time.Second},
		BackoffMax:         Duration{5 * time.Minute},
		ResyncInterval:     Duration{15 * time.Second},
		MinFreeDiskPercent: 7.5,
		PinImages:          true,
		MaxPinnedPercent:   50,
		PullAuth:           PullAuthNone,
		Dockerconfig:       "/etc/secrets/.dockerconfigjson",
		StateDir:           "/tmp/cm/state",
		DebugSocket:        "/tmp/cm/agent.sock",
		NodeName:           "node-a",
	}, c.Agent)
	require.Equal(t, Cluster{
		Enabled: false, BindAddr: "127.0.0.2", BindPort: 0, AdvertiseAddr: "127.0.0.2",
		Join:          []string{"127.0.0.3:7946", "127.0.0.4:7946", "127.0.0.5"},
		GossipKeyFile: "/tmp/key", InsecureGossip: true, WarmupGrace: Duration{10 * time.Minute},
	}, c.Cluster)
	require.Equal(t, "127.0.0.1:0", c.HTTP.Listen)
}

func TestFlagsNotGivenKeepFile(t *testing.T) {
	t.Parallel()
	c := validConfig(t)
	want := *c
	fs := flag.NewFlagSet("agent", flag.ContinueOnError)
	f := RegisterFlags(fs)
	require.NoError(t, fs.Parse([]string{"--bind-port=7000"}))
	f.Apply(c)
	want.Cluster.BindPort = 7000
	requireSameConfig(t, want, *c)
}

func TestFlagErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		args    []string
		wantErr string // from fs.Parse; "" means parse succeeds and Validate fails
		field   string
		msg     string
	}{
		{name: "int", args: []string{"--bind-port=abc"}, wantErr: "bind-port"},
		{name: "duration", args: []string{"--pull-timeout=10 minutes"}, wantErr: "pull-timeout"},
		{name: "float", args: []string{"--min-free-disk-percent=x"}, wantErr: "min-free-disk-percent"},
		{name: "bool", args: []string{"--insecure-gossip=maybe"}, wantErr: "insecure-gossip"},
		{name: "enum", args: []string{"--pull-auth=basic"}, wantErr: `invalid value "basic" for flag -pull-auth: must be google, dockerconfig or none`},
		{name: "port range", args: []string{"--bind-port=70000"}, field: "cluster.bind_port", msg: "must be between 0 and 65535, got 70000 (set by --bind-port)"},
		{name: "join entry", args: []string{"--join=ok", "--join=x:99999"}, field: "cluster.join[1]", msg: `invalid port "99999" in "x:99999" (set by --join)`},
		{name: "empty listen", args: []string{"--http-listen="}, field: "http.listen", msg: "required (set by --http-listen)"},
		{name: "flag clears what the file had", args: []string{"--gossip-key-file="}, field: "cluster.gossip_key_file", msg: "required when cluster.enabled and not insecure_gossip (set by --gossip-key-file)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c := validConfig(t)
			fs := flag.NewFlagSet("agent", flag.ContinueOnError)
			fs.SetOutput(io.Discard)
			f := RegisterFlags(fs)
			err := fs.Parse(tt.args)
			if tt.wantErr != "" {
				require.ErrorContains(t, err, tt.wantErr)
				return
			}
			require.NoError(t, err)
			f.Apply(c)
			ve := problems(t, c.Validate())
			require.Len(t, ve.Problems, 1)
			require.Equal(t, tt.field, ve.Problems[0].Field)
			require.Zero(t, ve.Problems[0].Line)
			require.Equal(t, "testdata/design-example.yaml: "+tt.field+": "+tt.msg, ve.Error())
		})
	}
}

func TestApplyEnv(t *testing.T) {
	t.Parallel()
	env := func(m map[string]string) func(string) string {
		return func(k string) string { return m[k] }
	}
	tests := []struct {
		name          string
		file          string
		args          []string
		env           map[string]string
		wantNode      string
		wantAdvertise string
	}{
		{"env fills empty", validYAML, nil, map[string]string{"NODE_NAME": "n1", "POD_IP": "10.1.2.3"}, "n1", "10.1.2.3"},
		{"file wins over POD_IP", validYAML + "  advertise_addr: 10.9.9.9\n", nil, map[string]string{"POD_IP": "10.1.2.3"}, "", "10.9.9.9"},
		{"flags win over env", validYAML, []string{"--node-name=flagnode", "--advertise-addr=10.0.0.7"}, map[string]string{"NODE_NAME": "n1", "POD_IP": "10.1.2.3"}, "flagnode", "10.0.0.7"},
		{"no env", validYAML, nil, nil, "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c, err := Parse("config.yaml", []byte(tt.file))
			require.NoError(t, err)
			fs := flag.NewFlagSet("agent", flag.ContinueOnError)
			f := RegisterFlags(fs)
			require.NoError(t, fs.Parse(tt.args))
			c.ApplyEnv(env(tt.env))
			f.Apply(c)
			require.NoError(t, c.Validate())
			require.Equal(t, tt.wantNode, c.Agent.NodeName)
			require.Equal(t, tt.wantAdvertise, c.Cluster.AdvertiseAddr)
		})
	}
	t.Run("invalid POD_IP is named", func(t *testing.T) {
		t.Parallel()
		c, err := Parse("config.yaml", []byte(validYAML))
		require.NoError(t, err)
		c.ApplyEnv(env(map[string]string{"POD_IP": "not-an-ip"}))
		ve := problems(t, c.Validate())
		require.Equal(t, `config.yaml: cluster.advertise_addr: must be an IP address, got "not-an-ip" (set by $POD_IP)`, ve.Error())
	})
}

func TestMarshalRoundTrip(t *testing.T) {
	t.Parallel()
	for _, file := range []string{"testdata/design-example.yaml", "testdata/python-idf.json", "testdata/python-summit.json"} {
		t.Run(file, func(t *testing.T) {
			t.Parallel()
			c, err := Load(file)
			require.NoError(t, err)
			out, err := yaml.Marshal(c)
			require.NoError(t, err)
			require.Contains(t, string(out), "refresh_interval: 5m0s")
			require.NotContains(t, string(out), "node_name")
			back, err := Parse("out.yaml", out)
			require.NoError(t, err, string(out))
			requireSameConfig(t, *c, *back)
		})
	}
	t.Run("repoman emits only its type's fields", func(t *testing.T) {
		t.Parallel()
		out, err := yaml.Marshal(DefaultRepoman(TypeSimpleRepoMan))
		require.NoError(t, err)
		require.Equal(t, "type: SimpleRepoMan\nimages: []\n", string(out))
	})
}

func TestWriteFile(t *testing.T) {
	t.Parallel()
	c := Default()
	c.RefreshInterval = Duration{time.Minute}
	c.Agent.PullTimeout = Duration{90 * time.Second}
	c.Cluster.Join = []string{"127.0.0.1:7000"}
	gar := DefaultRepoman(TypeRubinRepoGar)
	gar.ProjectID, gar.Location, gar.GARRepository, gar.GARImage = "p", "us-central1", "sciplat", "sciplat-lab"
	simple := DefaultRepoman(TypeSimpleRepoMan)
	simple.Images = []Image{{ImageURL: "ghcr.io/a/b:1", Name: "one", ImageHash: "sha256:" + strings.Repeat("a", 64)}}
	c.Repomen = []Repoman{gar, simple}
	path := t.TempDir() + "/config.yaml"
	require.NoError(t, c.WriteFile(path))
	fi, err := os.Stat(path)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), fi.Mode().Perm())
	back, err := Load(path)
	require.NoError(t, err)
	requireSameConfig(t, c, *back)
	require.ErrorContains(t, c.WriteFile(t.TempDir()+"/missing/config.yaml"), "write config: ")
}

func TestDuration(t *testing.T) {
	t.Parallel()
	var d Duration
	require.NoError(t, yaml.Unmarshal([]byte("90s"), &d))
	require.Equal(t, 90*time.Second, d.Duration)
	out, err := yaml.Marshal(Duration{5 * time.Minute})
	require.NoError(t, err)
	require.Equal(t, "5m0s\n", string(out))
	require.EqualError(t, d.UnmarshalText([]byte("soon")), `invalid duration "soon"`)
}

func TestLoadMissingFile(t *testing.T) {
	t.Parallel()
	_, err := Load("testdata/does-not-exist.yaml")
	require.ErrorIs(t, err, os.ErrNotExist)
	require.ErrorContains(t, err, "read config: ")
}

func TestAliasBomb(t *testing.T) {
	t.Parallel()
	// Each level multiplies by 10: a naive walk visits 10^6 images.
	input := `a: &a [{image_url: "x:y"},{image_url: "x:y"},{image_url: "x:y"},{image_url: "x:y"},{image_url: "x:y"},{image_url: "x:y"},{image_url: "x:y"},{image_url: "x:y"},{image_url: "x:y"},{image_url: "x:y"}]
`
	var b strings.Builder
	b.WriteString("repomen:\n")
	for range 5000 {
		b.WriteString("- {type: SimpleRepoMan, images: *a}\n")
	}
	_, err := Parse("config.yaml", []byte(input+b.String()))
	ve := problems(t, err)
	requireProblem(t, ve, "a", "unknown field")
	found := false
	for _, p := range ve.Problems {
		found = found || strings.Contains(p.Message, "too much aliasing")
	}
	require.True(t, found, ve.Error())
}

func FuzzParse(f *testing.F) {
	for _, file := range []string{"testdata/design-example.yaml", "testdata/python-idf.json", "testdata/python-summit.json"} {
		data, err := os.ReadFile(file)
		require.NoError(f, err)
		f.Add(data)
	}
	f.Add([]byte("repomen:\n- &r {type: RubinRepoMan, repo: a/b}\n- {<<: [*r, *r], cycle: 3}\n"))
	f.Add([]byte("agent: {pull_timeout: 10 minutes, max_parallel_pulls: x}\ncluster: {bind_port: 1e9}\n"))
	f.Add([]byte("a: &a {<<: *a}\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse("fuzz.yaml", data)
		if err != nil {
			var ve *ValidationError
			require.True(t, errors.As(err, &ve))
			require.NotEmpty(t, ve.Problems)
			require.NotEmpty(t, ve.Error())
			return
		}
		_ = c.Validate()
		// What parses must marshal and parse back to the same configuration.
		out, err := yaml.Marshal(c)
		require.NoError(t, err)
		back, err := Parse("out.yaml", out)
		require.NoError(t, err, string(out))
		_ = back.Validate()
		requireSameConfig(t, *c, *back)
	})
}
