package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/cachemachine/cachemachine/image"
)

// ErrUsage marks a debug command line that cannot be run as given.
var ErrUsage = errors.New("usage")

// DebugUsage is the synopsis of `cachemachine debug`.
const DebugUsage = `usage: cachemachine debug COMMAND [--socket PATH] [-o json]   (flags go anywhere)
commands:
  node          runtime, image filesystem and the node's image inventory
  pulls         pulls in flight, queued, held and failed
  desired       the desired list this node works from
  cluster       members, leader and versions as this node sees them
  reconcile     re-list sources (leader) and reconcile now
  pull IMAGE    pull one image now and wait for the result`

// RunDebug runs one debug command against the agent's socket and prints the answer to out:
// readable tables by default, the raw JSON when jsonOut is set.
func RunDebug(ctx context.Context, socket string, args []string, jsonOut bool, out io.Writer) error {
	if len(args) == 0 {
		return fmt.Errorf("%w: no command given\n%s", ErrUsage, DebugUsage)
	}
	method, path, body := http.MethodGet, "", []byte(nil)
	switch cmd := args[0]; {
	case cmd == "node" || cmd == "pulls" || cmd == "desired" || cmd == "cluster":
		path = "/v1/" + cmd
	case cmd == "reconcile":
		method, path = http.MethodPost, "/v1/reconcile"
	case cmd == "pull":
		if len(args) != 2 {
			return fmt.Errorf("%w: pull takes one image reference\n%s", ErrUsage, DebugUsage)
		}
		method, path = http.MethodPost, "/v1/pull"
		body, _ = json.Marshal(map[string]string{"image": args[1]})
	default:
		return fmt.Errorf("%w: unknown command %q\n%s", ErrUsage, cmd, DebugUsage)
	}
	if len(args) > 1 && args[0] != "pull" {
		return fmt.Errorf("%w: %s takes no arguments\n%s", ErrUsage, args[0], DebugUsage)
	}
	raw, err := debugCall(ctx, socket, method, path, body)
	if err != nil {
		return err
	}
	if jsonOut {
		_, err := out.Write(raw)
		return err
	}
	return printTable(out, args[0], raw)
}

// debugCall makes one request over the unix socket and returns the body of a 2xx answer; any
// other answer becomes an error carrying the server's message.
func debugCall(ctx context.Context, socket, method, path string, body []byte) ([]byte, error) {
	if _, err := os.Stat(socket); err != nil {
		return nil, reachError(socket, err)
	}
	client := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
	}}
	req, err := http.NewRequestWithContext(ctx, method, "http://agent"+path, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return nil, reachError(socket, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, fmt.Errorf("debug socket %s: read answer: %w", socket, err)
	}
	if resp.StatusCode/100 != 2 {
		var e struct {
			Error string `json:"error"`
		}
		if json.Unmarshal(raw, &e) == nil && e.Error != "" {
			return nil, fmt.Errorf("%s %s: %s", method, path, e.Error)
		}
		return nil, fmt.Errorf("%s %s: %s", method, path, resp.Status)
	}
	return raw, nil
}

// reachError explains why the debug socket could not be reached (err from stat or connect)
// and what to do about it.
func reachError(socket string, err error) error {
	var errno syscall.Errno
	switch {
	case !errors.As(err, &errno):
		return fmt.Errorf("debug socket %s: %w", socket, err)
	case errors.Is(errno, os.ErrPermission):
		return fmt.Errorf("debug socket %s: %w (the debug socket is reachable only by root: run this as root on the node, or in the agent pod with kubectl exec)", socket, errno)
	case errors.Is(errno, os.ErrNotExist):
		return fmt.Errorf("debug socket %s: %w (is the agent running on this node? pass --socket PATH or set agent.debug_socket)", socket, errno)
	case errno == syscall.ECONNREFUSED:
		return fmt.Errorf("debug socket %s: %w (a stale socket: is the agent running?)", socket, errno)
	}
	return fmt.Errorf("debug socket %s: %w", socket, err)
}

