package agent

import (
	"fmt"
	"strings"
)

// NormalizeRef returns ref in the fully qualified form containerd's CRI plugin stores in
// repo_tags: a domain ("docker.io" when none is given, with "library/" for official images)
// and a tag (":latest" when neither tag nor digest is given). It checks the reference's shape
// and names it when it is malformed.
func NormalizeRef(ref string) (string, error) {
	if ref == "" {
		return "", fmt.Errorf("image reference is empty")
	}
	if strings.ContainsAny(ref, " \t\n") || strings.ToLower(ref) != ref && !hasUpperOnlyInTag(ref) {
		return "", fmt.Errorf("image reference %q: invalid characters", ref)
	}
	name, suffix := ref, ""
	if i := strings.IndexByte(name, '@'); i >= 0 {
		name, suffix = name[:i], name[i:]
		if !strings.HasPrefix(suffix, "@sha256:") || len(suffix) != len("@sha256:")+64 {
			return "", fmt.Errorf("image reference %q: invalid digest", ref)
		}
	}
	if i := strings.LastIndexByte(name, ':'); i > strings.LastIndexByte(name, '/') {
		if i == len(name)-1 {
			return "", fmt.Errorf("image reference %q: empty tag", ref)
		}
		name, suffix = name[:i], name[i:]+suffix
	}
	if name == "" || strings.HasSuffix(name, "/") || strings.HasPrefix(name, "/") || strings.Contains(name, "//") {
		return "", fmt.Errorf("image reference %q: invalid repository", ref)
	}
	first, rest, found := strings.Cut(name, "/")
	if !found || (!strings.ContainsAny(first, ".:") && first != "localhost") {
		if !found {
			name = "library/" + name
		}
		name = "docker.io/" + name
	} else if first == "index.docker.io" {
		name = "docker.io/" + rest
	}
	if suffix == "" {
		suffix = ":latest"
	}
	return name + suffix, nil
}

// hasUpperOnlyInTag reports whether upper-case letters occur only in the tag or in the
// domain's port-less host (domains are case-insensitive; repositories must be lower case).
func hasUpperOnlyInTag(ref string) bool {
	name := ref
	if i := strings.IndexByte(name, '@'); i >= 0 {
		name = name[:i]
	}
	if i := strings.LastIndexByte(name, ':'); i > strings.LastIndexByte(name, '/') {
		name = name[:i]
	}
	return strings.ToLower(name) == name
}

// repoOf returns the repository part of a normalized reference (no tag, no digest).
func repoOf(ref string) string {
	if i := strings.IndexByte(ref, '@'); i >= 0 {
		ref = ref[:i]
	}
	if i := strings.LastIndexByte(ref, ':'); i > strings.LastIndexByte(ref, '/') {
		ref = ref[:i]
	}
	return ref
}

// digestOf returns the digest part of a repo@digest reference, or "".
func digestOf(ref string) string {
	if i := strings.IndexByte(ref, '@'); i >= 0 {
		return ref[i+1:]
	}
	return ""
}
