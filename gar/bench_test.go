package gar_test

import (
	"fmt"
	"testing"

	"github.com/cachemachine/cachemachine/gar/gartest"
	"github.com/cachemachine/cachemachine/rubintag"
)

// rubinTag returns the i-th of a realistic mix of Rubin tags: weeklies, dailies, releases,
// release candidates, experimentals and cycle builds.
func rubinTag(i int) string {
	j := i / 6 // every tag is distinct
	switch i % 6 {
	case 0:
		return fmt.Sprintf("w_%d_%02d", 2000+j/53, j%53)
	case 1:
		return fmt.Sprintf("d_%d_%02d_%02d", 2000+j/336, 1+j%336/28, 1+j%28)
	case 2:
		return fmt.Sprintf("r%d_%d_%d", j/100, j/10%10, j%10)
	case 3:
		return fmt.Sprintf("r%d_%d_%d_rc1", j/100, j/10%10, j%10)
	case 4:
		return fmt.Sprintf("exp_w_%d_%02d_build%d", 2000+j/53, j%53, j)
	default:
		return fmt.Sprintf("w_%d_%02d_c0020.001", 2000+j/53, j%53)
	}
}

// BenchmarkListSelect5000 lists 5,000 tags (one per image) through the fake Artifact
// Registry and applies a typical policy: the design's "listing + selection, 5,000 tags"
// target. calls/op is the number of ListDockerImages RPCs of one paged listing.
func BenchmarkListSelect5000(b *testing.B) {
	srv := gartest.Start(b)
	for i := range 5000 {
		tags := []string{rubinTag(i)}
		if i == 4998 {
			tags = append(tags, "recommended", "latest_weekly")
		}
		srv.Add(parent, "sciplat-lab", digest(i), tags, 4<<30)
	}
	l := newLister(b, srv)
	policy := rubintag.Policy{
		RecommendedTag: "recommended",
		AliasTags:      []string{"latest_weekly"},
		NumReleases:    1, NumWeeklies: 2, NumDailies: 3,
	}

	start := l.Calls()
	var n, selected int
	for b.Loop() {
		imgs, err := l.ListImages(b.Context())
		if err != nil {
			b.Fatal(err)
		}
		n = len(imgs)
		selected = len(policy.Select(imgs))
	}
	if n != 5002 || selected != 8 {
		b.Fatalf("listed %d tags, selected %d; want 5002, 8", n, selected)
	}
	b.ReportMetric(float64(l.Calls()-start)/float64(b.N), "calls/op")
	b.ReportMetric(float64(n), "tags/op")
}
