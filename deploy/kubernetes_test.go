package deploy

import (
	"bytes"
	"errors"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"testing"

	"go.yaml.in/yaml/v3"
)

// The parts of the manifests the checks below read; every document is also
// decoded in full into a generic value first.
type object struct {
	APIVersion string `yaml:"apiVersion"`
	Kind       string `yaml:"kind"`
	Metadata   struct {
		Name      string `yaml:"name"`
		Namespace string `yaml:"namespace"`
	} `yaml:"metadata"`
	Resources []string `yaml:"resources"` // Kustomization
	Spec      struct {
		// Deployment
		Selector struct {
			MatchLabels map[string]string `yaml:"matchLabels"`
		} `yaml:"selector"`
		Template struct {
			Metadata struct {
				Labels map[string]string `yaml:"labels"`
			} `yaml:"metadata"`
			Spec struct {
				HostNetwork                   bool        `yaml:"hostNetwork"`
				TerminationGracePeriodSeconds int         `yaml:"terminationGracePeriodSeconds"`
				Containers                    []container `yaml:"containers"`
			} `yaml:"spec"`
		} `yaml:"template"`
		// Service (its selector, a plain map, is read from raw)
		Type                     string        `yaml:"type"`
		ClusterIP                string        `yaml:"clusterIP"`
		PublishNotReadyAddresses bool          `yaml:"publishNotReadyAddresses"`
		ExternalTrafficPolicy    string        `yaml:"externalTrafficPolicy"`
		SessionAffinity          string        `yaml:"sessionAffinity"`
		Ports                    []servicePort `yaml:"ports"`
	} `yaml:"spec"`
	raw map[string]any
}

type container struct {
	Args  []string `yaml:"args"`
	Ports []struct {
		Name          string `yaml:"name"`
		ContainerPort int    `yaml:"containerPort"`
		Protocol      string `yaml:"protocol"`
	} `yaml:"ports"`
	Env            []envVar `yaml:"env"`
	ReadinessProbe probe    `yaml:"readinessProbe"`
	LivenessProbe  probe    `yaml:"livenessProbe"`
}

type envVar struct {
	Name      string `yaml:"name"`
	Value     string `yaml:"value"`
	ValueFrom *struct {
		FieldRef *struct {
			FieldPath string `yaml:"fieldPath"`
		} `yaml:"fieldRef"`
		SecretKeyRef    *keyRef `yaml:"secretKeyRef"`
		ConfigMapKeyRef *keyRef `yaml:"configMapKeyRef"`
	} `yaml:"valueFrom"`
}

type keyRef struct {
	Name string `yaml:"name"`
	Key  string `yaml:"key"`
}

type probe struct {
	HTTPGet struct {
		Path string `yaml:"path"`
		Port string `yaml:"port"`
	} `yaml:"httpGet"`
	PeriodSeconds    int `yaml:"periodSeconds"`
	FailureThreshold int `yaml:"failureThreshold"`
}

type servicePort struct {
	Name       string `yaml:"name"`
	Port       int    `yaml:"port"`
	TargetPort string `yaml:"targetPort"`
	Protocol   string `yaml:"protocol"`
}

// loadManifests decodes every document of every YAML file in kubernetes/.
func loadManifests(t *testing.T) (map[string][]object, []object) {
	t.Helper()
	files, err := filepath.Glob(filepath.Join("kubernetes", "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no manifests in kubernetes/: %v", err)
	}
	byFile := make(map[string][]object)
	var all []object
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		dec := yaml.NewDecoder(bytes.NewReader(data))
		for n := 0; ; n++ {
			var node yaml.Node
			if err := dec.Decode(&node); errors.Is(err, io.EOF) {
				break
			} else if err != nil {
				t.Fatalf("%s document %d: %v", f, n, err)
			}
			var o object
			if err := node.Decode(&o.raw); err != nil {
				t.Fatalf("%s document %d: %v", f, n, err)
			}
			if err := node.Decode(&o); err != nil {
				t.Fatalf("%s document %d: %v", f, n, err)
			}
			if o.APIVersion == "" || o.Kind == "" {
				t.Errorf("%s document %d: no apiVersion or kind", f, n)
			}
			if o.Kind != "Kustomization" && o.Metadata.Name == "" {
				t.Errorf("%s document %d (%s): no metadata.name", f, n, o.Kind)
			}
			byFile[filepath.Base(f)] = append(byFile[filepath.Base(f)], o)
			all = append(all, o)
		}
	}
	return byFile, all
}

