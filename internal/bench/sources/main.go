// Command sources is the bench-sources benchmark: listing and Rubin tag selection of a
// 5,000-tag repository through the fake Artifact Registry, in CPU time and API calls. The
// listing's CPU includes the in-process fake server's, so the figures are an upper bound.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"slices"
	"syscall"
	"time"

	"github.com/cachemachine/cachemachine/gar"
	"github.com/cachemachine/cachemachine/gar/gartest"
	"github.com/cachemachine/cachemachine/rubintag"
	"github.com/cachemachine/cachemachine/sources"
)

func main() {
	tags := flag.Int("tags", 5000, "tags in the repository")
	rounds := flag.Int("rounds", 21, "rounds")
	flag.Parse()
	if err := run(*tags, *rounds); err != nil {
		fmt.Fprintln(os.Stderr, "bench-sources:", err)
		os.Exit(1)
	}
}

func cpu() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func run(n, rounds int) error {
	ctx := context.Background()
	srv, err := gartest.NewServer()
	if err != nil {
		return err
	}
	defer srv.Close()
	const parent = "projects/rubin/locations/us-central1/repositories/sciplat"
	for i := range n {
		var tag string
		k := i / 4 // each type gets unique tags
		switch i % 4 {
		case 0:
			tag = fmt.Sprintf("w_%d_%02d", 2000+k/52, k%52+1)
		case 1:
			tag = fmt.Sprintf("d_%d_%02d_%02d", 2000+k/336, (k/28)%12+1, k%28+1)
		case 2:
			tag = fmt.Sprintf("r%d_0_%d", 10+k/10, k%10)
		default:
			tag = fmt.Sprintf("exp_w_%d_%02d_c%04d.%03d", 2000+k/52, k%52+1, k%30, k%100)
		}
		srv.Add(parent, "sciplat-lab", fmt.Sprintf("sha256:%064x", i), []string{tag}, 4<<30)
	}
	srv.Add(parent, "sciplat-lab", fmt.Sprintf("sha256:%064x", n+1), []string{"recommended", "latest_weekly"}, 4<<30)
	l, err := gar.New(ctx, gar.Config{ProjectID: "rubin", Location: "us-central1", Repository: "sciplat", Image: "sciplat-lab", Endpoint: srv.Addr(), Insecure: true})
	if err != nil {
		return err
	}
	defer l.Close()
	policy := rubintag.Policy{RecommendedTag: "recommended", AliasTags: []string{"latest_weekly"}, NumReleases: 1, NumWeeklies: 2, NumDailies: 3}
	src := sources.NewRubin("bench", l, policy)

	imgs, err := l.ListImages(ctx)
	if err != nil {
		return err
	}
	if len(imgs) != n+2 {
		return fmt.Errorf("listed %d tags, want %d", len(imgs), n+2)
	}
	var full, listOnly, selectOnly []time.Duration
	var calls []int
	var desired int
	for range rounds {
		before, c0 := cpu(), l.Calls()
		res, err := src.List(ctx)
		if err != nil {
			return err
		}
		full = append(full, cpu()-before)
		calls = append(calls, l.Calls()-c0)
		desired = len(res.Desired)

		before = cpu()
		if _, err := l.ListImages(ctx); err != nil {
			return err
		}
		listOnly = append(listOnly, cpu()-before)

		before = cpu()
		policy.Select(imgs)
		selectOnly = append(selectOnly, cpu()-before)
	}
	med := func(d []time.Duration) time.Duration { s := slices.Clone(d); slices.Sort(s); return s[len(s)/2] }
	base := med(listOnly)
	fmt.Printf("\nbench-sources: %d tags (+2 aliases) through the fake Artifact Registry (page size %d), %d rounds, CPU time per round (median)\n\n", n, gar.PageSize, rounds)
	fmt.Printf("| %-34s | %10s | %9s | %-14s |\n", "step", "CPU", "API calls", "vs listing")
	fmt.Printf("|------------------------------------|------------|-----------|----------------|\n")
	fmt.Printf("| %-34s | %8.1fms | %9d | %-14s |\n", "listing only (baseline)", ms(base), calls[0], "1.00x")
	fmt.Printf("| %-34s | %8.1fms | %9s | %-14s |\n", "selection only (rubintag)", ms(med(selectOnly)), "-", fmt.Sprintf("%.2fx", ms(med(selectOnly))/ms(base)))
	fmt.Printf("| %-34s | %8.1fms | %9d | %-14s |\n", "listing + selection (source.List)", ms(med(full)), slices.Max(calls), fmt.Sprintf("%.2fx", ms(med(full))/ms(base)))
	pages := (n + 2 + gar.PageSize - 1) / gar.PageSize
	ok := med(full) <= 200*time.Millisecond && slices.Max(calls) == pages
	fmt.Printf("\n%d desired images selected; target <= 200 ms CPU and one paged listing (%d pages of %d): %s\n", desired, pages, gar.PageSize, map[bool]string{true: "PASS", false: "FAIL"}[ok])
	return nil
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
