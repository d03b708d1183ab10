package leader_test

import (
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/cachemachine/cachemachine/agent"
	"github.com/cachemachine/cachemachine/coordinator"
	"github.com/cachemachine/cachemachine/coordinator/coordinatortest"
	"github.com/cachemachine/cachemachine/leader"
	"github.com/cachemachine/cachemachine/status"
)

// stateFieldShownIn says where each field of agent.State (and of the types it holds, as
// "Images.Size") is shown, by the view fields that carry it: agent.NodeView is
// `cachemachine debug node`, agent.PullsView is `cachemachine debug pulls` (printTable prints
// every field of both), status.NodeView is one node of GET /cachemachine/{name}/nodes (built
// by nodeView and status.NodesView). A field added to agent.State fails
// TestEveryStateFieldIsShown until it is listed here or in stateFieldNotShown. (That the
// field travels to the leader at all is coordinator's TestWireCarriesEveryField.)
var stateFieldShownIn = map[string][]string{
	"Node":                            {"agent.NodeView.Node", "status.NodeView.Name"},
	"Version":                         {"agent.NodeView.Version", "status.NodeView.Version"},
	"Runtime":                         {"agent.NodeView.Runtime"},
	"Ready":                           {"agent.NodeView.Ready"},
	"LastError":                       {"agent.NodeView.LastError", "status.NodeView.RuntimeError"},
	"Images":                          {"agent.NodeView.Images"},
	"Images.ID":                       {"agent.NodeView.Images.ID"},
	"Images.Tags":                     {"agent.NodeView.Images.Tags"},
	"Images.Digests":                  {"agent.NodeView.Images.Digests"},
	"Images.Size":                     {"agent.NodeView.Images.Size"},
	"Images.Pinned":                   {"agent.NodeView.Images.Pinned"},
	"Cached":                          {"agent.PullsView.Cached", "status.NodeView.Cached"},
	"Missing":                         {"status.NodeView.Missing"},
	"Queued":                          {"agent.PullsView.Queued"},
	"Pulling":                         {"agent.PullsView.Pulling", "status.NodeView.Pulling"},
	"Pulling.Ref":                     {"agent.PullsView.Pulling.Ref", "status.NodeView.Pulling"},
	"Pulling.Started":                 {"agent.PullsView.Pulling.Started"},
	"Pulling.Progress":                {"agent.PullsView.Pulling.Progress", "status.NodeView.Progress"},
	"Pulling.Progress.Phase":          {"agent.PullsView.Pulling.Progress.Phase", "status.NodeView.Progress.Phase"},
	"Pulling.Progress.BytesDone":      {"agent.PullsView.Pulling.Progress.BytesDone", "status.NodeView.Progress.BytesDone"},
	"Pulling.Progress.BytesTotal":     {"agent.PullsView.Pulling.Progress.BytesTotal", "status.NodeView.Progress.BytesTotal"},
	"Pulling.Progress.BytesPerSecond": {"agent.PullsView.Pulling.Progress.BytesPerSecond", "status.NodeView.Progress.BytesPerSecond"},
	"Pulling.Progress.At":             {"agent.PullsView.Pulling.Progress.At", "status.NodeView.Progress.MeasuredAt"},
	"Held":                            {"agent.PullsView.Held", "status.NodeView.Held"},
	"Held.Ref":                        {"agent.PullsView.Held.Ref", "status.NodeView.Held.ImageURL"},
	"Held.Reason":                     {"agent.PullsView.Held.Reason", "status.NodeView.Held.Reason"},
	"Failed":                          {"agent.PullsView.Failed", "status.NodeView.Failed"},
	"Failed.Ref":                      {"agent.PullsView.Failed.Ref", "status.NodeView.Failed.ImageURL"},
	"Failed.Error":                    {"agent.PullsView.Failed.Error", "status.NodeView.Failed.Error"},
	"Failed.Attempts":                 {"agent.PullsView.Failed.Attempts", "status.NodeView.Failed.Attempts"},
	"Failed.NextRetry":                {"agent.PullsView.Failed.NextRetry", "status.NodeView.Failed.NextRetry"},
	"Disk":                            {"agent.NodeView.Disk", "status.NodeView.Disk"},
	"Disk.UsedBytes":                  {"agent.NodeView.Disk.UsedBytes", "status.NodeView.Disk.UsedBytes"},
	"Disk.CapacityBytes":              {"agent.NodeView.Disk.CapacityBytes", "status.NodeView.Disk.CapacityBytes"},
	"Disk.FreeBytes":                  {"agent.NodeView.Disk.FreeBytes"},
	"Disk.Path":                       {"agent.NodeView.Disk.Path"},
	"Pinned":                          {"agent.NodeView.Pinned", "status.NodeView.Pinned"},
	"Pinning":                         {"agent.NodeView.Pinning", "status.NodeView.Pinning"},
	"Pinning.Status":                  {"agent.NodeView.Pinning.Status", "status.NodeView.Pinning.Status"},
	"Pinning.Detail":                  {"agent.NodeView.Pinning.Detail", "status.NodeView.Pinning.Detail"},
	"Pinning.BudgetBytes":             {"agent.NodeView.Pinning.BudgetBytes", "status.NodeView.Pinning.BudgetBytes"},
	"Pinning.PinnedBytes":             {"agent.NodeView.Pinning.PinnedBytes", "status.NodeView.Pinning.PinnedBytes"},
	"Pinning.OverBudget":              {"agent.NodeView.Pinning.OverBudget", "status.NodeView.Pinning.OverBudget"},
}

