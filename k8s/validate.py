#!/usr/bin/env python3
"""Offline validation of k8s/: no cluster, no network once its tools are installed.

Run through validate.sh, which installs kubernetes-validate (the Kubernetes JSON schemas) into
k8s/.venv. What it checks:

1. every manifest in k8s/, one by one, against the Kubernetes JSON schemas in strict mode (unknown
   fields are errors; so is a kind/apiVersion without a schema), for each version in K8S_VERSIONS;
2. kustomization.yaml: rendered here (resources, namespace, configMapGenerator, images), and the
   rendered objects validated the same way; compared with `kubectl kustomize` when kubectl exists;
3. that the pieces agree: ConfigMap keys are real TRACKLINE_* variables of
   services/server/src/config.rs, the listen port is the container port, the data dir is the
   volume, terminationGracePeriodSeconds covers preStop + the server's shutdown grace, probes hit
   /readyz and /healthz, every Service, PDB and NetworkPolicy selects a workload of these files
   (Ingress backends: the trackline pod), each upstream-hash-by key has its own Service and its
   path captures, the Dockerfile's user, port and volume match the pod;
   broker mode: replicas equals the number of names in TRACKLINE_CLUSTER_NODES, which are the
   StatefulSet's pod names; replicas > 1 needs TRACKLINE_BROKER; each pod's TRACKLINE_NODE_ID is
   its own name; TRACKLINE_BROKER names a Service here that reaches the NATS container, whose
   config file agrees with its ports and probes (and parses, with nats-server on PATH);
4. grafana-dashboard.json parses, uses only metrics the server emits, with labels the server
   gives them, and covers all of them; with promtool on PATH, every query also parses as PromQL;
5. ../docker-compose.yml against the Compose specification's JSON schema (from the docker-compose
   wheel validate.sh downloads; `docker compose config` too where a Compose plugin exists), and
   the broker-mode rules: three nodes built from k8s/Dockerfile, node ids their service names and
   exactly TRACKLINE_CLUSTER_NODES, one broker that is a service here, one shared secret from the
   environment, a volume of its own per node at the data dir, the image's user.

Exit status 0 when everything holds, 1 otherwise.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
import kubernetes_validate.utils as kv

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CONFIG_RS = ROOT / "services" / "server" / "src" / "config.rs"
METRIC_SOURCES = ROOT / "services"
DASHBOARD = HERE / "grafana-dashboard.json"
DOCKERFILE = HERE / "Dockerfile"
# The Secret is applied by hand, never by `kubectl apply -k` (see secret.yaml).
NOT_IN_KUSTOMIZATION = {"secret.yaml"}
KUSTOMIZATION_KEYS = {"apiVersion", "kind", "namespace", "resources", "configMapGenerator", "images"}
# Labels Prometheus or the exporter add to every series, whatever the server's code says.
TARGET_LABELS = {"namespace", "pod", "instance", "job", "container", "service", "endpoint",
                 "quantile", "le", "__name__"}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "StorageClass",
                  "PersistentVolume", "IngressClass", "CustomResourceDefinition"}

errors: list[str] = []


def fail(msg: str) -> None:
    errors.append(msg)
    print(f"  FAIL {msg}")


def note(msg: str) -> None:
    print(f"  {msg}")


def versions() -> list[str]:
    wanted = os.environ.get("K8S_VERSIONS", "1.29,latest")
    out = []
    for v in wanted.split(","):
        v = v.strip()
        out.append(kv.latest_version() if v == "latest" else v)
    return out


def load_docs(path: Path) -> list[dict]:
    try:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    except yaml.YAMLError as e:
        fail(f"{path.name}: not YAML: {e}")
        return []
    for i, d in enumerate(docs):
        if not isinstance(d, dict):
            fail(f"{path.name} document {i}: not a mapping")
    return [d for d in docs if isinstance(d, dict)]


def ident(doc: dict) -> str:
    md = doc.get("metadata") or {}
    return f"{doc.get('kind')}/{md.get('name')}"


def schema_check(where: str, docs: list[dict], vers: list[str]) -> int:
    checked = 0
    for doc in docs:
        if not doc.get("apiVersion") or not doc.get("kind"):
            fail(f"{where}: a document without apiVersion/kind")
            continue
        if not (doc.get("metadata") or {}).get("name"):
            fail(f"{where}: {doc['kind']} without metadata.name")
        for v in vers:
            try:
                kv.validate(doc, v, strict=True)
            except kv.ValidationError as e:
                path = ".".join(str(p) for p in e.path) or "(top)"
                fail(f"{where}: {ident(doc)} against Kubernetes {e.version}: {path}: {e.message}")
            except kv.SchemaNotFoundError as e:
                fail(f"{where}: {ident(doc)}: {e.message}")
            except kv.VersionNotSupportedError:
                fail(f"kubernetes-validate {kv.__version__} has no schemas for Kubernetes {v}")
                return checked
        checked += 1
    return checked


# --- kustomize, the subset this directory uses -------------------------------------------------

def split_image(image: str) -> tuple[str, str]:
    """name and the rest (":tag" or "@digest" or "")."""
    if "@" in image:
        name, digest = image.split("@", 1)
        return name, "@" + digest
    last = image.rsplit("/", 1)[-1]
    if ":" in last:
        name, tag = image.rsplit(":", 1)
        return name, ":" + tag
    return image, ""


def render(kz: dict) -> list[dict]:
    for key in kz:
        if key not in KUSTOMIZATION_KEYS:
            fail(f"kustomization.yaml: '{key}' is not handled by validate.py's renderer; extend it")
    out: list[dict] = []
    for res in kz.get("resources") or []:
        path = HERE / res
        if not path.is_file():
            fail(f"kustomization.yaml: resource {res} does not exist")
            continue
        out.extend(copy.deepcopy(load_docs(path)))
    for gen in kz.get("configMapGenerator") or []:
        opts = gen.get("options") or {}
        if not opts.get("disableNameSuffixHash"):
            fail(f"configMapGenerator {gen.get('name')}: set options.disableNameSuffixHash "
                 "(the renderer here does not compute kustomize's hash suffix)")
        unknown = set(gen) - {"name", "files", "options"}
        if unknown or set(opts) - {"disableNameSuffixHash", "labels"}:
            fail(f"configMapGenerator {gen.get('name')}: fields the renderer does not handle")
        data = {}
        for f in gen.get("files") or []:
            key, _, src = f.partition("=") if "=" in f else (Path(f).name, "", f)
            src_path = HERE / src
            if not src_path.is_file():
                fail(f"configMapGenerator {gen.get('name')}: {src} does not exist")
                continue
            data[key] = src_path.read_text()
        md = {"name": gen["name"]}
        if opts.get("labels"):
            md["labels"] = dict(opts["labels"])
        out.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": md, "data": data})
    ns = kz.get("namespace")
    if ns:
        for doc in out:
            if doc.get("kind") not in CLUSTER_SCOPED:
                doc.setdefault("metadata", {})["namespace"] = ns
    for img in kz.get("images") or []:
        for doc in out:
            tpl = ((doc.get("spec") or {}).get("template") or {}).get("spec") or {}
            for c in (tpl.get("containers") or []) + (tpl.get("initContainers") or []):
                name, rest = split_image(c.get("image", ""))
                if name != img["name"]:
                    continue
                new_name = img.get("newName", name)
                if "digest" in img:
                    rest = "@" + img["digest"]
                elif "newTag" in img:
                    rest = ":" + str(img["newTag"])
                c["image"] = new_name + rest
    return out


def key_of(doc: dict) -> tuple:
    md = doc.get("metadata") or {}
    return (doc.get("kind"), md.get("namespace"), md.get("name"))


def compare_with_kubectl(rendered: list[dict]) -> None:
    kubectl = shutil.which("kubectl")
    if not kubectl:
        note("kubectl not found: skipped the comparison with `kubectl kustomize`")
        return
    try:
        proc = subprocess.run([kubectl, "kustomize", str(HERE)], capture_output=True, text=True,
                              timeout=120)
    except subprocess.TimeoutExpired:
        fail("kubectl kustomize timed out")
        return
    if proc.returncode != 0:
        fail(f"kubectl kustomize failed: {proc.stderr.strip()}")
        return
    theirs = {key_of(d): d for d in yaml.safe_load_all(proc.stdout) if d}
    ours = {key_of(d): d for d in rendered}
    if set(theirs) != set(ours):
        fail(f"kubectl kustomize renders {sorted(map(str, theirs))}, validate.py {sorted(map(str, ours))}")
        return
    for k in ours:
        if ours[k] != theirs[k]:
            fail(f"{k}: kubectl kustomize and validate.py render it differently")
            return
    note(f"kubectl kustomize ({kubectl}) renders the same {len(ours)} objects")


# --- cross-checks --------------------------------------------------------------------------------

def server_env() -> dict[str, str | None]:
    """TRACKLINE_* variable -> default (as written in config.rs, or None)."""
    text = CONFIG_RS.read_text()
    found: dict[str, str | None] = {}
    for attr in re.findall(r"#\[arg\((.*?)\)\]", text, re.S):
        m = re.search(r'env\s*=\s*"(TRACKLINE_[A-Z0-9_]+)"', attr)
        if not m:
            continue
        d = re.search(r'default_value(?:_t)?\s*=\s*("?[^,"]*"?)', attr)
        found[m.group(1)] = d.group(1).strip().strip('"') if d else None
    if not found:
        fail(f"no TRACKLINE_* variables found in {CONFIG_RS}")
    return found


def server_metrics() -> dict[str, set[str]]:
    """metric name -> the label names the server's code gives it (`"label" => value`)."""
    found: dict[str, set[str]] = {}
    for path in METRIC_SOURCES.rglob("*.rs"):
        text = path.read_text()
        for m in re.finditer(r'(?:counter|gauge|histogram)!\(\s*"(trackline_[a-z0-9_]+)"', text):
            # The macro's arguments: up to its closing parenthesis (values may call functions).
            depth, end = 1, m.end()
            while end < len(text) and depth:
                depth += {"(": 1, ")": -1}.get(text[end], 0)
                end += 1
            labels = set(re.findall(r'"([a-zA-Z_][a-zA-Z0-9_]*)"\s*=>', text[m.end():end]))
            found.setdefault(m.group(1), set()).update(labels)
    if not found:
        fail(f"no metrics found under {METRIC_SOURCES}")
    return found


