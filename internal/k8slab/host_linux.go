package k8slab

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/cachemachine/cachemachine/internal/lab"
)

// host records what a cluster changes on the machine, so that Close puts it back: the node
// address on lo, sysctls (ip_forward and the kubelet's kernel tunables), the shared bind mount of the cluster's directory, and the baseline
// that leftovers (iptables chains, cgroups, host directories) are compared with.
type host struct {
	dir      string
	sysctls  map[string]string // name → value before the cluster
	chains   map[string]bool   // "iptables/nat/CHAIN" before the cluster
	absent   []string          // host paths that did not exist before the cluster
	netns    []string          // the cni-* entries of netnsDir before the cluster
	created  []string          // of those, the ones setup created (restore removes them)
	daemons  []procRef         // the daemons the cluster started
	addrDone bool
	mounted  bool
}

// Host paths the kubelet, containerd's CNI and the plugins create when they are not told
// otherwise. One that was absent before the cluster and is there after it is a leftover,
// unless the lab created it itself (hostPathsCreated); Close removes only those.
var hostPathsWatched = []string{
	"/var/lib/cni", "/run/netns", "/var/log/containers", "/var/log/pods", "/var/lib/kubelet",
	"/etc/cni", "/opt/cni", "/etc/kubernetes", "/var/lib/cachemachine", "/run/cachemachine",
}

// hostPathsCreated are the watched paths a cluster needs (containerd's pod network
// namespaces, the CNI plugins' cache, the kubelet's container log links and its fixed
// directory, the agent's hostPath volumes): setup creates those that are absent, before any
// daemon starts, and records that it did, so that Close removes exactly what the lab made.
var hostPathsCreated = []string{
	"/run/netns", "/var/lib/cni", "/var/log/containers", "/var/lib/kubelet",
	"/var/lib/cachemachine", "/run/cachemachine",
}

// cgroupHierarchies returns the mounted cgroup hierarchies (v1 controllers, name=systemd,
// the unified v2 mount).
func cgroupHierarchies() []string {
	var out []string
	entries, _ := os.ReadDir("/sys/fs/cgroup")
	for _, e := range entries {
		p := filepath.Join("/sys/fs/cgroup", e.Name())
		if fi, err := os.Lstat(p); err == nil && fi.IsDir() {
			out = append(out, p)
		}
	}
	if _, err := os.Stat("/sys/fs/cgroup/cgroup.controllers"); err == nil {
		out = append(out, "/sys/fs/cgroup") // pure cgroup v2
	}
	return out
}

// iptablesCommands are the iptables front ends whose tables the cluster touches: the
// kubelet and kube-proxy use the ones on PATH (nf_tables on Debian 12); ip6tables only
// where the kernel has IPv6.
func iptablesCommands() []string {
	var out []string
	for _, c := range []string{"iptables", "ip6tables"} {
		if c == "ip6tables" {
			if _, err := os.Stat("/proc/sys/net/ipv6"); err != nil {
				continue
			}
		}
		if _, err := exec.LookPath(c); err == nil {
			out = append(out, c)
		}
	}
	return out
}

