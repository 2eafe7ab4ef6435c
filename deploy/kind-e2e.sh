#!/usr/bin/env bash
# End-to-end migration on a real cluster, for machines that have docker + kind + kubectl
# (not the project's CI machines: no API server can run there). Creates a kind cluster
# with two workers on containerd >= 2.1 with checkpoint/restore enabled and a local
# registry, installs ms2m from deploy/overlays/kind, runs RabbitMQ, the sample producer and consumer,
# migrates the consumer to the other worker and checks that no message was lost.
#
#   deploy/kind-e2e.sh            # create, test, keep the cluster
#   MS2M_KIND_KEEP=0 deploy/kind-e2e.sh   # delete the cluster afterwards
#
# Needs: docker, kind >= 0.27 (node image with containerd >= 2.1), kubectl.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CLUSTER=${MS2M_KIND_CLUSTER:-ms2m-e2e}
NODE_IMAGE=${MS2M_KIND_NODE_IMAGE:-kindest/node:v1.33.1}
REG_NAME=ms2m-registry
REG_PORT=${MS2M_KIND_REGISTRY_PORT:-5001}
NS=ms2m-e2e

log() { printf '[kind-e2e] %s\n' "$*" >&2; }
die() { printf '[kind-e2e] ERROR: %s\n' "$*" >&2; exit 1; }
for t in docker kind kubectl; do command -v "$t" >/dev/null || die "$t not found"; done

# Local registry reachable from the nodes as ms2m-registry:5000.
if ! docker inspect "$REG_NAME" >/dev/null 2>&1; then
  docker run -d --restart=always -p "127.0.0.1:$REG_PORT:5000" --name "$REG_NAME" registry:2 >/dev/null
fi

if ! kind get clusters | grep -qx "$CLUSTER"; then
  log "creating cluster $CLUSTER"
  kind create cluster --name "$CLUSTER" --image "$NODE_IMAGE" --config - <<KIND
kind: Cluster
apiVersion: kind.x-k8s.io/v1alpha4
featureGates:
  ContainerCheckpoint: true
containerdConfigPatches:
  - |-
    [plugins."io.containerd.cri.v1.runtime"]
      enable_experimental_restore_via_create = true
    [plugins."io.containerd.cri.v1.images".registry]
      config_path = "/etc/containerd/certs.d"
nodes:
  - role: control-plane
  - role: worker
  - role: worker
KIND
  docker network connect kind "$REG_NAME" 2>/dev/null || true
  for n in $(kind get nodes --name "$CLUSTER"); do
    docker exec "$n" mkdir -p "/etc/containerd/certs.d/$REG_NAME:5000"
    printf '[host."http://%s:5000"]\n' "$REG_NAME" | docker exec -i "$n" tee "/etc/containerd/certs.d/$REG_NAME:5000/hosts.toml" >/dev/null
  done
fi

log "building images"
docker build -q -f "$ROOT/deploy/Dockerfile.shim" -t ms2m-shim:latest "$ROOT" >/dev/null
docker build -q -f "$ROOT/deploy/Dockerfile.agent" -t ms2m-agent:latest "$ROOT" >/dev/null
docker build -q -t ms2m-sample:latest -f - "$ROOT" >/dev/null <<'DOCKER'
FROM rust:1.89-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p ms2m-sample-service && mkdir /out \
 && cp target/release/ms2m-sample-consumer target/release/ms2m-sample-producer /out/
FROM gcr.io/distroless/cc-debian12
COPY --from=build /out/ /usr/local/bin/
DOCKER
kind load docker-image --name "$CLUSTER" ms2m-shim:latest ms2m-agent:latest ms2m-sample:latest

log "installing ms2m"
kubectl apply -f "$ROOT/deploy/base/namespace.yaml"
kubectl -n ms2m-system get secret ms2m-agent-token >/dev/null 2>&1 \
  || kubectl -n ms2m-system create secret generic ms2m-agent-token \
       --from-literal=token="$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"
# Mutual TLS (docs/deploy.md, "TLS and identities"): a cluster CA, the shim's Secret,
# and each node's certificate in its /etc/ms2m/tls.
PKI="$(mktemp -d)"
certs() { docker run --rm -v "$PKI:/pki" ms2m-agent:latest certs "$@" >/dev/null; }
certs init --dir /pki/ca
certs issue --ca-dir /pki/ca --out-dir /pki/shim --shim
kubectl -n ms2m-system create secret generic ms2m-shim-tls --dry-run=client -o yaml \
  --from-file="$PKI/shim/tls.crt" --from-file="$PKI/shim/tls.key" --from-file="$PKI/shim/ca.crt" \
  | kubectl apply -f -