def subset(small: dict, big: dict) -> bool:
    return all(big.get(k) == v for k, v in (small or {}).items())


def only(objs: list[dict], kind: str) -> list[dict]:
    return [o for o in objs if o.get("kind") == kind]


WORKLOAD_KINDS = ("StatefulSet", "Deployment", "DaemonSet")


def pod_labels_of(workload: dict) -> dict:
    return ((workload["spec"].get("template") or {}).get("metadata") or {}).get("labels") or {}


def container_ports(workload: dict) -> dict:
    """port name (or None) -> number, over every container of the workload's pod."""
    pod = workload["spec"]["template"]["spec"]
    return {p.get("name"): p["containerPort"]
            for c in pod.get("containers", []) for p in c.get("ports", [])}


def selected(selector: dict | None, workloads: list[dict]) -> list[dict]:
    """The workloads whose pods a matchLabels-style selector picks (an empty one picks none)."""
    if not selector:
        return []
    return [w for w in workloads if subset(selector, pod_labels_of(w))]


def has_port(workload: dict, port) -> bool:
    ports = container_ports(workload)
    return port in ports or port in ports.values()


def check_pod(kind_name: str, pod: dict) -> None:
    """Restricted Pod Security and resources, for every container of every workload."""
    psc = pod.get("securityContext") or {}
    if (psc.get("seccompProfile") or {}).get("type") not in ("RuntimeDefault", "Localhost"):
        fail(f"{kind_name}: no RuntimeDefault seccompProfile (the namespace enforces restricted)")
    for c in pod.get("containers", []) + pod.get("initContainers", []):
        sc = c.get("securityContext") or {}
        if not (sc.get("runAsNonRoot") or psc.get("runAsNonRoot")):
            fail(f"{kind_name} container {c['name']}: runAsNonRoot is not set")
        if sc.get("readOnlyRootFilesystem") is not True:
            fail(f"{kind_name} container {c['name']}: readOnlyRootFilesystem is not true")
        if sc.get("allowPrivilegeEscalation") is not False:
            fail(f"{kind_name} container {c['name']}: allowPrivilegeEscalation is not false")
        if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
            fail(f"{kind_name} container {c['name']}: capabilities do not drop ALL")
        res = c.get("resources") or {}
        for part in ("requests", "limits"):
            for what in ("cpu", "memory"):
                if what not in (res.get(part) or {}):
                    fail(f"{kind_name} container {c['name']}: no resources.{part}.{what}")


