package lab

import (
	"strconv"
	"strings"
)

// PinsReported says whether containerd of runtimeVersion (as CRI Version reports it: "1.6.20",
// "1.6.20~ds1", "v2.1.4") reports an image labelled io.cri-containerd.pinned=pinned as pinned
// to the kubelet right after the label is set: 1.6.25+, 1.7.10+ and every 2.x. Earlier 1.6.22+
// and 1.7.3+ do so only after a re-pull or a restart, and 1.6.21 and older never.
func PinsReported(runtimeVersion string) bool {
	v := strings.TrimPrefix(runtimeVersion, "v")
	if i := strings.IndexAny(v, "~-+ "); i >= 0 {
		v = v[:i]
	}
	parts := strings.SplitN(v, ".", 3)
	if len(parts) < 3 {
		return false
	}
	n := make([]int, 3)
	for i, p := range parts {
		x, err := strconv.Atoi(p)
		if err != nil {
			return false
		}
		n[i] = x
	}
	switch {
	case n[0] >= 2:
		return true
	case n[0] == 1 && n[1] == 6:
		return n[2] >= 25
	case n[0] == 1 && n[1] == 7:
		return n[2] >= 10
	case n[0] == 1 && n[1] > 7:
		return true
	}
	return false
}