// checkHost refuses to start where another Kubernetes (or a crashed lab) left its marks.
func checkHost() error {
	var errs []error
	out, _ := exec.Command("ip", "-o", "addr", "show", "dev", "lo").Output()
	if bytes.Contains(out, []byte(" "+NodeIP+"/")) {
		errs = append(errs, fmt.Errorf("%s is already on lo", NodeIP))
	}
	if _, err := os.Stat("/sys/class/net/" + bridgeName); err == nil {
		errs = append(errs, fmt.Errorf("link %s exists", bridgeName))
	}
	for _, h := range cgroupHierarchies() {
		if _, err := os.Stat(filepath.Join(h, "kubepods")); err == nil {
			errs = append(errs, fmt.Errorf("cgroup %s/kubepods exists", h))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("another Kubernetes node runs on this machine, or a lab cluster was not torn down (%w); remove it first", err)
	}
	return nil
}

func newHost(dir string) (*host, error) {
	h := &host{dir: dir, sysctls: map[string]string{}, netns: append([]string{}, cniNetns(netnsDir)...)}
	for _, p := range hostPathsWatched {
		if _, err := os.Lstat(p); errors.Is(err, os.ErrNotExist) {
			h.absent = append(h.absent, p)
		}
	}
	var err error
	if h.chains, err = iptablesChains(); err != nil {
		return nil, fmt.Errorf("iptables baseline: %w", err)
	}
	return h, nil
}

// setup adds the node address, turns on forwarding and makes dir a shared mount (hostPath
// volumes with HostToContainer propagation, like the agent's /run/containerd, need the host
// side to be shared, as / is on a systemd host). It first records the machine's state in
// recordPath, so that a run killed before Close is cleaned up by the next Start.
func (h *host) setup() error {
	for _, name := range append([]string{"net.ipv4.ip_forward"}, kubeletSysctls...) {
		old, err := os.ReadFile(sysctlPath(name))
		if err != nil {
			return err
		}
		h.sysctls[name] = strings.TrimSpace(string(old))
	}
	if err := h.save(); err != nil {
		return err
	}
	for _, p := range hostPathsCreated {
		if !slices.Contains(h.absent, p) {
			continue
		}
		if err := os.Mkdir(p, 0o755); err != nil {
			return fmt.Errorf("create %s: %w", p, err)
		}
		h.created = append(h.created, p)
		if err := h.save(); err != nil {
			return err
		}
	}
	if err := run("ip", "addr", "add", NodeIP+"/32", "dev", "lo"); err != nil {
		return err
	}
	h.addrDone = true
	// Recorded above, with the kubelet's: restore puts it back.
	if err := os.WriteFile(sysctlPath("net.ipv4.ip_forward"), []byte("1"), 0o644); err != nil {
		return err
	}
	if err := syscall.Mount(h.dir, h.dir, "", syscall.MS_BIND|syscall.MS_REC, ""); err != nil {
		return fmt.Errorf("bind mount %s: %w", h.dir, err)
	}
	h.mounted = true
	if err := syscall.Mount("", h.dir, "", syscall.MS_SHARED|syscall.MS_REC, ""); err != nil {
		return fmt.Errorf("make %s shared: %w", h.dir, err)
	}
	return nil
}

// kubeletSysctls are the machine-wide sysctls the kubelet sets at start (its kernel
// tunables: vm.overcommit_memory=1, vm.panic_on_oom=0, kernel.panic=10,
// kernel.panic_on_oops=1, kernel.keys.root_maxkeys, kernel.keys.root_maxbytes) unless
// protectKernelDefaults is set, which would instead refuse to start on a machine whose values
// differ. setup records them before the kubelet starts; restore puts them back.
var kubeletSysctls = []string{
	"vm.overcommit_memory", "vm.panic_on_oom", "kernel.panic", "kernel.panic_on_oops",
	"kernel.keys.root_maxkeys", "kernel.keys.root_maxbytes",
}

func sysctlPath(name string) string { return "/proc/sys/" + strings.ReplaceAll(name, ".", "/") }

// restore undoes everything the cluster did to the machine, once every process it started is
// gone. It goes on after errors and returns them all.
func (h *host) restore(kubeProxy string) error {
	var errs []error
	add := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}
	// Daemons still running (after a crash) and shims of containers whose sandbox could not
	// be removed: only processes the cluster started.
	add(h.killOwnProcesses())
	// Containers whose shim is gone (containerd or the test died) still run in their pods'
	// cgroups: only the cgroups of the pods this cluster's kubelet ran are emptied.
	add(killPodProcesses(clusterPodUIDs(h.dir)))
	if h.mounted {
		add(lab.UnmountUnder(h.dir))
	}
	for _, cg := range cgroupHierarchies() {
		add(removeCgroupTree(filepath.Join(cg, "kubepods")))
	}
	if _, err := os.Stat("/sys/class/net/" + bridgeName); err == nil {
		add(run("ip", "link", "del", bridgeName))
	}
	if out, _ := exec.Command("ip", "-o", "addr", "show", "dev", "lo").Output(); h.addrDone && bytes.Contains(out, []byte(" "+NodeIP+"/")) {
		add(run("ip", "addr", "del", NodeIP+"/32", "dev", "lo"))
	}
	if kubeProxy != "" {
		// Its own chains in every mode it knows (iptables, ipvs, nftables).
		if out, err := exec.Command(kubeProxy, "--cleanup").CombinedOutput(); err != nil {
			add(fmt.Errorf("kube-proxy --cleanup: %w: %s", err, lastLines(string(out), 5)))
		}
	}
	add(removeNewChains(h.chains))
	for name, v := range h.sysctls {
		if b, err := os.ReadFile(sysctlPath(name)); err == nil && strings.TrimSpace(string(b)) == v {
			continue
		}
		add(os.WriteFile(sysctlPath(name), []byte(v), 0o644))
	}
	add(removeNetns(netnsDir, newNetns(netnsDir, h.netns)))
	for _, p := range h.created {
		add(removeCreated(p))
	}
	return errors.Join(errs...)
}