def cross_checks(objs: list[dict], secret_docs: list[dict]) -> dict:
    facts: dict = {}
    envs = server_env()
    stss = only(objs, "StatefulSet")
    if len(stss) != 1:
        fail(f"expected one StatefulSet, found {len(stss)}")
        return facts
    sts = stss[0]
    workloads = [o for o in objs if o.get("kind") in WORKLOAD_KINDS]
    spec = sts["spec"]
    tpl = spec["template"]
    pod_labels = tpl["metadata"].get("labels") or {}
    pod = tpl["spec"]
    for w in workloads:
        if not subset(w["spec"]["selector"].get("matchLabels"), pod_labels_of(w)):
            fail(f"{ident(w)}: selector does not match its pod labels")
        if w is not sts and selected(w["spec"]["selector"].get("matchLabels"), [sts]):
            fail(f"{ident(w)}: its selector also matches the trackline pods")
        check_pod(ident(w), w["spec"]["template"]["spec"])
    containers = {c["name"]: c for c in pod.get("containers", [])}
    main = containers.get("trackline")
    if not main:
        fail("no container named trackline")
        return facts
    ports = {p.get("name"): p["containerPort"] for p in main.get("ports", [])}
    facts["ports"] = ports

    configmaps = {o["metadata"]["name"]: o for o in only(objs, "ConfigMap")}
    env: dict[str, str] = {}
    from_configmap: set[str] = set()
    for src in main.get("envFrom", []):
        ref = src.get("configMapRef")
        if ref:
            cm = configmaps.get(ref["name"])
            if not cm:
                fail(f"envFrom configMapRef {ref['name']}: no such ConfigMap")
                continue
            for key, value in (cm.get("data") or {}).items():
                if key == "TRACKLINE_SECRET":
                    fail(f"ConfigMap {ref['name']} holds TRACKLINE_SECRET; it belongs in the Secret")
                elif key not in envs and key != "RUST_LOG":
                    fail(f"ConfigMap {ref['name']}: {key} is not a variable of {CONFIG_RS.name}")
                env[key] = value
                from_configmap.add(key)
    secrets = {d["metadata"]["name"]: d for d in secret_docs if d.get("kind") == "Secret"}
    for c in pod.get("containers", []) + pod.get("initContainers", []):
        for src in c.get("envFrom", []):
            ref = src.get("configMapRef")
            if ref and ref["name"] not in configmaps:
                fail(f"container {c['name']}: envFrom configMapRef {ref['name']}: no such ConfigMap")
        for e in c.get("env", []):
            if e["name"].startswith("TRACKLINE_") and e["name"] not in envs:
                fail(f"container {c['name']}: {e['name']} is not a variable of {CONFIG_RS.name}")
            ref = (e.get("valueFrom") or {}).get("secretKeyRef")
            if ref:
                sec = secrets.get(ref["name"])
                keys = set((sec or {}).get("stringData") or {}) | set((sec or {}).get("data") or {})
                if not sec:
                    fail(f"container {c['name']}: secret {ref['name']} is not described by secret.yaml")
                elif ref["key"] not in keys:
                    fail(f"container {c['name']}: secret {ref['name']} has no key {ref['key']}")
            if c is main and "value" in e:
                env[e["name"]] = e["value"]
                from_configmap.discard(e["name"])
    if not any(e["name"] == "TRACKLINE_SECRET" for e in main.get("env", [])):
        fail("the server container gets no TRACKLINE_SECRET (it would run with a random one)")

    listen = env.get("TRACKLINE_LISTEN", envs.get("TRACKLINE_LISTEN") or "")
    host, _, port = listen.rpartition(":")
    if host not in ("0.0.0.0", "[::]"):
        fail(f"TRACKLINE_LISTEN={listen}: listen on 0.0.0.0 inside a pod")
    if not port.isdigit() or int(port) not in ports.values():
        fail(f"TRACKLINE_LISTEN={listen} is not a container port ({sorted(ports.values())})")
    facts["listen_port"] = int(port) if port.isdigit() else None

    data_dir = env.get("TRACKLINE_DATA_DIR")
    claims = {t["metadata"]["name"] for t in spec.get("volumeClaimTemplates", [])}
    mounts = {m["mountPath"]: m for m in main.get("volumeMounts", [])}
    if not data_dir or data_dir not in mounts:
        fail(f"TRACKLINE_DATA_DIR={data_dir} is not a volume mount of the server")
    else:
        m = mounts[data_dir]
        if m["name"] not in claims:
            fail(f"{data_dir} is mounted from {m['name']}, not a volumeClaimTemplate")
        if m.get("readOnly"):
            fail(f"{data_dir} is mounted read-only")
    facts["data_dir"] = data_dir
    facts["uid"] = (pod.get("securityContext") or {}).get("runAsUser")
    facts["gid"] = (pod.get("securityContext") or {}).get("runAsGroup")
    facts["env"] = dict(env)
    facts["config_vars"] = set(envs)

    def probe(container: dict, name: str, path: str) -> None:
        p = container.get(name)
        get = (p or {}).get("httpGet") or {}
        cports = {q.get("name"): q["containerPort"] for q in container.get("ports", [])}
        if get.get("path") != path:
            fail(f"container {container['name']}: {name} must be an httpGet on {path}")
        elif get.get("port") not in cports and get.get("port") not in cports.values():
            fail(f"container {container['name']}: {name}: port {get.get('port')} is not a "
                 "container port")
    probe(main, "readinessProbe", "/readyz")
    probe(main, "livenessProbe", "/healthz")

    grace = env.get("TRACKLINE_SHUTDOWN_GRACE_S", envs.get("TRACKLINE_SHUTDOWN_GRACE_S"))
    pre_stop = 0
    cmd = (((main.get("lifecycle") or {}).get("preStop") or {}).get("exec") or {}).get("command")
    if cmd and Path(cmd[0]).name == "sleep" and len(cmd) == 2:
        pre_stop = int(cmd[1])
    tgps = pod.get("terminationGracePeriodSeconds", 30)
    if grace is None or not str(grace).isdigit():
        fail(f"cannot tell TRACKLINE_SHUTDOWN_GRACE_S ({grace})")
    elif tgps <= pre_stop + int(grace):
        fail(f"terminationGracePeriodSeconds {tgps} must exceed preStop {pre_stop} s + "
             f"TRACKLINE_SHUTDOWN_GRACE_S {grace} s")
    else:
        note(f"shutdown: preStop {pre_stop} s + server grace {grace} s < "
             f"terminationGracePeriodSeconds {tgps} s")

    services = {o["metadata"]["name"]: o for o in only(objs, "Service")}
    service_target: dict[str, dict] = {}
    for name, svc in services.items():
        s = svc["spec"]
        picked = selected(s.get("selector"), workloads)
        if len(picked) != 1:
            fail(f"Service {name} selects {len(picked)} workloads of these files "
                 f"({', '.join(map(ident, picked)) or 'none'}); expected exactly one")
            continue
        service_target[name] = picked[0]
        for p in s.get("ports", []):
            t = p.get("targetPort", p["port"])
            if not has_port(picked[0], t):
                fail(f"Service {name}: targetPort {t} is not a container port of {ident(picked[0])}")
    trackline_services = {n for n, w in service_target.items() if w is sts}
    headless = services.get(spec.get("serviceName"))
    if not headless or headless["spec"].get("clusterIP") != "None" \
            or spec.get("serviceName") not in trackline_services:
        fail(f"StatefulSet serviceName {spec.get('serviceName')} is not a headless Service of its pods")
    if not any(services[n]["spec"].get("clusterIP") != "None" for n in trackline_services):
        fail("no regular (ClusterIP) Service for the trackline pods")

    pdbs = only(objs, "PodDisruptionBudget")
    for pdb in pdbs:
        if not selected(pdb["spec"]["selector"].get("matchLabels"), workloads):
            fail(f"PodDisruptionBudget {pdb['metadata']['name']} selects no workload")
    if not any(selected(p["spec"]["selector"].get("matchLabels"), [sts]) for p in pdbs):
        fail("no PodDisruptionBudget for the trackline pods")

    for np in only(objs, "NetworkPolicy"):
        name = np["metadata"]["name"]
        targets = selected(np["spec"]["podSelector"].get("matchLabels"), workloads)
        if not targets:
            fail(f"NetworkPolicy {name}: podSelector selects no workload of these files")
        for rule in np["spec"].get("ingress", []):
            for peer in rule.get("from", []):
                sel = (peer.get("podSelector") or {}).get("matchLabels")
                if "podSelector" in peer and "namespaceSelector" not in peer and \
                        not selected(sel, workloads):
                    fail(f"NetworkPolicy {name}: a from.podSelector ({sel}) selects no workload "
                         "of these files: nothing would be let in")
            for p in rule.get("ports", []):
                for w in targets:
                    if "port" in p and not has_port(w, p["port"]):
                        fail(f"NetworkPolicy {name}: port {p['port']} is not a container port "
                             f"of {ident(w)}")

    hosts = set()
    hash_keys: dict[str, set] = {}
    builtin = re.compile(r"^(http_|arg_|cookie_|request_uri$|uri$|remote_addr$|host$|args$)")
    for ing in only(objs, "Ingress"):
        name = ing["metadata"]["name"]
        ann = ing["metadata"].get("annotations") or {}
        key = ann.get("nginx.ingress.kubernetes.io/upstream-hash-by")
        regex = ann.get("nginx.ingress.kubernetes.io/use-regex") == "true"
        if key:
            for var in re.findall(r"\$\{?([A-Za-z0-9_]+)\}?", key):
                if builtin.match(var):
                    continue
                for rule in ing["spec"].get("rules", []):
                    for p in rule["http"]["paths"]:
                        if f"(?<{var}>" not in p["path"]:
                            fail(f"Ingress {name}: upstream-hash-by uses ${var}, which path "
                                 f"{p['path']} does not capture")
        for t in ("proxy-read-timeout", "proxy-send-timeout"):
            v = ann.get(f"nginx.ingress.kubernetes.io/{t}")
            if v is not None and not str(v).isdigit():
                fail(f"Ingress {name}: {t} must be a number of seconds, not {v!r}")
        for rule in ing["spec"].get("rules", []):
            hosts.add(rule.get("host"))
            for p in rule["http"]["paths"]:
                if re.search(r"[()\[\]?*+^$|\\]", p["path"]):
                    if p.get("pathType") != "ImplementationSpecific":
                        fail(f"Ingress {name}: regex path {p['path']} needs pathType "
                             "ImplementationSpecific")
                    if not regex:
                        fail(f"Ingress {name}: regex path {p['path']} without use-regex")
                svc = p["backend"]["service"]
                target = services.get(svc["name"])
                if not target:
                    fail(f"Ingress {name}: no Service {svc['name']}")
                    continue
                if svc["name"] not in trackline_services:
                    fail(f"Ingress {name}: Service {svc['name']} is not a Service of the trackline pods")
                port = svc["port"]
                names = {sp.get("name") for sp in target["spec"]["ports"]}
                numbers = {sp["port"] for sp in target["spec"]["ports"]}
                if port.get("name") not in names and port.get("number") not in numbers:
                    fail(f"Ingress {name}: Service {svc['name']} has no port {port}")
                hash_keys.setdefault(svc["name"], set()).add(key)
    for svc, keys in hash_keys.items():
        if len(keys) > 1:
            fail(f"Service {svc} is the backend of Ingresses with different upstream-hash-by "
                 f"({sorted(map(str, keys))}); ingress-nginx keeps one per Service")
    public = env.get("TRACKLINE_PUBLIC_URL")
    if public:
        m = re.match(r"^https?://([^/:]+)", public)
        if not m or m.group(1) not in hosts:
            fail(f"TRACKLINE_PUBLIC_URL={public} is not an Ingress host ({sorted(map(str, hosts))})")

    broker_checks(sts, main, env, from_configmap, services, service_target)
    for w in workloads:
        for c in w["spec"]["template"]["spec"].get("containers", []):
            if c["name"] == "nats":
                check_nats(w, c, configmaps)
    return facts


