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
   /readyz and /healthz, Services and the PDB select the pod, Ingress backends exist, each
   upstream-hash-by key has its own Service and its path captures, the Dockerfile's user, port and
   volume match the pod;
4. grafana-dashboard.json parses, uses only metrics the server emits, and covers all of them;
   with promtool on PATH, every query also parses as PromQL.

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


def server_metrics() -> set[str]:
    names = set()
    for path in METRIC_SOURCES.rglob("*.rs"):
        names.update(re.findall(r'(?:counter|gauge|histogram)!\(\s*"(trackline_[a-z0-9_]+)"',
                                path.read_text()))
    if not names:
        fail(f"no metrics found under {METRIC_SOURCES}")
    return names


def subset(small: dict, big: dict) -> bool:
    return all(big.get(k) == v for k, v in (small or {}).items())


def only(objs: list[dict], kind: str) -> list[dict]:
    return [o for o in objs if o.get("kind") == kind]


def cross_checks(objs: list[dict], secret_docs: list[dict]) -> dict:
    facts: dict = {}
    envs = server_env()
    stss = only(objs, "StatefulSet")
    if len(stss) != 1:
        fail(f"expected one StatefulSet, found {len(stss)}")
        return facts
    sts = stss[0]
    spec = sts["spec"]
    if spec.get("replicas", 1) != 1:
        fail("StatefulSet replicas must stay 1: scaling out needs broker mode, which the server "
             "does not have yet (k8s/README.md)")
    tpl = spec["template"]
    pod_labels = tpl["metadata"].get("labels") or {}
    pod = tpl["spec"]
    if not subset(spec["selector"].get("matchLabels"), pod_labels):
        fail("StatefulSet selector does not match its pod labels")
    containers = {c["name"]: c for c in pod.get("containers", [])}
    main = containers.get("trackline")
    if not main:
        fail("no container named trackline")
        return facts
    ports = {p.get("name"): p["containerPort"] for p in main.get("ports", [])}
    facts["ports"] = ports

    configmaps = {o["metadata"]["name"]: o for o in only(objs, "ConfigMap")}
    env: dict[str, str] = {}
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
    secrets = {d["metadata"]["name"]: d for d in secret_docs if d.get("kind") == "Secret"}
    for c in pod.get("containers", []) + pod.get("initContainers", []):
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

    psc = pod.get("securityContext") or {}
    facts["uid"] = psc.get("runAsUser")
    for c in pod.get("containers", []) + pod.get("initContainers", []):
        sc = c.get("securityContext") or {}
        if not (sc.get("runAsNonRoot") or psc.get("runAsNonRoot")):
            fail(f"container {c['name']}: runAsNonRoot is not set")
        if sc.get("readOnlyRootFilesystem") is not True:
            fail(f"container {c['name']}: readOnlyRootFilesystem is not true")
        if sc.get("allowPrivilegeEscalation") is not False:
            fail(f"container {c['name']}: allowPrivilegeEscalation is not false")
        res = c.get("resources") or {}
        for part in ("requests", "limits"):
            for what in ("cpu", "memory"):
                if what not in (res.get(part) or {}):
                    fail(f"container {c['name']}: no resources.{part}.{what}")

    def probe(name: str, path: str) -> None:
        p = main.get(name)
        get = (p or {}).get("httpGet") or {}
        if get.get("path") != path:
            fail(f"{name} must be an httpGet on {path}")
        elif get.get("port") not in ports and get.get("port") not in ports.values():
            fail(f"{name}: port {get.get('port')} is not a container port")
    probe("readinessProbe", "/readyz")
    probe("livenessProbe", "/healthz")

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
    for name, svc in services.items():
        s = svc["spec"]
        if not subset(s.get("selector"), pod_labels) or not s.get("selector"):
            fail(f"Service {name} does not select the trackline pod")
        for p in s.get("ports", []):
            t = p.get("targetPort", p["port"])
            if t not in ports and t not in ports.values():
                fail(f"Service {name}: targetPort {t} is not a container port")
    headless = services.get(spec.get("serviceName"))
    if not headless or headless["spec"].get("clusterIP") != "None":
        fail(f"StatefulSet serviceName {spec.get('serviceName')} is not a headless Service")
    if not any(s["spec"].get("clusterIP") != "None" for s in services.values()):
        fail("no regular (ClusterIP) Service")

    for pdb in only(objs, "PodDisruptionBudget"):
        if not subset(pdb["spec"]["selector"].get("matchLabels"), pod_labels):
            fail(f"PodDisruptionBudget {pdb['metadata']['name']} does not select the pod")
    if not only(objs, "PodDisruptionBudget"):
        fail("no PodDisruptionBudget")

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
    return facts


def check_dockerfile(facts: dict) -> None:
    text = DOCKERFILE.read_text()
    if "--locked" not in text or "--bin trackline" not in text:
        fail("Dockerfile: expected `cargo build --release --locked --bin trackline`")
    m = re.search(r"^EXPOSE\s+(\d+)", text, re.M)
    if not m or int(m.group(1)) != facts.get("listen_port"):
        fail(f"Dockerfile: EXPOSE {m and m.group(1)} is not the pod's port {facts.get('listen_port')}")
    m = re.search(r"^USER\s+(\d+)", text, re.M)
    if not m or int(m.group(1)) != facts.get("uid"):
        fail(f"Dockerfile: USER {m and m.group(1)} is not the pod's runAsUser {facts.get('uid')}")
    m = re.search(r'^VOLUME\s+\["?([^"\]]+)', text, re.M)
    if not m or m.group(1) != facts.get("data_dir"):
        fail(f"Dockerfile: VOLUME {m and m.group(1)} is not the data dir {facts.get('data_dir')}")
    if not re.search(r'^ENTRYPOINT\s+\[".*trackline"\]', text, re.M):
        fail("Dockerfile: ENTRYPOINT is not the trackline binary")


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
            for name in re.findall(r"\btrackline_[a-z0-9_]+", expr):
                base = re.sub(r"_(sum|count|bucket)$", "", name)
                if base not in emitted:
                    fail(f"{DASHBOARD.name}: panel {p.get('title')!r} queries {name}, which the "
                         "server does not emit")
                used.add(base)
    if len(ids) != len(set(ids)):
        fail(f"{DASHBOARD.name}: panel ids are not unique")
    missing = emitted - used
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
    print(f"[1/4] manifests against the Kubernetes {', '.join(vers)} schemas "
          f"(kubernetes-validate {kv.__version__}, strict)")
    by_file = {p.name: load_docs(p) for p in files}
    total = 0
    for name, docs in by_file.items():
        n = schema_check(name, docs, vers)
        total += n
        note(f"{name}: {', '.join(ident(d) for d in docs) or 'empty'}")

    print("[2/4] kustomization.yaml")
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

    print("[3/4] the pieces agree (config.rs, ports, volume, probes, shutdown, routing, Dockerfile)")
    facts = cross_checks(rendered, by_file.get("secret.yaml", []))
    check_dockerfile(facts)

    print("[4/4] Grafana dashboard")
    check_dashboard(rendered)

    took = time.monotonic() - started
    if errors:
        print(f"k8s/validate: {len(errors)} problem(s) in {took:.1f} s")
        return 1
    print(f"k8s/validate: OK, {total} objects in {len(files)} files, {len(rendered)} rendered by "
          f"kustomize, Kubernetes {', '.join(vers)}, in {took:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
