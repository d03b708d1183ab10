package deps
import (
 _ "k8s.io/cri-api/pkg/apis/runtime/v1"
 _ "google.golang.org/grpc"
 _ "github.com/google/go-containerregistry/pkg/v1/remote"
 _ "github.com/google/go-containerregistry/pkg/v1/random"
 _ "github.com/google/go-containerregistry/pkg/registry"
 _ "github.com/hashicorp/memberlist"
 _ "github.com/prometheus/client_golang/prometheus"
 _ "github.com/stretchr/testify/require"
 _ "golang.org/x/sync/errgroup"
 _ "gopkg.in/yaml.v3"
 _ "cloud.google.com/go/artifactregistry/apiv1"
 _ "golang.org/x/oauth2/google"
)