def broker_checks(sts: dict, main: dict, env: dict, from_configmap: set, services: dict,
                  service_target: dict) -> None:
    """replicas, TRACKLINE_CLUSTER_NODES, TRACKLINE_NODE_ID and TRACKLINE_BROKER agree."""
    name = sts["metadata"]["name"]
    replicas = sts["spec"].get("replicas", 1)
    if not isinstance(replicas, int) or replicas < 1:
        fail(f"StatefulSet replicas {replicas!r}: expected a whole number >= 1")
        return
    broker = env.get("TRACKLINE_BROKER")
    raw_nodes = env.get("TRACKLINE_CLUSTER_NODES")
    nodes = [n.strip() for n in raw_nodes.split(",")] if raw_nodes is not None else []
    pods = [f"{name}-{i}" for i in range(replicas)]

    if replicas > 1 and not broker:
        fail(f"replicas {replicas} without TRACKLINE_BROKER: that would be {replicas} separate "
             "tracklines, each blind to the others' couriers and orders; set the broker "
             "variables (docs/SCALING.md) or go back to replicas: 1")
    if broker and raw_nodes is None:
        fail("TRACKLINE_BROKER is set without TRACKLINE_CLUSTER_NODES: the server refuses to start")
    if raw_nodes is not None and not broker:
        fail("TRACKLINE_CLUSTER_NODES is set without TRACKLINE_BROKER: it would be ignored; set "
             "both or neither")
    if raw_nodes is not None:
        if len(nodes) != replicas:
            fail(f"StatefulSet replicas is {replicas} but TRACKLINE_CLUSTER_NODES names "
                 f"{len(nodes)} nodes ({raw_nodes}): change both together, after draining "
                 "(docs/SCALING.md)")
        if len(set(nodes)) != len(nodes) or "" in nodes:
            fail(f"TRACKLINE_CLUSTER_NODES={raw_nodes}: empty or repeated names")
        missing = [p for p in pods if p not in nodes]
        extra = [n for n in nodes if n and n not in pods]
        if missing:
            fail(f"TRACKLINE_CLUSTER_NODES does not list pod(s) {', '.join(missing)}: they would "
                 "refuse to start (a node's id must be in the list)")
        if extra:
            fail(f"TRACKLINE_CLUSTER_NODES lists {', '.join(extra)}, which no pod of "
                 f"StatefulSet {name} is called: the orders hashed to it would never be served")

    node_id = next((e for e in main.get("env", []) if e["name"] == "TRACKLINE_NODE_ID"), None)
    if "TRACKLINE_NODE_ID" in from_configmap:
        fail("TRACKLINE_NODE_ID is in a ConfigMap: every pod would claim the same name; set it "
             "per pod from metadata.name (statefulset.yaml)")
    if node_id is not None:
        field = (((node_id.get("valueFrom") or {}).get("fieldRef")) or {}).get("fieldPath")
        if field != "metadata.name":
            fail("TRACKLINE_NODE_ID must come from the pod's own name (valueFrom.fieldRef "
                 "metadata.name): a fixed value gives every pod the same identity")
    elif broker:
        fail("TRACKLINE_BROKER is set but the pods get no TRACKLINE_NODE_ID: the server refuses "
             "to start")

    for key in ("TRACKLINE_BROKER_TIMEOUT_MS",):
        if key in env and not (str(env[key]).isdigit() and int(env[key]) > 0):
            fail(f"{key}={env[key]!r}: expected a positive number of milliseconds")
    prefix = env.get("TRACKLINE_BROKER_PREFIX")
    if prefix is not None and (not prefix or re.search(r"[\s.*>]", prefix)):
        fail(f"TRACKLINE_BROKER_PREFIX={prefix!r}: one NATS subject token (no '.', '*', '>', spaces)")

    if not broker:
        note(f"single node: replicas {replicas}, no broker")
        return
    ns = sts["metadata"].get("namespace")
    reached = []
    for url in broker.split(","):
        m = re.match(r"^(nats|tls)://(?:[^@/]*@)?([^:/]+)(?::(\d+))?/?$", url.strip())
        if not m:
            fail(f"TRACKLINE_BROKER={broker}: {url!r} is not nats://host[:port]")
            continue
        host, port = m.group(2), int(m.group(3) or 4222)
        parts = host.split(".")
        in_cluster = len(parts) == 1 or (parts[1] == ns and (
            len(parts) == 2 or parts[2:] == ["svc"] or parts[2:] == ["svc", "cluster", "local"]))
        if not in_cluster:
            note(f"broker {host}:{port} is outside these manifests: not checked")
            continue
        svc = services.get(parts[0])
        if not svc:
            fail(f"TRACKLINE_BROKER={broker}: no Service {parts[0]} in these manifests")
            continue
        sp = next((p for p in svc["spec"].get("ports", []) if p["port"] == port), None)
        if sp is None:
            fail(f"TRACKLINE_BROKER={broker}: Service {parts[0]} has no port {port}")
            continue
        target = service_target.get(parts[0])
        if target is sts:
            fail(f"TRACKLINE_BROKER={broker}: Service {parts[0]} selects the trackline pods")
        elif target is not None:
            reached.append(f"Service {parts[0]}:{port} -> {ident(target)}")
    note(f"broker mode: {replicas} nodes ({', '.join(nodes)}), node id from the pod name, "
         f"broker {broker} ({'; '.join(reached) or 'external'})")


