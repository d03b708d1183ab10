// Package helmchart renders and installs the cachemachine Helm chart with Helm's own
// library (helm.sh/helm/v3), as `helm template` and `helm install` would: the manifests
// tests render it, the lab cluster test installs it.
package helmchart

import (
	"context"
	"fmt"
	"time"

	"helm.sh/helm/v3/pkg/action"
	"helm.sh/helm/v3/pkg/chart"
	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/cli/values"
	"helm.sh/helm/v3/pkg/getter"
	"k8s.io/cli-runtime/pkg/genericclioptions"
)

// Release names a release and its values: value files in order (-f), then Values (--set
// as a map, merged last).
type Release struct {
	// Chart is the chart's directory.
	Chart string
	// Name is the release name. Default "cachemachine".
	Name string
	// Namespace is the release namespace.
	Namespace  string
	ValueFiles []string
	Values     map[string]any
}

func (r Release) values() (map[string]any, error) {
	vals, err := (&values.Options{ValueFiles: r.ValueFiles}).MergeValues(getter.Providers{})
	if err != nil {
		return nil, err
	}
	return chartutil.MergeTables(copyMap(r.Values), vals), nil
}

// copyMap deep-copies nested maps: MergeTables writes into its first argument.
func copyMap(m map[string]any) map[string]any {
	out := make(map[string]any, len(m))
	for k, v := range m {
		if mm, ok := v.(map[string]any); ok {
			v = copyMap(mm)
		}
		out[k] = v
	}
	return out
}

func (r Release) name() string {
	if r.Name == "" {
		return "cachemachine"
	}
	return r.Name
}

// Render returns the manifests `helm template` prints for the release (no cluster needed).
func Render(ctx context.Context, r Release) (string, error) {
	chrt, vals, err := r.load()
	if err != nil {
		return "", err
	}
	install := action.NewInstall(&action.Configuration{})
	install.DryRun, install.ClientOnly, install.Replace = true, true, true
	install.ReleaseName, install.Namespace = r.name(), r.Namespace
	rel, err := install.RunWithContext(ctx, chrt, vals)
	if err != nil {
		return "", fmt.Errorf("render chart %s: %w", r.Chart, err)
	}
	return rel.Manifest, nil
}

// load reads the release's chart and computes its values.
func (r Release) load() (*chart.Chart, map[string]any, error) {
	chrt, err := loader.Load(r.Chart)
	if err != nil {
		return nil, nil, fmt.Errorf("load chart %s: %w", r.Chart, err)
	}
	vals, err := r.values()
	if err != nil {
		return nil, nil, err
	}
	return chrt, vals, nil
}

// Install installs the release into the cluster of kubeconfig (the namespace must exist) and,
// with wait, waits until its DaemonSet is rolled out or timeout passes: `helm install --wait`.
func Install(ctx context.Context, kubeconfig string, r Release, wait bool, timeout time.Duration, logf func(string, ...any)) error {
	cfg, err := configuration(kubeconfig, r.Namespace, logf)
	if err != nil {
		return err
	}
	chrt, vals, err := r.load()
	if err != nil {
		return err
	}
	install := action.NewInstall(cfg)
	install.ReleaseName, install.Namespace = r.name(), r.Namespace
	install.Wait, install.Timeout = wait, timeout
	if _, err := install.RunWithContext(ctx, chrt, vals); err != nil {
		return fmt.Errorf("helm install %s: %w", r.name(), err)
	}
	return nil
}

// Upgrade upgrades the release with new values (`helm upgrade`).
func Upgrade(ctx context.Context, kubeconfig string, r Release, logf func(string, ...any)) error {
	cfg, err := configuration(kubeconfig, r.Namespace, logf)
	if err != nil {
		return err
	}
	chrt, vals, err := r.load()
	if err != nil {
		return err
	}
	up := action.NewUpgrade(cfg)
	up.Namespace = r.Namespace
	if _, err := up.RunWithContext(ctx, r.name(), chrt, vals); err != nil {
		return fmt.Errorf("helm upgrade %s: %w", r.name(), err)
	}
	return nil
}

// Uninstall removes the release (`helm uninstall --wait`).
func Uninstall(kubeconfig string, r Release, timeout time.Duration, logf func(string, ...any)) error {
	cfg, err := configuration(kubeconfig, r.Namespace, logf)
	if err != nil {
		return err
	}
	un := action.NewUninstall(cfg)
	un.Wait, un.Timeout = true, timeout
	if _, err := un.Run(r.name()); err != nil {
		return fmt.Errorf("helm uninstall %s: %w", r.name(), err)
	}
	return nil
}

func configuration(kubeconfig, namespace string, logf func(string, ...any)) (*action.Configuration, error) {
	if logf == nil {
		logf = func(string, ...any) {}
	}
	flags := genericclioptions.NewConfigFlags(false)
	flags.KubeConfig, flags.Namespace = &kubeconfig, &namespace
	cfg := new(action.Configuration)
	if err := cfg.Init(flags, namespace, "secret", action.DebugLog(logf)); err != nil {
		return nil, fmt.Errorf("helm: %w", err)
	}
	return cfg, nil
}