for n in $(kind get nodes --name "$CLUSTER"); do
  certs issue --ca-dir /pki/ca --out-dir "/pki/$n" --agent "$n"
  docker exec "$n" mkdir -p -m 0700 /etc/ms2m/tls
  for f in tls.crt tls.key ca.crt; do
    docker exec -i "$n" sh -c "umask 077; cat > /etc/ms2m/tls/$f" < "$PKI/$n/$f"
  done
done
rm -rf "$PKI"
# kind nodes: containerd, and kubeadm's self-signed kubelet certificates.
kubectl apply -k "$ROOT/deploy/overlays/kind"
kubectl -n ms2m-system rollout status ds/ms2m-agent --timeout=180s
kubectl -n ms2m-system rollout status deploy/ms2m-shim --timeout=180s

mapfile -t WORKERS < <(kubectl get nodes -l '!node-role.kubernetes.io/control-plane' -o name | sed 's|node/||')
[ "${#WORKERS[@]}" -ge 2 ] || die "need two worker nodes"

log "deploying RabbitMQ and the sample service on ${WORKERS[0]}"
kubectl create namespace "$NS" --dry-run=client -o yaml | kubectl apply -f -
kubectl -n "$NS" apply -f - <<YAML
apiVersion: v1
kind: Pod
metadata: {name: rabbitmq, labels: {app: rabbitmq}}
spec:
  containers: [{name: rabbitmq, image: rabbitmq:3.13, ports: [{containerPort: 5672}]}]
---
apiVersion: v1
kind: Service
metadata: {name: rabbitmq}
spec: {selector: {app: rabbitmq}, ports: [{port: 5672}]}
---
apiVersion: v1
kind: Pod
metadata: {name: consumer, labels: {app: consumer}}
spec:
  nodeName: ${WORKERS[0]}
  containers:
    - name: consumer
      image: ms2m-sample:latest
      command: [ms2m-sample-consumer]
      env:
        # No MS2M_POD_NAME: the environment is frozen in the checkpoint, so the restored
        # consumer would keep the source's control queue. It reads its name from
        # /etc/hostname, which the runtime bind-mounts from the *target* pod.
        - {name: MS2M_AMQP_URL, value: "amqp://guest:guest@rabbitmq:5672/%2f"}
YAML
kubectl -n "$NS" wait --for=condition=Ready pod/rabbitmq pod/consumer --timeout=180s
kubectl -n "$NS" run producer --image=ms2m-sample:latest --restart=Never --command -- \
  ms2m-sample-producer --amqp-url "amqp://guest:guest@rabbitmq:5672/%2f" --rate 10 --count 600

log "migrating the consumer to ${WORKERS[1]}"
kubectl -n "$NS" apply -f - <<YAML
apiVersion: migration.ms2m.io/v1alpha1
kind: StatefulMigration
metadata: {name: consumer-move}
spec:
  sourcePod: consumer
  targetNode: ${WORKERS[1]}
  checkpointImageRepository: $REG_NAME:5000/ms2m/checkpoints
  replayCutoffSeconds: 30
  messageQueueConfig:
    brokerUrl: amqp://guest:guest@rabbitmq.$NS.svc:5672/%2f
    queueName: ms2m-sample
    exchangeName: ms2m-sample
YAML
kubectl -n "$NS" wait --for=jsonpath='{.status.phase}'=Completed statefulmigration/consumer-move --timeout=600s \
  || { kubectl -n "$NS" describe statefulmigration/consumer-move; die "migration did not complete"; }
kubectl -n "$NS" get statefulmigration/consumer-move -o jsonpath='{.status.phaseTimings}'; echo

log "waiting for the producer to finish, then checking the target's state"
kubectl -n "$NS" wait --for=jsonpath='{.status.phase}'=Succeeded pod/producer --timeout=600s
target=$(kubectl -n "$NS" get statefulmigration/consumer-move -o jsonpath='{.status.targetPodName}')
kubectl -n "$NS" exec "$target" -- true 2>/dev/null || true
kubectl -n "$NS" port-forward "pod/$target" 18080:8080 >/dev/null 2>&1 &
pf=$!
sleep 2
state=$(curl -fsS http://127.0.0.1:18080/state || true)
kill "$pf" 2>/dev/null || true
log "target state: $state"
echo "$state" | grep -q '"count":600' || die "the target did not apply all 600 messages"
echo "$state" | grep -q '"missing":0' || die "the target reports missing messages"
log "OK: migrated with every message applied once"

if [ "${MS2M_KIND_KEEP:-1}" = 0 ]; then kind delete cluster --name "$CLUSTER"; fi
