package config

import (
	"flag"
	"fmt"
	"reflect"
	"slices"
	"strings"

	"gopkg.in/yaml.v3"
)

// ApplyEnv fills runtime fields from the environment (the downward API), read with getenv
// (os.Getenv in cmd): NODE_NAME sets Agent.NodeName and POD_IP sets Cluster.AdvertiseAddr,
// each only when still empty, so a value from the file or a flag wins whatever the order of
// ApplyEnv and Flags.Apply.
func (c *Config) ApplyEnv(getenv func(string) string) {
	if v := getenv("NODE_NAME"); v != "" && c.Agent.NodeName == "" {
		c.Agent.NodeName = v
		c.setSource("agent.node_name", "$NODE_NAME")
	}
	if v := getenv("POD_IP"); v != "" && c.Cluster.AdvertiseAddr == "" {
		c.Cluster.AdvertiseAddr = v
		c.setSource("cluster.advertise_addr", "$POD_IP")
	}
}

func (c *Config) setSource(field, source string) {
	if c.sources == nil {
		c.sources = map[string]string{}
	}
	c.sources[field] = source
}

// Flags holds the command-line overrides of the agent, cluster and http settings. Create it
// with RegisterFlags before the flag set is parsed; after parsing, Apply copies the flags
// that were given onto a Config. A flag that was not given never changes the Config, so
// the file and its defaults stay in force.
type Flags struct {
	fs        *flag.FlagSet
	overrides map[string]override // by flag name
}

// override is one flag: the field it sets (for error messages) and how.
type override struct {
	field string
	apply func(c *Config)
}

// RegisterFlags defines on fs one flag per overridable setting:
//
//	--cri-socket --max-parallel-pulls --pull-timeout --min-free-disk-percent --pull-auth
//	--state-dir --debug-socket --node-name
//	--cluster-enabled --bind-addr --bind-port --advertise-addr --join --gossip-key-file
//	--insecure-gossip --http-listen
//
// --join may be repeated and each value may be a comma-separated list; given at all, it
// replaces the file's join list. An invalid value (--bind-port=abc, --pull-auth=x) is
// reported by fs.Parse, naming the flag; Validate names the flag for values that parse but
// do not validate.
func RegisterFlags(fs *flag.FlagSet) *Flags {
	f := &Flags{fs: fs, overrides: map[string]override{}}
	d := Default()

	str := func(name, field, usage string, dst func(*Config) *string) {
		v := fs.String(name, "", usage)
		f.overrides[name] = override{field, func(c *Config) { *dst(c) = *v }}
	}
	integer := func(name, field, usage string, dst func(*Config) *int) {
		v := fs.Int(name, 0, usage)
		f.overrides[name] = override{field, func(c *Config) { *dst(c) = *v }}
	}
	boolean := func(name, field, usage string, dst func(*Config) *bool) {
		v := fs.Bool(name, false, usage)
		f.overrides[name] = override{field, func(c *Config) { *dst(c) = *v }}
	}

	str("cri-socket", "agent.cri_socket",
		"CRI endpoint, unix:///path or /path (agent.cri_socket; built-in default "+d.Agent.CRISocket+")",
		func(c *Config) *string { return &c.Agent.CRISocket })
	integer("max-parallel-pulls", "agent.max_parallel_pulls",
		fmt.Sprintf("concurrent pulls on this node (agent.max_parallel_pulls; built-in default %d)", d.Agent.MaxParallelPulls),
		func(c *Config) *int { return &c.Agent.MaxParallelPulls })
	pullTimeout := fs.Duration("pull-timeout", 0,
		"deadline of one pull attempt (agent.pull_timeout; built-in default "+d.Agent.PullTimeout.String()+")")
	f.overrides["pull-timeout"] = override{"agent.pull_timeout", func(c *Config) { c.Agent.PullTimeout = Duration{*pullTimeout} }}
	minFree := fs.Float64("min-free-disk-percent", 0,
		fmt.Sprintf("hold pulls that would leave less free image filesystem space (agent.min_free_disk_percent; built-in default %v)", d.Agent.MinFreeDiskPercent))
	f.overrides["min-free-disk-percent"] = override{"agent.min_free_disk_percent", func(c *Config) { c.Agent.MinFreeDiskPercent = *minFree }}
	pullAuth := &enumValue{allowed: []string{PullAuthGoogle, PullAuthDockerconfig, PullAuthNone}}
	fs.Var(pullAuth, "pull-auth", "google, dockerconfig or none (agent.pull_auth; built-in default "+d.Agent.PullAuth+")")
	f.overrides["pull-auth"] = override{"agent.pull_auth", func(c *Config) { c.Agent.PullAuth = pullAuth.value }}
	str("state-dir", "agent.state_dir",
		"directory for agent state (agent.state_dir; built-in default "+d.Agent.StateDir+")",
		func(c *Config) *string { return &c.Agent.StateDir })
	str("debug-socket", "agent.debug_socket",
		"node debug socket path (agent.debug_socket; built-in default "+d.Agent.DebugSocket+")",
		func(c *Config) *string { return &c.Agent.DebugSocket })
	str("node-name", "agent.node_name",
		"this node's name (default $NODE_NAME)",
		func(c *Config) *string { return &c.Agent.NodeName })

	boolean("cluster-enabled", "cluster.enabled",
		"gossip with the other agents; false runs standalone (cluster.enabled; built-in default true)",
		func(c *Config) *bool { return &c.Cluster.Enabled })
	str("bind-addr", "cluster.bind_addr",
		"gossip bind IP address (cluster.bind_addr; built-in default "+d.Cluster.BindAddr+")",
		func(c *Config) *string { return &c.Cluster.BindAddr })
	integer("bind-port", "cluster.bind_port",
		fmt.Sprintf("gossip port (cluster.bind_port; built-in default %d)", d.Cluster.BindPort),
		func(c *Config) *int { return &c.Cluster.BindPort })
	str("advertise-addr", "cluster.advertise_addr",
		"gossip address advertised to peers (cluster.advertise_addr; default $POD_IP)",
		func(c *Config) *string { return &c.Cluster.AdvertiseAddr })
	join := &listValue{}
	fs.Var(join, "join", "peer DNS name or host:port to join; repeatable, comma-separated lists allowed; replaces cluster.join")
	f.overrides["join"] = override{"cluster.join", func(c *Config) { c.Cluster.Join = slices.Clone(join.values) }}
	str("gossip-key-file", "cluster.gossip_key_file",
		"file with the base64 gossip encryption key (cluster.gossip_key_file)",
		func(c *Config) *string { return &c.Cluster.GossipKeyFile })
	boolean("insecure-gossip", "cluster.insecure_gossip",
		"gossip without encryption: local demos and tests only (cluster.insecure_gossip)",
		func(c *Config) *bool { return &c.Cluster.InsecureGossip })

	str("http-listen", "http.listen",
		"status API host:port (http.listen; built-in default "+d.HTTP.Listen+")",
		func(c *Config) *string { return &c.HTTP.Listen })
	return f
}