func find(t *testing.T, all []object, kind, name string) object {
	t.Helper()
	for _, o := range all {
		if o.Kind == kind && o.Metadata.Name == name {
			return o
		}
	}
	t.Fatalf("no %s %s in kubernetes/", kind, name)
	return object{}
}

func TestKubernetesManifests(t *testing.T) {
	byFile, all := loadManifests(t)

	// The kustomization lists every other file, and only existing ones.
	k := find(t, all, "Kustomization", "")
	var others []string
	for f := range byFile {
		if f != "kustomization.yaml" {
			others = append(others, f)
		}
	}
	slices.Sort(others)
	listed := slices.Sorted(slices.Values(k.Resources))
	if !slices.Equal(listed, others) {
		t.Errorf("kustomization.yaml lists %v; the directory has %v", listed, others)
	}
	for _, o := range all {
		if o.Kind != "Kustomization" && o.Kind != "Namespace" && o.Metadata.Namespace != "oneport" {
			t.Errorf("%s %s: namespace %q, want oneport", o.Kind, o.Metadata.Name, o.Metadata.Namespace)
		}
	}

	d := find(t, all, "Deployment", "oneport")
	pod := d.Spec.Template
	if !maps.Equal(d.Spec.Selector.MatchLabels, pod.Metadata.Labels) {
		t.Errorf("Deployment selector %v does not match the pod labels %v", d.Spec.Selector.MatchLabels, pod.Metadata.Labels)
	}
	if pod.Spec.HostNetwork {
		t.Error("hostNetwork must stay false")
	}
	// Drain timeout (10 min) plus hooks (30 s) must fit in the grace period.
	if g := pod.Spec.TerminationGracePeriodSeconds; g < 630 {
		t.Errorf("terminationGracePeriodSeconds %d is shorter than the 10 min drain plus 30 s of hooks", g)
	}
	if len(pod.Spec.Containers) != 1 {
		t.Fatalf("%d containers, want 1", len(pod.Spec.Containers))
	}
	c := pod.Spec.Containers[0]
	ports := make(map[string]string)
	for _, p := range c.Ports {
		ports[p.Name] = p.Protocol + "/" + strconv.Itoa(p.ContainerPort)
	}
	wantPorts := map[string]string{"media": "UDP/3478", "http": "TCP/8080", "gossip-tcp": "TCP/7946", "gossip-udp": "UDP/7946", "relay": "UDP/7947"}
	if !maps.Equal(ports, wantPorts) {
		t.Errorf("container ports %v, want %v", ports, wantPorts)
	}
	env := make(map[string]string)
	for _, e := range c.Env {
		switch v := e.ValueFrom; {
		case v == nil:
			env[e.Name] = e.Value
		case v.FieldRef != nil:
			env[e.Name] = "field:" + v.FieldRef.FieldPath
		case v.SecretKeyRef != nil:
			env[e.Name] = "secret:" + v.SecretKeyRef.Name + "/" + v.SecretKeyRef.Key
		case v.ConfigMapKeyRef != nil:
			env[e.Name] = "configmap:" + v.ConfigMapKeyRef.Name + "/" + v.ConfigMapKeyRef.Key
		}
	}
	for name, want := range map[string]string{
		"ONEPORT_UDP":           ":3478",
		"ONEPORT_HTTP":          ":8080",
		"ONEPORT_GOSSIP":        ":7946",
		"ONEPORT_RELAY":         ":7947",
		"ONEPORT_ADVERTISE":     "field:status.podIP",
		"ONEPORT_CLUSTER_KEY":   "secret:oneport-cluster-key/key",
		"ONEPORT_PUBLIC_IP":     "configmap:oneport-config/public-ip",
		"ONEPORT_JOIN":          "oneport-gossip.$(POD_NAMESPACE).svc.cluster.local:7946",
		"POD_NAMESPACE":         "field:metadata.namespace",
		"ONEPORT_DRAIN_TIMEOUT": "10m",
	} {
		if env[name] != want {
			t.Errorf("env %s = %q, want %q", name, env[name], want)
		}
	}
	// $(VAR) expands only variables defined earlier in the list.
	if i, j := envIndex(c, "POD_NAMESPACE"), envIndex(c, "ONEPORT_JOIN"); i < 0 || i > j {
		t.Error("POD_NAMESPACE must come before ONEPORT_JOIN, which expands it")
	}
	cm := find(t, all, "ConfigMap", "oneport-config")
	publicIP, _ := cm.raw["data"].(map[string]any)["public-ip"].(string)
	if publicIP == "" {
		t.Error("oneport-config has no public-ip")
	}
	if c.ReadinessProbe.HTTPGet.Path != "/readyz" || c.ReadinessProbe.HTTPGet.Port != "http" {
		t.Errorf("readiness probe %+v, want GET /readyz on http", c.ReadinessProbe.HTTPGet)
	}
	if c.LivenessProbe.HTTPGet.Path != "/healthz" || c.LivenessProbe.HTTPGet.Port != "http" {
		t.Errorf("liveness probe %+v, want GET /healthz on http", c.LivenessProbe.HTTPGet)
	}

	// Services select the pods and target named container ports.
	svc := func(name string) object {
		s := find(t, all, "Service", name)
		sel, _ := s.raw["spec"].(map[string]any)["selector"].(map[string]any)
		for k, v := range sel {
			if pod.Metadata.Labels[k] != v {
				t.Errorf("Service %s selector %v does not select the pods %v", name, sel, pod.Metadata.Labels)
			}
		}
		if len(sel) == 0 {
			t.Errorf("Service %s has no selector", name)
		}
		for _, p := range s.Spec.Ports {
			if ports[p.TargetPort] != p.Protocol+"/"+strconv.Itoa(p.Port) {
				t.Errorf("Service %s port %+v does not match container port %s (%s)", name, p, p.TargetPort, ports[p.TargetPort])
			}
		}
		return s
	}
	g := svc("oneport-gossip")
	if g.Spec.ClusterIP != "None" || !g.Spec.PublishNotReadyAddresses || len(g.Spec.Ports) != 2 {
		t.Errorf("oneport-gossip must be headless (clusterIP None), publish not-ready pods and carry gossip TCP and UDP: %+v", g.Spec)
	}
	m := svc("oneport-media")
	if m.Spec.Type != "LoadBalancer" || len(m.Spec.Ports) != 1 || m.Spec.Ports[0].Protocol != "UDP" || m.Spec.Ports[0].Port != 3478 {
		t.Errorf("oneport-media must be a LoadBalancer for UDP 3478: %+v", m.Spec)
	}
	if m.Spec.ExternalTrafficPolicy == "" || m.Spec.SessionAffinity == "" {
		t.Error("oneport-media must state externalTrafficPolicy and sessionAffinity")
	}
	if lbIP, _ := m.raw["spec"].(map[string]any)["loadBalancerIP"].(string); lbIP != publicIP {
		t.Errorf("oneport-media loadBalancerIP %q differs from the nodes' public-ip %q", lbIP, publicIP)
	}
	h := svc("oneport-http")
	if h.Spec.Type != "LoadBalancer" || len(h.Spec.Ports) != 1 || h.Spec.Ports[0].Protocol != "TCP" || h.Spec.Ports[0].Port != 8080 {
		t.Errorf("oneport-http must be a LoadBalancer for TCP 8080: %+v", h.Spec)
	}
}

func envIndex(c container, name string) int {
	return slices.IndexFunc(c.Env, func(e envVar) bool { return e.Name == name })
}