// stateFieldNotShown lists the fields of agent.State that no view shows, with the reason.
var stateFieldNotShown = map[string]string{
	// The version of the desired list the node works from: the leader uses it to send a
	// lagging node the list in force; `debug desired` and `debug cluster` show the version
	// of the list itself (agent.Desired.Version), which this field follows.
	"DesiredVersion": "bookkeeping between a node and the leader",
}

// views are the view types stateFieldShownIn names.
var views = map[string]reflect.Type{
	"agent.NodeView":  reflect.TypeFor[agent.NodeView](),
	"agent.PullsView": reflect.TypeFor[agent.PullsView](),
	"status.NodeView": reflect.TypeFor[status.NodeView](),
}

func TestEveryStateFieldIsShown(t *testing.T) {
	t.Parallel()
	var fields []string
	stateFields("", reflect.TypeFor[agent.State](), &fields)
	for _, f := range fields {
		_, shown := stateFieldShownIn[f]
		_, excluded := stateFieldNotShown[f]
		require.Truef(t, shown != excluded, "agent.State field %s: show it in debug node, debug pulls or /nodes and list it in stateFieldShownIn, or list it in stateFieldNotShown with the reason (exactly one of them)", f)
	}
	for f, in := range stateFieldShownIn {
		require.Containsf(t, fields, f, "stateFieldShownIn lists %s, which is no field of agent.State", f)
		require.NotEmpty(t, in, f)
		for _, v := range in {
			_, ok := viewField(v)
			require.Truef(t, ok, "stateFieldShownIn: %s shows %s, but there is no such view field", f, v)
		}
	}
	for f := range stateFieldNotShown {
		require.Containsf(t, fields, f, "stateFieldNotShown lists %s, which is no field of agent.State", f)
	}
}