func printTable(out io.Writer, cmd string, raw []byte) error {
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	defer tw.Flush()
	switch cmd {
	case "node":
		var v NodeView
		if err := json.Unmarshal(raw, &v); err != nil {
			return fmt.Errorf("decode node view: %w", err)
		}
		fmt.Fprintf(tw, "node:\t%s\nruntime:\t%s\nready:\t%v\nstate version:\t%d\n", v.Node, v.Runtime, v.Ready, v.Version)
		if v.LastError != "" {
			fmt.Fprintf(tw, "last error:\t%s\n", v.LastError)
		}
		fmt.Fprintf(tw, "image fs:\t%s used, %s free of %s (%s)\n", image.FormatSize(v.Disk.UsedBytes), image.FormatSize(v.Disk.FreeBytes), image.FormatSize(v.Disk.CapacityBytes), v.Disk.Path)
		fmt.Fprintf(tw, "pinning:\t%s\n", pinningLine(v.Pinning))
		if v.Pinning.Detail != "" {
			fmt.Fprintf(tw, "\t%s\n", v.Pinning.Detail)
		}
		fmt.Fprintf(tw, "pinned desired images:\t%d\n", len(v.Pinned))
		for _, ref := range v.Pinning.OverBudget {
			fmt.Fprintf(tw, "over the pin budget:\t%s\n", ref)
		}
		fmt.Fprintln(tw)
		fmt.Fprintln(tw, "TAGS\tDIGEST\tSIZE\tPINNED\tID")
		for _, img := range v.Images {
			digest := "-"
			if ds := digestsOf(img.Digests); len(ds) > 0 {
				digest = short(ds[0])
			}
			tags := strings.Join(img.Tags, ",")
			if tags == "" {
				tags = "<none>"
			}
			pinned := "-"
			if img.Pinned {
				pinned = "pinned"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", tags, digest, image.FormatSize(img.Size), pinned, short(img.ID))
		}
	case "pulls":
		var v PullsView
		if err := json.Unmarshal(raw, &v); err != nil {
			return fmt.Errorf("decode pulls view: %w", err)
		}
		fmt.Fprintln(tw, "IMAGE\tSTATE\tDETAIL")
		for _, p := range v.Pulling {
			fmt.Fprintf(tw, "%s\tpulling\t%s elapsed%s\n", p.Ref, (time.Duration(p.ElapsedSeconds * float64(time.Second))).Round(100*time.Millisecond), progressText(p.Progress, p.ETASeconds))
		}
		for _, q := range v.Queued {
			fmt.Fprintf(tw, "%s\tqueued\t\n", q)
		}
		for _, h := range v.Held {
			fmt.Fprintf(tw, "%s\theld\t%s\n", h.Ref, h.Reason)
		}
		for _, f := range v.Failed {
			fmt.Fprintf(tw, "%s\tfailed\tattempt %d, retry in %s: %s\n", f.Ref, f.Attempts, max(0, time.Until(f.NextRetry)).Round(time.Second), f.Error)
		}
		for _, c := range v.Cached {
			fmt.Fprintf(tw, "%s\tcached\t\n", c)
		}
	case "desired":
		var v Desired
		if err := json.Unmarshal(raw, &v); err != nil {
			return fmt.Errorf("decode desired list: %w", err)
		}
		fmt.Fprintf(tw, "version:\t%d\n\n", v.Version)
		fmt.Fprintln(tw, "#\tIMAGE\tDIGEST\tNAME")
		for i, d := range v.Images {
			digest := d.Digest
			if digest == "" {
				digest = "-"
			}
			fmt.Fprintf(tw, "%d\t%s\t%s\t%s\n", i+1, d.Ref, short(digest), d.Name)
		}
	case "pull":
		var v PullResult
		if err := json.Unmarshal(raw, &v); err != nil {
			return fmt.Errorf("decode pull result: %w", err)
		}
		fmt.Fprintf(tw, "image:\t%s\ndigest:\t%s\nimage id:\t%s\nduration:\t%s\n", v.Ref, v.Digest, v.ImageID, v.Duration.Round(time.Millisecond))
	case "cluster":
		// The shape is coordinator.ClusterStatus; the agent cannot import it (the
		// coordinator builds on the agent), so it reads the fields it shows.
		var v struct {
			Enabled        *bool  `json:"enabled"`
			Node           string `json:"node"`
			Ready          bool   `json:"ready"`
			Leader         string `json:"leader"`
			LeaderHTTPAddr string `json:"leader_http_addr"`
			DesiredVersion uint64 `json:"desired_version"`
			Members        []struct {
				Name          string `json:"name"`
				Addr          string `json:"addr"`
				State         string `json:"state"`
				Leader        bool   `json:"leader"`
				HTTPAddr      string `json:"http_addr"`
				StateVersion  uint64 `json:"state_version"`
				StoredVersion uint64 `json:"stored_version"`
			} `json:"members"`
			// Warming is added by the leader package (leader.ClusterView).
			Warming []struct {
				Name    string    `json:"name"`
				Until   time.Time `json:"until"`
				Missing []string  `json:"missing"`
			} `json:"warming"`
		}
		if err := json.Unmarshal(raw, &v); err != nil {
			return fmt.Errorf("decode cluster view: %w", err)
		}
		if v.Enabled != nil && !*v.Enabled {
			fmt.Fprintf(tw, "node:\t%s\ncluster:\tdisabled (standalone agent)\n", v.Node)
			return nil
		}
		fmt.Fprintf(tw, "node:\t%s\njoined:\t%v\nleader:\t%s %s\ndesired version:\t%d\n\n", v.Node, v.Ready, v.Leader, v.LeaderHTTPAddr, v.DesiredVersion)
		fmt.Fprintln(tw, "MEMBER\tGOSSIP ADDR\tSTATE\tROLE\tHTTP\tSTATE VERSION\tSTORED VERSION\tWARMING")
		for _, m := range v.Members {
			role := "-"
			if m.Leader {
				role = "leader"
			}
			warming := "-"
			for _, w := range v.Warming {
				if w.Name == m.Name {
					warming = fmt.Sprintf("yes: %d missing, counts by %s at the latest", len(w.Missing), w.Until.Local().Format(time.TimeOnly))
				}
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%d\t%s\n", m.Name, m.Addr, m.State, role, m.HTTPAddr, m.StateVersion, m.StoredVersion, warming)
		}
		if len(v.Warming) > 0 {
			fmt.Fprintln(tw, "\nwarming: started recently and still filling its cache; left out of common_cache until it holds every desired image")
		}
	default: // reconcile: a small JSON object
		var v map[string]any
		if err := json.Unmarshal(raw, &v); err != nil {
			return fmt.Errorf("decode answer: %w", err)
		}
		printMap(tw, "", v)
	}
	return nil
}

// pinningLine is Pinning's status and budget on one line.
func pinningLine(p Pinning) string {
	if p.Status == "" {
		return "not reported"
	}
	if p.Status == PinOff || p.Status == PinError {
		return p.Status
	}
	budget := "no budget (image filesystem not measured)"
	if p.BudgetBytes > 0 {
		budget = "budget " + image.FormatSize(p.BudgetBytes)
	}
	return fmt.Sprintf("%s, %s pinned, %s", p.Status, image.FormatSize(p.PinnedBytes), budget)
}

// progressText is ", downloading 45% (90.0 MiB of 200.0 MiB), 80.0 MiB/s, 1s left", or ""
// without a measurement.
func progressText(p Progress, eta *float64) string {
	if p.Phase == "" {
		return ""
	}
	out := ", " + p.Phase
	switch {
	case p.BytesTotal > 0:
		out += fmt.Sprintf(" %d%% (%s of %s)", min(p.BytesDone, p.BytesTotal)*100/p.BytesTotal, image.FormatSize(p.BytesDone), image.FormatSize(p.BytesTotal))
	case p.BytesDone > 0:
		out += " " + image.FormatSize(p.BytesDone)
	}
	if p.BytesPerSecond > 0 {
		out += ", " + image.FormatSize(p.BytesPerSecond) + "/s"
	}
	if eta != nil && p.Phase == PhaseDownloading {
		out += ", " + time.Duration(*eta*float64(time.Second)).Round(time.Second).String() + " left"
	}
	return out
}

func printMap(w io.Writer, indent string, v map[string]any) {
	keys := make([]string, 0, len(v))
	for k := range v {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		switch x := v[k].(type) {
		case map[string]any:
			fmt.Fprintf(w, "%s%s:\n", indent, k)
			printMap(w, indent+"  ", x)
		case []any:
			fmt.Fprintf(w, "%s%s:\n", indent, k)
			for _, e := range x {
				if m, ok := e.(map[string]any); ok {
					fmt.Fprintf(w, "%s  -\n", indent)
					printMap(w, indent+"    ", m)
				} else {
					fmt.Fprintf(w, "%s  - %v\n", indent, e)
				}
			}
		default:
			fmt.Fprintf(w, "%s%s:\t%v\n", indent, k, x)
		}
	}
}

func short(digest string) string {
	if i := strings.IndexByte(digest, ':'); i >= 0 && len(digest) > i+13 {
		return digest[:i+13]
	}
	return digest
}
