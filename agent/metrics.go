package agent

import "github.com/prometheus/client_golang/prometheus"

// metrics are the agent's Prometheus metrics.
type metrics struct {
	pulls       *prometheus.CounterVec
	pullSeconds prometheus.Histogram
	cached      prometheus.Gauge
	desired     prometheus.Gauge
	held        prometheus.Gauge
	fsUsed      prometheus.Gauge
	fsCapacity  prometheus.Gauge
	pullBytes   prometheus.Counter
	passes      *prometheus.CounterVec
}

// newMetrics builds the metrics and registers them on r when r is not nil.
func newMetrics(r prometheus.Registerer) *metrics {
	m := &metrics{
		pulls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cachemachine_pulls_total",
			Help: "Image pull attempts by result (success, error, timeout, canceled).",
		}, []string{"result"}),
		pullSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "cachemachine_pull_duration_seconds",
			Help:    "Duration of successful image pulls.",
			Buckets: []float64{0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600},
		}),
		cached:     prometheus.NewGauge(prometheus.GaugeOpts{Name: "cachemachine_images_cached", Help: "Desired images present on this node with the desired digest."}),
		desired:    prometheus.NewGauge(prometheus.GaugeOpts{Name: "cachemachine_images_desired", Help: "Images in the desired list."}),
		held:       prometheus.NewGauge(prometheus.GaugeOpts{Name: "cachemachine_pulls_held", Help: "Pulls held back by the disk guard."}),
		fsUsed:     prometheus.NewGauge(prometheus.GaugeOpts{Name: "cachemachine_image_fs_used_bytes", Help: "Bytes used on the image filesystem, as the runtime reports."}),
		fsCapacity: prometheus.NewGauge(prometheus.GaugeOpts{Name: "cachemachine_image_fs_capacity_bytes", Help: "Capacity of the image filesystem."}),
		pullBytes:  prometheus.NewCounter(prometheus.CounterOpts{Name: "cachemachine_pull_bytes_total", Help: "Bytes the runtime downloaded for the agent's pulls, as containerd's content store shows them (blobs already present are not counted)."}),
		passes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cachemachine_passes_total",
			Help: "Reconcile passes (inventory, then pulls and pins) by result: ok, or runtime_unavailable when the runtime did not answer.",
		}, []string{"result"}),
	}
	if r != nil {
		r.MustRegister(m.pulls, m.pullSeconds, m.cached, m.desired, m.held, m.fsUsed, m.fsCapacity, m.pullBytes, m.passes)
	}
	for _, res := range []string{"success", "error", "timeout", "canceled"} {
		m.pulls.WithLabelValues(res)
	}
	for _, res := range []string{"ok", "runtime_unavailable"} {
		m.passes.WithLabelValues(res)
	}
	return m
}