// TestNodesViewShowsWhatItClaims sends a state with every field set through the leader's
// snapshot and status.NodesView, and requires every status.NodeView field that
// stateFieldShownIn names to be set in the /nodes document.
func TestNodesViewShowsWhatItClaims(t *testing.T) {
	t.Parallel()
	const ref = "docker.io/cm/lab:tag"
	st := agent.State{
		Node: "n1", Version: 3, DesiredVersion: 2, Runtime: "containerd 2.1", Ready: true, LastError: "e",
		Images:  []agent.CachedImage{{ID: digest(1), Tags: []string{ref}, Digests: []string{"docker.io/cm/lab@" + digest(2)}, Size: 4}},
		Cached:  map[string]string{ref: digest(2)},
		Missing: []string{ref + "-missing"},
		Queued:  []string{ref + "-queued"},
		Pulling: []agent.Pulling{{Ref: ref + "-pulling", Started: time.Unix(10, 0), Progress: agent.Progress{Phase: agent.PhaseDownloading, BytesDone: 1, BytesTotal: 3, BytesPerSecond: 1, At: time.Unix(11, 0)}}},
		Held:    []agent.Held{{Ref: ref + "-held", Reason: "disk"}},
		Failed:  []agent.Failed{{Ref: ref + "-failed", Error: "boom", Attempts: 2, NextRetry: time.Unix(20, 0)}},
		Disk:    agent.Disk{UsedBytes: 5, CapacityBytes: 6, FreeBytes: 1, Path: "/var/lib/containerd"},
		Pinned:  []string{ref},
		Pinning: agent.Pinning{Status: agent.PinHonoured, Detail: "d", BudgetBytes: 3, PinnedBytes: 2, OverBudget: []string{ref + "-over"}},
	}
	l, err := leader.New(leader.Config{Name: "jupyter"}, nil, view{leader: "n1", self: true, nodes: []coordinator.NodeState{{State: st, Alive: true}}}, coordinatortest.NewAgent("n1"), nil, nil)
	require.NoError(t, err)
	in, _, _, self := l.Snapshot()
	require.True(t, self)
	doc := status.NodesView(in)
	require.Len(t, doc.Nodes, 1)
	got := reflect.ValueOf(doc.Nodes[0])
	for f, in := range stateFieldShownIn {
		for _, v := range in {
			path, ok := strings.CutPrefix(v, "status.NodeView.")
			if !ok {
				continue
			}
			val := got
			for name := range strings.SplitSeq(path, ".") {
				if val.Kind() == reflect.Slice {
					require.Positivef(t, val.Len(), "%s: %s is empty", f, v)
					val = val.Index(0)
				}
				val = val.FieldByName(name)
			}
			require.Falsef(t, val.IsZero(), "%s: /nodes leaves %s empty", f, v)
		}
	}
}

// stateFields appends the paths of t's exported fields, and of the fields of the structs they
// hold (time.Time aside), prefixed by prefix.
func stateFields(prefix string, t reflect.Type, out *[]string) {
	for f := range t.Fields() {
		if !f.IsExported() {
			continue
		}
		path := prefix + f.Name
		*out = append(*out, path)
		ft := f.Type
		for ft.Kind() == reflect.Slice || ft.Kind() == reflect.Pointer {
			ft = ft.Elem()
		}
		if ft.Kind() == reflect.Struct && ft != reflect.TypeFor[time.Time]() {
			stateFields(path+".", ft, out)
		}
	}
}

// viewField resolves "pkg.View.Field.Sub…" through struct fields (promoted ones included) and
// slice elements.
func viewField(path string) (reflect.StructField, bool) {
	parts := strings.Split(path, ".")
	if len(parts) < 3 {
		return reflect.StructField{}, false
	}
	t, ok := views[parts[0]+"."+parts[1]]
	if !ok {
		return reflect.StructField{}, false
	}
	var f reflect.StructField
	for _, name := range parts[2:] {
		for t.Kind() == reflect.Slice || t.Kind() == reflect.Pointer {
			t = t.Elem()
		}
		if t.Kind() != reflect.Struct {
			return reflect.StructField{}, false
		}
		if f, ok = t.FieldByName(name); !ok || !f.IsExported() {
			return reflect.StructField{}, false
		}
		t = f.Type
	}
	return f, !slices.Contains(parts, "")
}
