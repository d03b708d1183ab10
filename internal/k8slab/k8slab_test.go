package k8slab

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/cachemachine/cachemachine/internal/lab"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestSplitRule(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name, line string
		want       []string
	}{
		{"plain", "-A INPUT -j KUBE-FIREWALL", []string{"-A", "INPUT", "-j", "KUBE-FIREWALL"}},
		{"comment", `-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule" -j KUBE-NODEPORTS`,
			[]string{"-A", "KUBE-SERVICES", "-m", "comment", "--comment", "kubernetes service nodeports; NOTE: this must be the last rule", "-j", "KUBE-NODEPORTS"}},
		{"escaped quote", `-A X -m comment --comment "a \"b\"" -j Y`, []string{"-A", "X", "-m", "comment", "--comment", `a "b"`, "-j", "Y"}},
		{"empty comment", `-A X --comment "" -j Y`, []string{"-A", "X", "--comment", "", "-j", "Y"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			assert.Equal(t, tt.want, splitRule(tt.line))
		})
	}
}

func TestIsLabChain(t *testing.T) {
	t.Parallel()
	assert.True(t, isLabChain("iptables/nat/KUBE-SERVICES"))
	assert.True(t, isLabChain("ip6tables/mangle/KUBE-KUBELET-CANARY"))
	assert.True(t, isLabChain("iptables/nat/CNI-HOSTPORT-DNAT"))
	assert.False(t, isLabChain("iptables/filter/DOCKER"))
	assert.False(t, isLabChain("iptables/filter/INPUT"))
}

// TestRecipes: the wrapper modules replace every staging module, stamp the version, and each
// recipe has its own cache key.
func TestRecipes(t *testing.T) {
	t.Parallel()
	k := kubernetesRecipe()
	for _, m := range stagingModules {
		assert.Contains(t, k.gomod, "k8s.io/"+m+" => k8s.io/"+m+" "+stagingVersion)
	}
	assert.Contains(t, k.ldflags, "k8s.io/component-base/version.gitVersion="+KubernetesVersion)
	assert.Contains(t, k.ldflags, "gitMinor=34")
	require.Len(t, k.pkgs, len(kubeCommands))
	keys := map[string]string{}
	for _, r := range recipes() {
		assert.Len(t, r.key(), 64)
		assert.NotContains(t, keys, r.key(), "%s shares a key with %s", r.dir, keys[r.key()])
		keys[r.key()] = r.dir
		assert.True(t, strings.HasPrefix(r.gomod, "module cachemachine.lab/"), r.dir)
	}
}

// TestCachedKubectl: the manifest checks' kubectl comes from the cache, never from a build,
// and an empty cache says how to fill it.
func TestCachedKubectl(t *testing.T) {
	t.Setenv("CACHEMACHINE_CACHE", t.TempDir())
	_, err := CachedKubectl()
	require.Error(t, err)
	assert.Contains(t, err.Error(), "make k8s-lab")
	assert.False(t, Cached())
}

// TestGoCmd: the go command runs with the caller's context, and its failure carries its output.
func TestGoCmd(t *testing.T) {
	t.Parallel()
	var log strings.Builder
	require.NoError(t, goCmd(t.Context(), t.TempDir(), &log, "env", "CGO_ENABLED"))
	assert.Equal(t, "0", strings.TrimSpace(log.String()))
	err := goCmd(t.Context(), t.TempDir(), io.Discard, "no-such-subcommand")
	require.Error(t, err)
	assert.Contains(t, err.Error(), "go no-such-subcommand")
}

// TestRequireBuilt: without the cache a test is skipped (or fails under CI=true) with what to
// run, rather than building for a quarter of an hour.
func TestRequireBuilt(t *testing.T) {
	t.Setenv("CACHEMACHINE_CACHE", t.TempDir())
	t.Setenv("CI", "")
	var skipped bool
	var msg string
	done := make(chan struct{})
	go func() {
		defer close(done)
		ft := &fakeTB{TB: t}
		defer func() { skipped, msg = ft.skipped, ft.msg }()
		RequireBuilt(ft)
	}()
	<-done
	assert.True(t, skipped)
	assert.Contains(t, msg, "make k8s-lab")
}

// fakeTB records a Skip instead of ending the test.
type fakeTB struct {
	testing.TB
	skipped bool
	msg     string
}

func (f *fakeTB) Helper() {}
func (f *fakeTB) Skip(args ...any) {
	f.skipped, f.msg = true, fmt.Sprint(args...)
	runtime.Goexit()
}

// TestWaitHTTPSilentDaemon: a daemon that accepts connections and never answers fails the
// wait at its timeout; it does not block it for ever.
func TestWaitHTTPSilentDaemon(t *testing.T) {
	t.Parallel()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	stop := make(chan struct{})
	t.Cleanup(func() { close(stop); _ = l.Close() })
	go func() {
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			go func() { <-stop; _ = conn.Close() }()
		}
	}()
	sleep, err := exec.LookPath("sleep")
	require.NoError(t, err)
	p, err := lab.StartProcess(sleep, []string{"60"}, io.Discard)
	require.NoError(t, err)
	t.Cleanup(func() { _ = p.Stop(time.Second) })
	c := &Cluster{daemons: map[string]*daemon{"silent": {name: "silent", proc: p}}}
	done := make(chan error, 1)
	go func() {
		done <- c.waitHTTP(t.Context(), "silent", http.DefaultClient, "http://"+l.Addr().String()+"/health", time.Second)
	}()
	select {
	case err := <-done:
		require.ErrorIs(t, err, context.DeadlineExceeded)
	case <-time.After(10 * time.Second):
		t.Fatal("waitHTTP still waits for a daemon that never answers")
	}
}