// netnsDir is where containerd bind-mounts its pod network namespaces, as cni-<uuid>; it
// removes them with their sandboxes, unless it died first.
const netnsDir = "/run/netns"

// cniNetns lists the cni-* entries of dir.
func cniNetns(dir string) []string {
	entries, _ := os.ReadDir(dir)
	var out []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), "cni-") {
			out = append(out, e.Name())
		}
	}
	return out
}

// newNetns lists the cni-* entries of dir that are not in before: the network namespaces of
// the cluster's pods. They appeared while the cluster ran, under the machine-wide lock and
// with no other kubelet on the machine (checkNoForeignKubelet), and nothing else here runs
// pods; the entries there before the cluster are never touched.
func newNetns(dir string, before []string) []string {
	var out []string
	for _, n := range cniNetns(dir) {
		if !slices.Contains(before, n) {
			out = append(out, n)
		}
	}
	return out
}

// removeNetns unmounts and removes the entries names of dir.
func removeNetns(dir string, names []string) error {
	var errs []error
	for _, name := range names {
		n := filepath.Join(dir, name)
		if err := lab.UnmountUnder(n); err != nil {
			errs = append(errs, err)
		} else if err := os.Remove(n); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// removeCreated removes a host directory setup created. netnsDir goes only when empty
// (restore has removed the cluster's network namespaces from it first): anything else there
// keeps it, and is reported as a leftover.
func removeCreated(p string) error {
	if p != netnsDir {
		if err := lab.UnmountUnder(p); err != nil {
			return err
		}
		return os.RemoveAll(p)
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) && !errors.Is(err, syscall.ENOTEMPTY) && !errors.Is(err, syscall.EEXIST) {
		return err
	}
	return nil
}

// clusterPodUIDs returns the UIDs of the pods the kubelet of the cluster in dir ran: its
// root directory's pods/UID and its pod log directories NAMESPACE_NAME_UID.
func clusterPodUIDs(dir string) []string {
	var out []string
	add := func(uid string) {
		if uid != "" && !slices.Contains(out, uid) {
			out = append(out, uid)
		}
	}
	entries, _ := os.ReadDir(filepath.Join(dir, "kubelet", "pods"))
	for _, e := range entries {
		add(e.Name())
	}
	entries, _ = os.ReadDir(filepath.Join(dir, "pod-logs"))
	for _, e := range entries {
		if i := strings.LastIndexByte(e.Name(), '_'); i >= 0 {
			add(e.Name()[i+1:])
		}
	}
	return out
}

// podCgroupProcesses returns the processes in the cgroups of the pods uids (kubepods/…/
// podUID and below, in every hierarchy; the kubelet's cgroupfs driver names them so).
func podCgroupProcesses(uids []string) []int {
	var out []int
	if len(uids) == 0 {
		return nil
	}
	for _, h := range cgroupHierarchies() {
		_ = filepath.WalkDir(filepath.Join(h, "kubepods"), func(p string, d os.DirEntry, err error) error {
			if err != nil || !d.IsDir() || !strings.HasPrefix(d.Name(), "pod") {
				return nil
			}
			uid := strings.TrimPrefix(d.Name(), "pod")
			if !slices.Contains(uids, uid) && !slices.Contains(uids, strings.ReplaceAll(uid, "_", "-")) {
				return nil
			}
			_ = filepath.WalkDir(p, func(q string, d os.DirEntry, err error) error {
				if err != nil || d.IsDir() || d.Name() != "cgroup.procs" {
					return nil
				}
				b, _ := os.ReadFile(q)
				for _, f := range strings.Fields(string(b)) {
					if pid, err := strconv.Atoi(f); err == nil && !slices.Contains(out, pid) {
						out = append(out, pid)
					}
				}
				return nil
			})
			return filepath.SkipDir
		})
	}
	return out
}

// killPodProcesses SIGKILLs every process in the cgroups of the pods uids and waits up to
// 5 s for them to go.
func killPodProcesses(uids []string) error {
	left := podCgroupProcesses(uids)
	for _, pid := range left {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	deadline := time.Now().Add(5 * time.Second)
	for len(left) > 0 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
		left = podCgroupProcesses(uids)
	}
	if len(left) > 0 {
		return fmt.Errorf("processes in the cluster's pod cgroups survive SIGKILL: %v", left)
	}
	return nil
}

// foreignKubelets returns the running processes named comm ("kubelet") that are not the
// lab's: not among the daemons of the crash record, if there is one (no lab kubelet runs
// otherwise: callers hold the machine-wide lock).
func foreignKubelets(comm string) []int {
	var ours []procRef
	if b, err := os.ReadFile(recordPath); err == nil {
		var rec hostRecord
		if json.Unmarshal(b, &rec) == nil {
			ours = rec.Daemons
		}
	}
	var out []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		c, err := os.ReadFile(filepath.Join("/proc", e.Name(), "comm"))
		if err != nil || strings.TrimSpace(string(c)) != comm {
			continue
		}
		r, ok := refOf(pid)
		if ok && !slices.Contains(ours, r) {
			out = append(out, pid)
		}
	}
	return out
}

// checkNoForeignKubelet refuses to start, or to clean up after a crashed lab cluster, while
// another kubelet (a process named comm, "kubelet" but in tests) runs on the machine: its
// pods, cgroups and chains are not the lab's.
func checkNoForeignKubelet(comm string) error {
	if pids := foreignKubelets(comm); len(pids) > 0 {
		return fmt.Errorf("a kubelet that is not the lab's runs on this machine (PID %v): refusing to start a lab cluster or clean up after one beside it; stop it first", pids)
	}
	return nil
}

// recordPath keeps, while a cluster runs, what its host had before it (hostRecord). Only
// the holder of the machine-wide lock reads or writes it.
var recordPath = filepath.Join(os.TempDir(), "cachemachine-k8slab.state")

// hostRecord is what restore needs to put the machine back, saved before any change.
type hostRecord struct {
	Dir     string            `json:"dir"`
	Sysctls map[string]string `json:"sysctls"`
	Chains  []string          `json:"chains"`
	Absent  []string          `json:"absent"`
	Netns   []string          `json:"netns"`
	Daemons []procRef         `json:"daemons"`
	Created []string          `json:"created"`
}

func (h *host) save() error {
	rec := hostRecord{Dir: h.dir, Sysctls: h.sysctls, Absent: h.absent, Netns: h.netns, Daemons: h.daemons, Created: h.created}
	for c := range h.chains {
		rec.Chains = append(rec.Chains, c)
	}
	slices.Sort(rec.Chains)
	b, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	return writeFileAtomic(recordPath, b)
}

// writeFileAtomic replaces path with data through a temporary file in its directory and a
// rename, so that a process killed while writing leaves the previous record, never half of
// one (or an empty one).
func writeFileAtomic(path string, data []byte) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), path)
	}
	if err != nil {
		_ = os.Remove(f.Name())
	}
	return err
}

