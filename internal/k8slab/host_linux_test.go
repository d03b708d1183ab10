package k8slab

import (
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestKubeletSysctls: the sysctls the host records for the kubelet exist on this kernel,
// and a value that differs from the record is a leftover.
func TestKubeletSysctls(t *testing.T) {
	t.Parallel()
	recorded := map[string]string{}
	for _, name := range kubeletSysctls {
		b, err := os.ReadFile(sysctlPath(name))
		require.NoError(t, err)
		recorded[name] = strings.TrimSpace(string(b))
	}
	assert.Empty(t, changedSysctls(recorded))
	recorded["kernel.panic"] += "7"
	left := changedSysctls(recorded)
	require.Len(t, left, 1)
	assert.Contains(t, left[0], "sysctl kernel.panic=")
}

// TestIsShimOf: a shim is the cluster's only when it serves the cluster's own containerd
// socket, exactly; a command line that merely names the cluster's directory is not.
func TestIsShimOf(t *testing.T) {
	t.Parallel()
	sock := containerdSocket("/tmp/cmk123")
	cmd := func(args ...string) []byte { return []byte(strings.Join(args, "\x00") + "\x00") }
	assert.True(t, isShimOf(cmd("/usr/bin/containerd-shim-runc-v2", "-namespace", "k8s.io", "-id", "abc", "-address", sock), sock))
	assert.True(t, isShimOf(cmd("containerd-shim-runc-v2", "--address="+sock), sock))
	assert.False(t, isShimOf(cmd("/usr/bin/containerd-shim-runc-v2", "-namespace", "k8s.io", "-id", "abc", "-address", containerdSocket("/tmp/cmk1234")), sock))
	assert.False(t, isShimOf(cmd("/usr/bin/containerd-shim-runc-v2", "-address", "/run/containerd/containerd.sock"), sock))
	assert.False(t, isShimOf(cmd("tail", "-f", "/tmp/cmk123/logs/kubelet.log"), sock))
	assert.False(t, isShimOf(cmd("tail", "-address", sock), sock))
}

// TestOwnProcesses: the cluster's processes are the daemons it recorded, while they are the
// same processes; another process naming its directory is not one of them.
func TestOwnProcesses(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	start := func(args ...string) *exec.Cmd {
		cmd := exec.Command(args[0], args[1:]...)
		require.NoError(t, cmd.Start())
		t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
		return cmd
	}
	daemon := start("sleep", "60")
	bystander := start("sleep", "61", dir) // names dir: not the cluster's
	h := &host{dir: dir}
	r, ok := refOf(daemon.Process.Pid)
	require.True(t, ok)
	h.daemons = []procRef{r, {PID: bystander.Process.Pid, Start: 1}} // a reused PID: wrong start time
	assert.Equal(t, []procRef{r}, h.ownProcesses())
	require.NoError(t, h.killOwnProcesses())
	assert.Empty(t, h.ownProcesses())
	assert.Nil(t, bystander.ProcessState, "the bystander still runs")
	assert.NoError(t, syscall.Kill(bystander.Process.Pid, 0))
}

// TestNewPaths: a watched path that appeared while the cluster ran is a leftover; only the
// ones the lab created are removed.
func TestNewPaths(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	mine, other := dir+"/mine", dir+"/other"
	h := &host{dir: dir, absent: []string{mine, other, dir + "/still-absent"}, created: []string{mine}}
	require.NoError(t, os.MkdirAll(mine+"/results", 0o755))
	require.NoError(t, os.Mkdir(other, 0o755))
	left := h.newPaths()
	require.Len(t, left, 2)
	assert.Contains(t, left[0], mine+" (created by the lab")
	assert.Contains(t, left[1], other+" (appeared while the cluster ran, not created by the lab")
	require.NoError(t, removeCreated(mine))
	assert.NoDirExists(t, mine)
	assert.DirExists(t, other)
	require.Len(t, h.newPaths(), 1)
}

// TestClusterPodUIDs: the pods whose cgroups a cleanup may empty are the ones the cluster's
// kubelet left in its own directory, and none when it left none.
func TestClusterPodUIDs(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	assert.Empty(t, clusterPodUIDs(dir))
	assert.Empty(t, podCgroupProcesses(nil))
	require.NoError(t, os.MkdirAll(dir+"/kubelet/pods/0b8f-1", 0o755))
	require.NoError(t, os.MkdirAll(dir+"/pod-logs/cachemachine_agent-x_0b8f-1", 0o755))
	require.NoError(t, os.MkdirAll(dir+"/pod-logs/default_web_77aa-2", 0o755))
	assert.Equal(t, []string{"0b8f-1", "77aa-2"}, clusterPodUIDs(dir))
}

// TestForeignKubelet: a kubelet the lab did not start is found, so that Start refuses to
// start or to clean up beside it. The stand-in has a name of its own (a comm of at most 15
// bytes): one named kubelet would make a cluster started by another package's test, at the
// same time, refuse to start.
func TestForeignKubelet(t *testing.T) {
	sleep, err := exec.LookPath("sleep")
	require.NoError(t, err)
	comm := fmt.Sprintf("kubelet-%d", os.Getpid()%1e7)
	kubelet := t.TempDir() + "/" + comm
	b, err := os.ReadFile(sleep)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(kubelet, b, 0o755))
	cmd := exec.Command(kubelet, "30")
	require.NoError(t, cmd.Start())
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	require.Eventually(t, func() bool {
		c, _ := os.ReadFile("/proc/" + strconv.Itoa(cmd.Process.Pid) + "/comm")
		return strings.TrimSpace(string(c)) == comm
	}, 5*time.Second, 10*time.Millisecond)
	assert.Contains(t, foreignKubelets(comm), cmd.Process.Pid)
	assert.NotContains(t, foreignKubelets("kubelet"), cmd.Process.Pid)
	err = checkNoForeignKubelet(comm)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "not the lab's")
}

