// Command k8slab builds the lab Kubernetes binaries into the cache (`make k8s-lab`, which
// `make test` runs first so that the first, long build is not inside a test's timeout), or
// runs a lab cluster until Ctrl-C for poking at it with kubectl.
//
//	go run ./internal/k8slab/cmd/k8slab build
//	go run ./internal/k8slab/cmd/k8slab up
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/cachemachine/cachemachine/internal/k8slab"
	"github.com/cachemachine/cachemachine/internal/lab"
)

func main() {
	if len(os.Args) != 2 || (os.Args[1] != "build" && os.Args[1] != "up") {
		fmt.Fprintln(os.Stderr, "usage: k8slab build|up")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1]); err != nil {
		fmt.Fprintln(os.Stderr, "k8slab:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, cmd string) error {
	if cmd == "build" {
		bin, err := k8slab.Build(ctx, os.Stderr)
		if err != nil {
			return err
		}
		fmt.Fprintf(os.Stderr, "k8slab: binaries ready (kubelet: %s)\n", bin.Kubelet)
		return nil
	}
	reg, err := lab.StartRegistry(ctx, lab.RegistryOptions{})
	if err != nil {
		return err
	}
	defer reg.Close()
	c, err := k8slab.Start(ctx, k8slab.Options{Registry: reg.Addr, Mirrors: map[string]string{"docker.io": reg.Addr}, Log: os.Stderr})
	if err != nil {
		return err
	}
	fmt.Printf("export KUBECONFIG=%s\n# kubectl: %s\n# registry: %s (docker.io is mirrored to it)\n# Ctrl-C tears the cluster down\n", c.Kubeconfig, c.Bin.Kubectl, reg.Addr)
	<-ctx.Done()
	return c.Close()
}