// forget removes the record once the machine is back as it was.
func (h *host) forget() error {
	if err := os.Remove(recordPath); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// recoverCrashed cleans up after a cluster whose process died before Close (its children
// died with it, through PR_SET_PDEATHSIG, but not its address, bridge, chains, cgroups and
// mounts), from the record it left, and only what that record names: its daemons, the shims
// of its containerd, its pods' cgroups, the paths it created. Callers hold the machine-wide
// lock, so no lab cluster runs, and have checked that no other kubelet does.
func recoverCrashed(kubeProxy string, log io.Writer) error {
	b, err := os.ReadFile(recordPath)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var rec hostRecord
	if err := json.Unmarshal(b, &rec); err != nil || !strings.HasPrefix(filepath.Base(rec.Dir), "cmk") {
		return fmt.Errorf("%s: not a k8slab record (%v); remove it", recordPath, err)
	}
	fmt.Fprintf(log, "k8slab: the cluster in %s was not torn down (its test was killed?); cleaning up after it\n", rec.Dir)
	h := &host{dir: rec.Dir, sysctls: rec.Sysctls, chains: map[string]bool{}, absent: rec.Absent, netns: rec.Netns, created: rec.Created, daemons: rec.Daemons, addrDone: true, mounted: true}
	if rec.Netns == nil && !slices.Contains(rec.Created, netnsDir) {
		// A record from before the network namespaces were: which are the cluster's is
		// unknown, so none is.
		h.netns = cniNetns(netnsDir)
	}
	for _, c := range rec.Chains {
		h.chains[c] = true
	}
	errs := []error{h.restore(kubeProxy)}
	if left := h.leftovers(); len(left) > 0 {
		errs = append(errs, fmt.Errorf("still left: %s", strings.Join(left, "; ")))
	} else {
		errs = append(errs, os.RemoveAll(rec.Dir), h.forget())
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("clean up after %s: %w", rec.Dir, err)
	}
	return nil
}

// leftovers lists what the cluster left on the machine after restore: the lab's own check
// that it leaves the host as it found it.
func (h *host) leftovers() []string {
	var out []string
	if b, _ := exec.Command("ip", "-o", "addr", "show", "dev", "lo").Output(); bytes.Contains(b, []byte(" "+NodeIP+"/")) {
		out = append(out, "address "+NodeIP+" on lo")
	}
	if _, err := os.Stat("/sys/class/net/" + bridgeName); err == nil {
		out = append(out, "link "+bridgeName)
	}
	for _, cg := range cgroupHierarchies() {
		if _, err := os.Stat(filepath.Join(cg, "kubepods")); err == nil {
			out = append(out, "cgroup "+filepath.Join(cg, "kubepods"))
		}
	}
	if now, err := iptablesChains(); err != nil {
		out = append(out, "iptables chains not checked: "+err.Error())
	} else {
		for c := range now {
			if !h.chains[c] && isLabChain(c) {
				out = append(out, "iptables chain "+c)
			}
		}
	}
	out = append(out, changedSysctls(h.sysctls)...)
	out = append(out, h.newPaths()...)
	for _, n := range newNetns(netnsDir, h.netns) {
		out = append(out, "network namespace "+filepath.Join(netnsDir, n)+" (the cluster's pod's, not removed)")
	}
	if mps, _ := lab.MountsUnder(h.dir); len(mps) > 0 {
		out = append(out, "mounts under "+h.dir+": "+strings.Join(mps, ", "))
	}
	if procs := h.ownProcesses(); len(procs) > 0 {
		out = append(out, fmt.Sprintf("processes of the cluster in %s: %v", h.dir, procs))
	}
	slices.Sort(out)
	return out
}

// newPaths lists the watched host paths that were absent before the cluster and are there
// now: those the lab created and could not remove, and those something else created, which
// are not the lab's to delete.
func (h *host) newPaths() []string {
	var out []string
	for _, p := range h.absent {
		if _, err := os.Lstat(p); err != nil {
			continue
		}
		if slices.Contains(h.created, p) {
			out = append(out, "path "+p+" (created by the lab, not removed)")
		} else {
			out = append(out, "path "+p+" (appeared while the cluster ran, not created by the lab: left in place, remove it if it is the cluster's)")
		}
	}
	return out
}

// changedSysctls lists the sysctls whose value is not the one recorded.
func changedSysctls(recorded map[string]string) []string {
	var out []string
	for name, v := range recorded {
		if b, _ := os.ReadFile(sysctlPath(name)); strings.TrimSpace(string(b)) != v {
			out = append(out, fmt.Sprintf("sysctl %s=%s (was %s)", name, strings.TrimSpace(string(b)), v))
		}
	}
	slices.Sort(out)
	return out
}

func isLabChain(c string) bool {
	name := c[strings.LastIndexByte(c, '/')+1:]
	return strings.HasPrefix(name, "KUBE-") || strings.HasPrefix(name, "CNI-")
}

// iptablesDump is one iptables front end's `-save` output: its chains ("table/chain") and
// rules, in order.
type iptablesDump struct {
	cmd    string
	chains []string
	rules  []iptablesRule
}

type iptablesRule struct {
	table, chain string
	args         []string
}

// iptablesSave reads every iptables front end. One whose -save fails is left out of the
// dumps and named in the error: a baseline without it would make its chains look new.
func iptablesSave() ([]iptablesDump, error) {
	var out []iptablesDump
	var errs []error
	for _, cmd := range iptablesCommands() {
		b, err := exec.Command(cmd + "-save").Output()
		if err != nil {
			var ee *exec.ExitError
			if errors.As(err, &ee) {
				err = fmt.Errorf("%w: %s", err, lastLines(string(ee.Stderr), 3))
			}
			errs = append(errs, fmt.Errorf("%s-save: %w", cmd, err))
			continue
		}
		d := iptablesDump{cmd: cmd}
		table := ""
		for _, line := range strings.Split(string(b), "\n") {
			switch {
			case strings.HasPrefix(line, "*"):
				table = line[1:]
			case strings.HasPrefix(line, ":"):
				name, _, _ := strings.Cut(line[1:], " ")
				d.chains = append(d.chains, table+"/"+name)
			case strings.HasPrefix(line, "-A "):
				args := splitRule(line)
				d.rules = append(d.rules, iptablesRule{table: table, chain: args[1], args: args[2:]})
			}
		}
		out = append(out, d)
	}
	return out, errors.Join(errs...)
}

// iptablesChains returns "command/table/chain" for every chain of every iptables front end,
// or an error when one of them could not be read.
func iptablesChains() (map[string]bool, error) {
	dumps, err := iptablesSave()
	if err != nil {
		return nil, err
	}
	out := map[string]bool{}
	for _, d := range dumps {
		for _, c := range d.chains {
			out[d.cmd+"/"+c] = true
		}
	}
	return out, nil
}

// removeNewChains deletes KUBE-* and CNI-* chains that were not there before, with the rules
// of other chains that jump to them: what the kubelet (its canary and hint chains) and the
// CNI plugins create and kube-proxy --cleanup does not remove.
func removeNewChains(before map[string]bool) error {
	dumps, err := iptablesSave()
	errs := []error{err}
	for _, d := range dumps {
		cmd := d.cmd
		fresh := map[string][]string{} // table → new chains
		for _, c := range d.chains {
			if full := cmd + "/" + c; !before[full] && isLabChain(full) {
				table, name, _ := strings.Cut(c, "/")
				fresh[table] = append(fresh[table], name)
			}
		}
		for _, r := range d.rules {
			if slices.Contains(fresh[r.table], r.chain) {
				continue // goes with its chain
			}
			i := slices.Index(r.args, "-j")
			if i < 0 || i+1 >= len(r.args) || !slices.Contains(fresh[r.table], r.args[i+1]) {
				continue
			}
			errs = append(errs, run(cmd, append([]string{"-t", r.table, "-D", r.chain}, r.args...)...))
		}
		for t, chains := range fresh {
			for _, c := range chains {
				errs = append(errs, run(cmd, "-t", t, "-F", c))
			}
			for _, c := range chains {
				errs = append(errs, run(cmd, "-t", t, "-X", c))
			}
		}
	}
	return errors.Join(errs...)
}

// splitRule splits an iptables-save rule into words, honouring double quotes (comments).
func splitRule(line string) []string {
	var out []string
	var cur strings.Builder
	inQuote, escaped, have := false, false, false
	for _, r := range line {
		switch {
		case escaped:
			cur.WriteRune(r)
			escaped = false
		case r == '\\':
			escaped = true
		case r == '"':
			inQuote = !inQuote
			have = true
		case r == ' ' && !inQuote:
			if have {
				out = append(out, cur.String())
				cur.Reset()
				have = false
			}
		default:
			cur.WriteRune(r)
			have = true
		}
	}
	if have {
		out = append(out, cur.String())
	}
	return out
}

// removeCgroupTree removes a cgroup directory and its children, deepest first. Cgroup
// directories hold only the kernel's files, so rmdir is how they go.
func removeCgroupTree(root string) error {
	if _, err := os.Stat(root); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	var dirs []string
	_ = filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			dirs = append(dirs, p)
		}
		return nil
	})
	slices.SortFunc(dirs, func(a, b string) int { return len(b) - len(a) })
	var errs []error
	for _, d := range dirs {
		// A cgroup whose last task just exited can be busy for a moment.
		var err error
		for range 20 {
			if err = syscall.Rmdir(d); err == nil || errors.Is(err, syscall.ENOENT) {
				err = nil
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("rmdir %s: %w", d, err))
		}
	}
	return errors.Join(errs...)
}

