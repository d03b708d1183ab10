package lab

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestProcMemory(t *testing.T) {
	t.Parallel()
	m, err := ProcMemory(os.Getpid())
	if err != nil {
		t.Skipf("no /proc: %v", err)
	}
	require.Positive(t, m.RSSKiB)
	require.GreaterOrEqual(t, m.PeakKiB, m.RSSKiB)
	_, err = ProcStatusKiB(os.Getpid(), "NoSuchField")
	require.ErrorContains(t, err, "no NoSuchField")
}

func TestAgentMetrics(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		require.Equal(t, "/metrics", r.URL.Path)
		fmt.Fprint(w, "# HELP go_goroutines Number of goroutines.\n# TYPE go_goroutines gauge\ngo_goroutines 42\n"+
			"cachemachine_gossip_dropped_total{reason=\"decrypt\"} 3\ncachemachine_members 2.5e+00\n")
	}))
	t.Cleanup(srv.Close)
	dir := t.TempDir()
	cfg := AgentConfig(dir, "unix:///run/cri.sock")
	cfg.HTTP.Listen = strings.TrimPrefix(srv.URL, "http://")
	a := &Agent{opts: AgentOptions{Node: "n1", Dir: dir, Config: cfg}}
	m, err := a.Metrics(t.Context())
	require.NoError(t, err)
	require.Equal(t, map[string]float64{"go_goroutines": 42, `cachemachine_gossip_dropped_total{reason="decrypt"}`: 3, "cachemachine_members": 2.5}, m)
}

func TestMountSecretSwapsVersions(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	require.NoError(t, os.Symlink("..data/.dockerconfigjson", filepath.Join(dir, ".dockerconfigjson")))
	for n, pass := range []string{"old", "new"} {
		require.NoError(t, MountSecret(dir, n+1, map[string][]byte{".dockerconfigjson": DockerconfigJSON("127.0.0.1:5000", "robot", pass)}))
		b, err := os.ReadFile(filepath.Join(dir, ".dockerconfigjson"))
		require.NoError(t, err)
		var cfg struct {
			Auths map[string]struct{ Auth string } `json:"auths"`
		}
		require.NoError(t, json.Unmarshal(b, &cfg))
		require.Equal(t, basic("robot", pass), cfg.Auths["127.0.0.1:5000"].Auth)
	}
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	require.Len(t, entries, 3, "the link, ..data and one version: the old one is removed")
}

func basic(user, pass string) string {
	r := httptest.NewRequest(http.MethodGet, "/", nil)
	r.SetBasicAuth(user, pass)
	return strings.TrimPrefix(r.Header.Get("Authorization"), "Basic ")
}

func TestPrintTable(t *testing.T) {
	t.Parallel()
	var b strings.Builder
	PrintTable(&b, [][]string{{"", "result"}, {"(a)", "PASS"}, {"(b)", "→ FAIL"}})
	require.Equal(t, "|     | result |\n| --- | ------ |\n| (a) | PASS   |\n| (b) | → FAIL |\n", b.String())
}

// TestInCI: CI services set CI to "true", some to "1" or "True"; all of them make a missing
// real component fail its test, and unset or false values let it skip.
func TestInCI(t *testing.T) {
	for v, want := range map[string]bool{"true": true, "1": true, "True": true, "": false, "false": false, "0": false, "yes": false} {
		t.Setenv("CI", v)
		require.Equal(t, want, InCI(), "CI=%q", v)
	}
}