def check_nats(workload: dict, container: dict, configmaps: dict) -> None:
    """The NATS config file (from a ConfigMap) agrees with the container's ports and probes."""
    where = f"{ident(workload)} container {container['name']}"
    argv = (container.get("command") or []) + (container.get("args") or [])
    conf_path = next((argv[i + 1] for i, a in enumerate(argv[:-1]) if a in ("-c", "--config")),
                     None)
    if not conf_path:
        fail(f"{where}: no --config: the image's default config opens a cluster port with a "
             "well-known route password")
        return
    pod = workload["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    text = None
    for m in container.get("volumeMounts", []):
        if conf_path.startswith(m["mountPath"].rstrip("/") + "/"):
            cm_ref = (volumes.get(m["name"]) or {}).get("configMap") or {}
            cm = configmaps.get(cm_ref.get("name"))
            key = conf_path[len(m["mountPath"].rstrip("/")) + 1:]
            if not cm or key not in (cm.get("data") or {}):
                fail(f"{where}: {conf_path} is not a key of a ConfigMap in these manifests")
                return
            text = cm["data"][key]
    if text is None:
        fail(f"{where}: {conf_path} is not on a ConfigMap volume")
        return

    def setting(*names: str) -> str | None:
        for n in names:
            m = re.search(rf"^\s*{n}\s*[:=]\s*\"?([^\s\"#]+)", text, re.M)
            if m:
                return m.group(1)
        return None
    ports = container_ports(workload)
    client = int(setting("port") or 4222)
    monitor = setting("http_port", "monitor_port", "http")
    if client not in ports.values():
        fail(f"{where}: NATS listens on {client}, not a container port ({sorted(ports.values())})")
    if monitor is None or not monitor.isdigit():
        fail(f"{where}: no http_port in {conf_path}: the /healthz probes need it")
    else:
        for name in ("readinessProbe", "livenessProbe"):
            get = (container.get(name) or {}).get("httpGet") or {}
            port = ports.get(get.get("port"), get.get("port"))
            if get.get("path") != "/healthz" or port != int(monitor):
                fail(f"{where}: {name} must be GET /healthz on the monitoring port {monitor}")
    if re.search(r"^\s*(cluster|jetstream|leafnodes)\b", text, re.M):
        fail(f"{where}: {conf_path} enables cluster/jetstream/leafnodes; broker mode is tested "
             "with one plain core NATS server (see nats.yaml)")
    nats = shutil.which("nats-server")
    if not nats:
        note("nats-server not found: skipped parsing the NATS config")
        return
    with tempfile.NamedTemporaryFile("w", suffix=".conf", delete=False) as f:
        f.write(text)
    try:
        proc = subprocess.run([nats, "-c", f.name, "-t"], capture_output=True, text=True, timeout=30)
    finally:
        os.unlink(f.name)
    if proc.returncode != 0:
        fail(f"{where}: nats-server rejects {conf_path}: {(proc.stdout + proc.stderr).strip()}")
    else:
        note(f"nats-server: {conf_path} of {ident(workload)} is valid; client port {client}, "
             f"monitoring {monitor}")


def dockerfile_instructions(text: str) -> list[tuple[int, str, str]]:
    """(line, INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments out."""
    out: list[tuple[int, str, str]] = []
    buf, first = "", 0
    for no, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if buf and stripped.startswith("#"):
            continue  # a comment inside a continued instruction is not part of it
        if not buf:
            first = no
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        buf += stripped
        word, _, rest = buf.partition(" ")
        out.append((first, word.upper(), rest.strip()))
        buf = ""
    if buf:
        fail(f"Dockerfile: line {first}: instruction continued past the end of the file")
    return out


def cargo_rust_version() -> tuple[int, ...] | None:
    m = re.search(r'^rust-version\s*=\s*"([0-9.]+)"', (ROOT / "Cargo.toml").read_text(), re.M)
    return tuple(int(x) for x in m.group(1).split(".")) if m else None


def check_dockerfile(facts: dict) -> None:
    """The image against the pod and the server, and a hadolint-style lint of its own.

    hadolint is neither a Debian nor a PyPI package that runs offline, so the rules that matter
    here are checked by hand: pinned base images, apt-get hygiene, exec-form ENTRYPOINT, a
    numeric non-root USER, no ADD of local files, absolute WORKDIR.
    """
    text = DOCKERFILE.read_text()
    ins = dockerfile_instructions(text)
    args: dict[str, str] = {}
    stages: list[dict] = []  # {"name", "base", "ins": [(line, word, rest)]}
    for line, word, rest in ins:
        if word == "ARG" and not stages:
            name, _, default = rest.partition("=")
            args[name.strip()] = default.strip()
            continue
        if word == "FROM":
            m = re.match(r"(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?$", rest, re.I)
            if not m:
                fail(f"Dockerfile: line {line}: FROM {rest} does not parse")
                continue
            base = re.sub(r"\$\{(\w+)\}|\$(\w+)",
                          lambda v: args.get(v.group(1) or v.group(2), ""), m.group(1))
            stages.append({"name": m.group(2), "base": base, "ins": []})
            _, tag = split_image(base)
            if not tag or tag == ":latest":
                fail(f"Dockerfile: line {line}: base image {base} is not pinned to a tag")
            continue
        if not stages:
            fail(f"Dockerfile: line {line}: {word} before the first FROM")
            continue
        stages[-1]["ins"].append((line, word, rest))
        if word == "ADD" and not re.search(r"https?://|\.tar", rest):
            fail(f"Dockerfile: line {line}: ADD of local files; use COPY")
        if word == "WORKDIR" and not rest.startswith("/"):
            fail(f"Dockerfile: line {line}: WORKDIR {rest} is not absolute")
        if word == "RUN":
            if re.search(r"\bsudo\b", rest):
                fail(f"Dockerfile: line {line}: sudo in RUN (the build runs as root)")
            if "apt-get install" in rest:
                if "apt-get update" not in rest:
                    fail(f"Dockerfile: line {line}: apt-get install without apt-get update in "
                         "the same RUN (a cached, stale package list)")
                if "--no-install-recommends" not in rest:
                    fail(f"Dockerfile: line {line}: apt-get install without "
                         "--no-install-recommends")
                if not re.search(r"-y\b|--yes\b|--assume-yes\b", rest):
                    fail(f"Dockerfile: line {line}: apt-get install without -y")
                if "rm -rf /var/lib/apt/lists" not in rest:
                    fail(f"Dockerfile: line {line}: apt-get install without removing "
                         "/var/lib/apt/lists in the same RUN")
    if len(stages) < 2:
        fail(f"Dockerfile: {len(stages)} stage(s); expected a builder and a runtime")
        return
    runtime = stages[-1]
    final = {w: r for _, w, r in runtime["ins"]}  # the last of each instruction wins

    # The builder: the stage the runtime copies the binaries from.
    copies = [r for _, w, r in runtime["ins"] if w == "COPY" and r.startswith("--from=")]
    sources = {re.match(r"--from=(\S+)", r).group(1) for r in copies}
    builders = [s for s in stages[:-1] if s["name"] in sources]
    if len(builders) != 1:
        fail(f"Dockerfile: the runtime copies from {sorted(sources)}; expected one build stage")
        return
    build = builders[0]
    if not build["base"].startswith("rust:"):
        fail(f"Dockerfile: the build stage is {build['base']}, not a rust image")
    else:
        m = re.match(r"rust:(\d+)\.(\d+)", build["base"])
        floor = cargo_rust_version()
        if not m:
            fail(f"Dockerfile: {build['base']} does not name a Rust version")
        elif floor and (int(m.group(1)), int(m.group(2))) < floor[:2]:
            fail(f"Dockerfile: {build['base']} is older than Cargo.toml's rust-version "
                 f"{'.'.join(map(str, floor))}")
    runs = [(line, r) for line, w, r in build["ins"] if w == "RUN"]
    cargo = [(line, r) for line, r in runs if "cargo build" in r]
    make = [line for line, r in runs if re.search(r"apt-get install[^&;|]*\bmake\b", r)]
    if not make:
        fail("Dockerfile: the build stage does not install make (jemalloc's build runs it)")
    if len(cargo) != 1:
        fail(f"Dockerfile: {len(cargo)} cargo build steps in the build stage; expected one")
    else:
        line, r = cargo[0]
        if make and make[0] > line:
            fail("Dockerfile: make is installed after cargo build")
        for flag in ("--release", "--locked", "--bin trackline", "--bin trackctl"):
            if not re.search(re.escape(flag) + r"(\s|$)", r):
                fail(f"Dockerfile: line {line}: cargo build without {flag}")
    copied = " ".join(copies)
    for binary in ("trackline", "trackctl"):
        if not re.search(rf"/{binary}\b", copied):
            fail(f"Dockerfile: the runtime does not copy {binary} from the build stage")

    # The runtime against the pod (k8s/statefulset.yaml) and the server's flags (config.rs).
    m = re.fullmatch(r"(\d+)(?::(\d+))?", final.get("USER", ""))
    if not m:
        fail(f"Dockerfile: USER {final.get('USER')!r} is not numeric (runAsNonRoot needs a uid)")
    else:
        if int(m.group(1)) == 0:
            fail("Dockerfile: USER is root")
        if int(m.group(1)) != facts.get("uid"):
            fail(f"Dockerfile: USER {m.group(1)} is not the pod's runAsUser {facts.get('uid')}")
        if m.group(2) and facts.get("gid") is not None and int(m.group(2)) != facts["gid"]:
            fail(f"Dockerfile: group {m.group(2)} is not the pod's runAsGroup {facts['gid']}")
    image_env: dict[str, str] = {}
    for _, w, r in runtime["ins"]:
        if w == "ENV":
            for k, v in re.findall(r'(\w+)=("[^"]*"|\S+)', r):
                image_env[k] = v.strip('"')
    pod_env = facts.get("env") or {}
    for k, v in image_env.items():
        if k.startswith("TRACKLINE_") and k not in facts.get("config_vars", set()):
            fail(f"Dockerfile: ENV {k} is not a variable of {CONFIG_RS.name}")
        if k in pod_env and pod_env[k] != v:
            fail(f"Dockerfile: ENV {k}={v}, the pod sets {pod_env[k]}")
    listen = image_env.get("TRACKLINE_LISTEN", "")
    if listen.rpartition(":")[2] != str(facts.get("listen_port")):
        fail(f"Dockerfile: TRACKLINE_LISTEN={listen} is not on the pod's port "
             f"{facts.get('listen_port')}")
    if image_env.get("TRACKLINE_DATA_DIR") != facts.get("data_dir"):
        fail(f"Dockerfile: TRACKLINE_DATA_DIR={image_env.get('TRACKLINE_DATA_DIR')} is not the "
             f"pod's data dir {facts.get('data_dir')}")
    exposed = final.get("EXPOSE", "").split()
    if exposed != [str(facts.get("listen_port"))]:
        fail(f"Dockerfile: EXPOSE {' '.join(exposed)} is not the pod's port "
             f"{facts.get('listen_port')}")
    m = re.match(r'\["?([^"\]]+)', final.get("VOLUME", ""))
    if not m or m.group(1) != facts.get("data_dir"):
        fail(f"Dockerfile: VOLUME {m and m.group(1)} is not the data dir {facts.get('data_dir')}")
    # The data dir must be the image user's, or the server cannot write it without fsGroup.
    owned = [r for _, w, r in runtime["ins"] if w == "RUN"
             and re.search(rf"install -d\b[^&;]*-o {facts.get('uid')}\b[^&;]*"
                           rf"{re.escape(str(facts.get('data_dir')))}", r)]
    if not owned:
        fail(f"Dockerfile: the runtime does not create {facts.get('data_dir')} owned by uid "
             f"{facts.get('uid')}")
    try:
        entry = json.loads(final.get("ENTRYPOINT", ""))
    except json.JSONDecodeError:
        entry = None
    if not isinstance(entry, list) or not entry or not str(entry[0]).endswith("/trackline"):
        fail(f"Dockerfile: ENTRYPOINT {final.get('ENTRYPOINT')} is not the trackline binary in "
             "exec form (the server must be PID 1 to get SIGTERM)")
    else:
        # Flags given here would override the pod's environment; each must be a server flag.
        for flag in (a for a in entry[1:] + json.loads(final.get("CMD", "[]")) if a.startswith("--")):
            var = "TRACKLINE_" + flag[2:].split("=")[0].replace("-", "_").upper()
            if var not in facts.get("config_vars", set()):
                fail(f"Dockerfile: {flag} is not a flag of the server")
            elif var in pod_env:
                fail(f"Dockerfile: {flag} on the command line would override the pod's {var}")
    for shell in ("/bin/sh", "/bin/bash"):
        # The init containers run these in the server's image.
        if not runtime["base"].startswith("debian:"):
            fail(f"Dockerfile: runtime {runtime['base']} may lack {shell}, which the init "
                 "containers run")
            break
    note(f"Dockerfile: {len(stages)} stages ({build['base']} -> {runtime['base']}), make, "
         f"trackline + trackctl --release --locked, USER {final.get('USER')}, port "
         f"{' '.join(exposed)}, {len(image_env)} ENV in step with the pod")


COMPOSE = ROOT / "docker-compose.yml"
COMPOSE_SCHEMA = "compose/config/compose_spec.json"


def compose_schema() -> dict | None:
    """The Compose specification's schema, out of the docker-compose wheel validate.sh fetched."""
    import zipfile
    where = Path(os.environ.get("TRACKLINE_COMPOSE_WHEELS", HERE / ".venv" / "compose-spec"))
    wheels = sorted(where.glob("docker_compose-*.whl"))
    if not wheels:
        fail(f"no docker-compose wheel in {where} (run through validate.sh, which downloads it)")
        return None
    with zipfile.ZipFile(wheels[-1]) as z:
        return json.loads(z.read(COMPOSE_SCHEMA))


def check_compose(facts: dict) -> None:
    """docker-compose.yml: the Compose schema, and the broker-mode rules of the StatefulSet."""
    import jsonschema
    try:
        doc = yaml.safe_load(COMPOSE.read_text())  # anchors and << merges resolved here
    except yaml.YAMLError as e:
        fail(f"{COMPOSE.name}: not YAML: {e}")
        return
    schema = compose_schema()
    if schema is not None:
        validator = jsonschema.Draft201909Validator(schema)
        for e in sorted(validator.iter_errors(doc), key=lambda e: list(e.path)):
            path = ".".join(str(p) for p in e.path) or "(top)"
            fail(f"{COMPOSE.name}: {path}: {e.message}")
    services = doc.get("services") or {}
    nodes = {name: s for name, s in services.items()
             if (s.get("build") or {}).get("dockerfile") == "k8s/Dockerfile"}
    if len(nodes) != 3:
        fail(f"{COMPOSE.name}: {len(nodes)} services built from k8s/Dockerfile; expected three")
    envs = facts.get("config_vars", set())
    brokers, lists, secrets, host_ports, volumes_used = set(), set(), set(), [], []
    for name, s in nodes.items():
        env = s.get("environment") or {}
        if isinstance(env, list):
            env = dict(e.split("=", 1) for e in env)
        for k in env:
            if k.startswith("TRACKLINE_") and k not in envs:
                fail(f"{COMPOSE.name}: {name}: {k} is not a variable of {CONFIG_RS.name}")
        if env.get("TRACKLINE_NODE_ID") != name:
            fail(f"{COMPOSE.name}: {name}: TRACKLINE_NODE_ID is {env.get('TRACKLINE_NODE_ID')}, "
                 "not the service's name")
        brokers.add(env.get("TRACKLINE_BROKER"))
        lists.add(env.get("TRACKLINE_CLUSTER_NODES"))
        secrets.add(env.get("TRACKLINE_SECRET"))
        if str(s.get("user")) != f"{facts.get('uid')}:{facts.get('gid')}":
            fail(f"{COMPOSE.name}: {name}: user {s.get('user')} is not the image's "
                 f"{facts.get('uid')}:{facts.get('gid')}")
        data = [v for v in s.get("volumes") or []
                if isinstance(v, str) and v.split(":")[1:2] == [facts.get("data_dir")]]
        if len(data) != 1:
            fail(f"{COMPOSE.name}: {name}: no volume at {facts.get('data_dir')}")
        else:
            volumes_used.append(data[0].split(":")[0])
        for p in s.get("ports") or []:
            parts = str(p).split(":")
            if parts[-1] != str(facts.get("listen_port")):
                fail(f"{COMPOSE.name}: {name}: port {p} does not reach the server's "
                     f"{facts.get('listen_port')}")
            host_ports.append(parts[-2] if len(parts) > 1 else None)
    if len(brokers) != 1 or None in brokers:
        fail(f"{COMPOSE.name}: the nodes disagree on TRACKLINE_BROKER: {brokers}")
    else:
        m = re.match(r"nats://([^:/,]+):(\d+)$", next(iter(brokers)))
        if not m or m.group(1) not in services:
            fail(f"{COMPOSE.name}: TRACKLINE_BROKER {brokers} does not name a service here")
        else:
            deps = {n for n, s in nodes.items() if m.group(1) in (s.get("depends_on") or {})}
            if deps != set(nodes):
                fail(f"{COMPOSE.name}: {sorted(set(nodes) - deps)} do not wait for the broker")
    if len(lists) != 1 or set((next(iter(lists)) or "").split(",")) != set(nodes):
        fail(f"{COMPOSE.name}: TRACKLINE_CLUSTER_NODES {lists} is not the node services "
             f"{sorted(nodes)}")
    if len(secrets) != 1 or not str(next(iter(secrets))).startswith("${"):
        fail(f"{COMPOSE.name}: the nodes need one shared TRACKLINE_SECRET from the environment")
    if len(set(volumes_used)) != len(volumes_used):
        fail(f"{COMPOSE.name}: nodes share a data volume: {volumes_used}")
    if set(volumes_used) - set(doc.get("volumes") or {}):
        fail(f"{COMPOSE.name}: volumes {sorted(set(volumes_used) - set(doc.get('volumes') or {}))}"
             " are not declared")
    if len(set(host_ports)) != len(host_ports):
        fail(f"{COMPOSE.name}: nodes share a host port: {host_ports}")
    docker = shutil.which("docker")
    checked = "the Compose schema" if schema is not None else "no schema"
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        proc = subprocess.run([docker, "compose", "-f", str(COMPOSE), "config", "--quiet"],
                              capture_output=True, text=True,
                              env={**os.environ, "TRACKLINE_SECRET": "x" * 32})
        if proc.returncode != 0:
            fail(f"docker compose config: {proc.stderr.strip()}")
        checked += " and `docker compose config`"
    note(f"{COMPOSE.name}: {len(nodes)} nodes ({', '.join(sorted(nodes))}) + broker, own volumes, "
         f"checked against {checked}")


def check_dashboard(rendered: list[dict]) -> None:
    try:
        dash = json.loads(DASHBOARD.read_text())
    except json.JSONDecodeError as e:
        fail(f"{DASHBOARD.name}: not JSON: {e}")
        return
    emitted = server_metrics()
    used: set[str] = set()
    exprs: list[str] = []
    ids = []
    panels = [p for p in dash.get("panels", []) if p.get("type") != "row"]
    if not panels:
        fail(f"{DASHBOARD.name}: no panels")
    for p in dash.get("panels", []):
        ids.append(p.get("id"))
        if not {"x", "y", "w", "h"} <= set(p.get("gridPos") or {}):
            fail(f"{DASHBOARD.name}: panel {p.get('title')!r} without a full gridPos")
        if p.get("type") == "row":
            continue
        if (p.get("datasource") or {}).get("uid") != "${datasource}":
            fail(f"{DASHBOARD.name}: panel {p.get('title')!r} is not on the $datasource variable")
        if not p.get("targets"):
            fail(f"{DASHBOARD.name}: panel {p.get('title')!r} has no query")
        for t in p.get("targets", []):
            expr = t.get("expr", "")
            exprs.append(expr)
            in_expr: set[str] = set()
            for name, sel in re.findall(r"\b(trackline_[a-z0-9_]+)(\{[^}]*\})?", expr):
                base = re.sub(r"_(sum|count|bucket)$", "", name)
                if base not in emitted:
                    fail(f"{DASHBOARD.name}: panel {p.get('title')!r} queries {name}, which the "
                         "server does not emit")
                    continue
                used.add(base)
                in_expr |= emitted[base]
                for label in re.findall(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)", sel):
                    if label not in emitted[base] | TARGET_LABELS:
                        fail(f"{DASHBOARD.name}: panel {p.get('title')!r} selects {name} on "
                             f"label {label}, which the server does not give it")
            # Grouping labels must exist on some series of the expression.
            for group in re.findall(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)", expr):
                for label in filter(None, (x.strip() for x in group.split(","))):
                    if label not in in_expr | TARGET_LABELS:
                        fail(f"{DASHBOARD.name}: panel {p.get('title')!r} groups by {label}, "
                             "a label none of its metrics has")
    if len(ids) != len(set(ids)):
        fail(f"{DASHBOARD.name}: panel ids are not unique")
    missing = set(emitted) - used
    if missing:
        fail(f"{DASHBOARD.name}: no panel for {sorted(missing)}")
    cms = [d for d in rendered if d.get("kind") == "ConfigMap"
           and DASHBOARD.name in (d.get("data") or {})]
    if not cms:
        fail(f"kustomization.yaml does not ship {DASHBOARD.name} as a ConfigMap")
    note(f"{DASHBOARD.name}: {len(panels)} panels, {len(exprs)} queries over all "
         f"{len(emitted)} metrics the server emits")
    promtool = shutil.which("promtool")
    if not promtool:
        note("promtool not found: skipped parsing the queries as PromQL")
        return
    subst = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h",
             "$namespace": ".*", "$pod": ".*"}
    rules = []
    for i, expr in enumerate(exprs):
        for k, v in subst.items():
            expr = expr.replace(k, v)
        rules.append({"record": f"trackline:dashboard_query_{i}", "expr": expr})
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, f)
    try:
        proc = subprocess.run([promtool, "check", "rules", f.name], capture_output=True, text=True)
    finally:
        os.unlink(f.name)
    if proc.returncode != 0:
        fail(f"promtool: dashboard queries do not parse: {proc.stdout}{proc.stderr}")
    else:
        note(f"promtool: all {len(exprs)} queries parse as PromQL")


