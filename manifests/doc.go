// Package manifests holds the kustomize base (base/) and overlays (overlays/gke,
// overlays/dev) that deploy the cachemachine agent; README.md is the deploy guide.
//
// It has no code: its test renders every kustomization with `kubectl kustomize`, decodes
// each object strictly into the Kubernetes API types, and checks the security model
// (design.md §7) and the wiring between the DaemonSet, the Services, the NetworkPolicy and
// the configuration, which it validates with the config package.
package manifests