// Apply copies onto c every flag given on the command line, and remembers which flag set
// each field so that Validate names it. Call it after the flag set is parsed and before
// Validate.
func (f *Flags) Apply(c *Config) {
	f.fs.Visit(func(fl *flag.Flag) {
		o, ok := f.overrides[fl.Name]
		if !ok {
			return
		}
		o.apply(c)
		c.setSource(o.field, "--"+fl.Name)
		if o.field == "cluster.join" {
			// Problems are reported per entry, cluster.join[i].
			for i := range c.Cluster.Join {
				c.setSource(fmt.Sprintf("cluster.join[%d]", i), "--"+fl.Name)
			}
		}
	})
}

// enumValue is a flag.Value that accepts only the allowed strings.
type enumValue struct {
	allowed []string
	value   string
}

func (e *enumValue) String() string { return e.value }

func (e *enumValue) Set(s string) error {
	if !slices.Contains(e.allowed, s) {
		return fmt.Errorf("must be %s or %s", strings.Join(e.allowed[:len(e.allowed)-1], ", "), e.allowed[len(e.allowed)-1])
	}
	e.value = s
	return nil
}

// listValue is a repeatable flag.Value whose values may also be comma-separated lists.
type listValue struct {
	values []string
}

func (l *listValue) String() string { return strings.Join(l.values, ",") }

func (l *listValue) Set(s string) error {
	for _, part := range strings.Split(s, ",") {
		if part = strings.TrimSpace(part); part != "" {
			l.values = append(l.values, part)
		}
	}
	return nil
}

// MarshalYAML writes only the fields that belong to r.Type, all of them, so that the output
// parses back to the same Repoman (an absent recommended_tag would become the default).
func (r Repoman) MarshalYAML() (any, error) {
	n := &yaml.Node{Kind: yaml.MappingNode}
	rv := reflect.ValueOf(r)
	t := rv.Type()
	for i := range t.NumField() {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		types := strings.Split(f.Tag.Get("types"), ",")
		switch r.Type {
		case TypeRubinRepoGar, TypeRubinRepoMan, TypeSimpleRepoMan:
			if !slices.Contains(types, r.Type) {
				continue
			}
		default:
			if name != "type" && rv.Field(i).IsZero() {
				continue
			}
		}
		var v yaml.Node
		if err := v.Encode(rv.Field(i).Interface()); err != nil {
			return nil, fmt.Errorf("encode %s: %w", name, err)
		}
		n.Content = append(n.Content, &yaml.Node{Kind: yaml.ScalarNode, Value: name}, &v)
	}
	return n, nil
}