// procRef names one process: its PID and its start time (in clock ticks since boot, field 22
// of /proc/PID/stat), so that a PID the kernel gave to another process since is not taken
// for it.
type procRef struct {
	PID   int    `json:"pid"`
	Start uint64 `json:"start"`
}

// procStat returns a live (not zombie) process's start time from /proc/PID/stat.
func procStat(pid int) (start uint64, ok bool) {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return 0, false
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, false
	}
	f := strings.Fields(string(b[i+1:])) // from field 3, the state
	if len(f) < 20 || f[0] == "Z" {
		return 0, false
	}
	start, err = strconv.ParseUint(f[19], 10, 64)
	return start, err == nil
}

// refOf returns pid's procRef, false when it is not running.
func refOf(pid int) (procRef, bool) {
	start, ok := procStat(pid)
	return procRef{PID: pid, Start: start}, ok
}

// alive reports whether r is still the process it named.
func (r procRef) alive() bool {
	start, ok := procStat(r.PID)
	return ok && start == r.Start
}

// isShimOf reports whether a command line (NUL-separated, as /proc/PID/cmdline) is a
// containerd shim serving the containerd whose socket is sock: containerd starts its shims
// with `-address SOCKET`.
func isShimOf(cmdline []byte, sock string) bool {
	args := strings.Split(strings.TrimRight(string(cmdline), "\x00"), "\x00")
	if len(args) == 0 || !strings.HasPrefix(filepath.Base(args[0]), "containerd-shim") {
		return false
	}
	for i, a := range args {
		if (a == "-address" || a == "--address") && i+1 < len(args) && args[i+1] == sock {
			return true
		}
		if a == "-address="+sock || a == "--address="+sock {
			return true
		}
	}
	return false
}