// TestIptablesBaselineFails: a front end whose -save fails fails the baseline, and so the
// start, instead of leaving its chains out: removeNewChains would then take the chains it
// had before the cluster for the cluster's and delete them.
func TestIptablesBaselineFails(t *testing.T) {
	bin := t.TempDir()
	require.NoError(t, os.WriteFile(bin+"/iptables", []byte("#!/bin/sh\nexit 0\n"), 0o755))
	require.NoError(t, os.WriteFile(bin+"/iptables-save", []byte("#!/bin/sh\necho 'iptables-save: table busy' >&2\nexit 4\n"), 0o755))
	t.Setenv("PATH", bin)
	_, err := iptablesChains()
	require.ErrorContains(t, err, "iptables-save")
	require.ErrorContains(t, err, "table busy")
	_, err = newHost(t.TempDir())
	require.ErrorContains(t, err, "iptables baseline")
}

// TestWriteFileAtomic: the record is replaced whole, with its mode, and no temporary file
// stays beside it.
func TestWriteFileAtomic(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	p := dir + "/state"
	require.NoError(t, writeFileAtomic(p, []byte(`{"dir":"/tmp/cmk1","daemons":[1,2,3]}`)))
	require.NoError(t, writeFileAtomic(p, []byte(`{"dir":"/tmp/cmk1"}`)))
	b, err := os.ReadFile(p)
	require.NoError(t, err)
	assert.Equal(t, `{"dir":"/tmp/cmk1"}`, string(b))
	fi, err := os.Stat(p)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), fi.Mode().Perm())
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	assert.Len(t, entries, 1)
}

// TestNewNetns: the network namespaces that appeared while the cluster ran are its pods'
// and go; those there before it, and entries that are not containerd's, stay.
func TestNewNetns(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	for _, n := range []string{"cni-before", "other"} {
		require.NoError(t, os.WriteFile(dir+"/"+n, nil, 0o644))
	}
	before := cniNetns(dir)
	assert.Equal(t, []string{"cni-before"}, before)
	assert.Empty(t, newNetns(dir, before))
	for _, n := range []string{"cni-1", "cni-2", "other-new"} {
		require.NoError(t, os.WriteFile(dir+"/"+n, nil, 0o644))
	}
	assert.Equal(t, []string{"cni-1", "cni-2"}, newNetns(dir, before))
	require.NoError(t, removeNetns(dir, newNetns(dir, before)))
	assert.Empty(t, newNetns(dir, before))
	for _, n := range []string{"cni-before", "other", "other-new"} {
		assert.FileExists(t, dir+"/"+n)
	}
	// A directory the lab created: every cni-* entry is new.
	assert.Equal(t, []string{"cni-before"}, newNetns(dir, nil))
}