def main() -> int:
    started = time.monotonic()
    vers = versions()
    files = sorted(p for p in HERE.iterdir()
                   if p.suffix in (".yaml", ".yml") and p.name != "kustomization.yaml")
    print(f"[1/5] manifests against the Kubernetes {', '.join(vers)} schemas "
          f"(kubernetes-validate {kv.__version__}, strict)")
    by_file = {p.name: load_docs(p) for p in files}
    total = 0
    for name, docs in by_file.items():
        n = schema_check(name, docs, vers)
        total += n
        note(f"{name}: {', '.join(ident(d) for d in docs) or 'empty'}")

    print("[2/5] kustomization.yaml")
    kz_docs = load_docs(HERE / "kustomization.yaml")
    rendered: list[dict] = []
    if len(kz_docs) != 1 or kz_docs[0].get("kind") != "Kustomization":
        fail("kustomization.yaml: expected one Kustomization")
    else:
        kz = kz_docs[0]
        listed = {Path(r).name for r in kz.get("resources") or []}
        for name in by_file:
            if name in NOT_IN_KUSTOMIZATION:
                if name in listed:
                    fail(f"kustomization.yaml lists {name}; apply it by hand (see the file)")
            elif name not in listed:
                fail(f"kustomization.yaml does not list {name}")
        rendered = render(kz)
        schema_check("kustomize output", rendered, vers)
        note(f"rendered {len(rendered)} objects: {', '.join(ident(d) for d in rendered)}")
        compare_with_kubectl(rendered)

    print("[3/5] the pieces agree (config.rs, ports, volume, probes, shutdown, routing, broker mode, Dockerfile)")
    facts = cross_checks(rendered, by_file.get("secret.yaml", []))
    check_dockerfile(facts)

    print("[4/5] Grafana dashboard")
    check_dashboard(rendered)

    print("[5/5] docker-compose.yml (the local three-node cluster)")
    check_compose(facts)

    took = time.monotonic() - started
    if errors:
        print(f"k8s/validate: {len(errors)} problem(s) in {took:.1f} s")
        return 1
    print(f"k8s/validate: OK, {total} objects in {len(files)} files, {len(rendered)} rendered by "
          f"kustomize, Kubernetes {', '.join(vers)}, in {took:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