// containerdSocket is where the cluster in dir has containerd's socket (Cluster.ContainerdSocket).
func containerdSocket(dir string) string {
	return filepath.Join(dir, "run", "containerd", "containerd.sock")
}

// ownProcesses returns the cluster's live processes: the daemons it started (recorded with
// their start times) and the shims of its own containerd, found by the socket they serve.
// Nothing else on the machine, even a process whose command line mentions the cluster's
// directory, is the cluster's.
func (h *host) ownProcesses() []procRef {
	var out []procRef
	for _, d := range h.daemons {
		if d.alive() {
			out = append(out, d)
		}
	}
	sock := containerdSocket(h.dir)
	entries, _ := os.ReadDir("/proc")
	self := os.Getpid()
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || !isShimOf(cmdline, sock) {
			continue
		}
		if r, ok := refOf(pid); ok && !slices.Contains(out, r) {
			out = append(out, r)
		}
	}
	return out
}

// killOwnProcesses SIGKILLs what ownProcesses finds and waits up to 5 s for it to go.
func (h *host) killOwnProcesses() error {
	procs := h.ownProcesses()
	for _, p := range procs {
		if p.alive() {
			_ = syscall.Kill(p.PID, syscall.SIGKILL)
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for len(procs) > 0 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
		procs = h.ownProcesses()
	}
	if len(procs) > 0 {
		return fmt.Errorf("processes of the cluster in %s survive SIGKILL: %v", h.dir, procs)
	}
	return nil
}

// addDaemon records a daemon the cluster started, in the crash record too, so that a
// cleanup after a crash kills exactly it.
func (h *host) addDaemon(pid int) error {
	r, ok := refOf(pid)
	if !ok {
		return nil // already gone
	}
	h.daemons = append(h.daemons, r)
	return h.save()
}

func run(name string, args ...string) error {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}
