#!/usr/bin/env bash
# Make the startup kits and each site's MLflow secrets once (runs in the FLARE image as the
# `provision` service, as root, with no network). Output, git-ignored:
#   /provision/workspace/<project name>/prod_00/<participant>/   kits; private keys 0600, owned by the containers' user
#   /provision/workspace/secrets/<site>/mlflow/             admin_password, flask_secret, forwarder_password
#                                                           (0600, owned by the MLflow image's user)
#   /provision/workspace/secrets/<site>/client/             forwarder_password (0600, the FLARE image's user)
#   /provision/ca/cert.json                                 the root CA's certificate and private key: never
#                                                           beside the kits; reused to sign kits made again
#   /provision/workspace/.provisioned-kits, /provision/ca/.provisioned-ca
#                                                           what it made in each folder, listed before it makes
#                                                           it: `make clean` removes those names, nothing else
set -euo pipefail
WS=/provision/workspace
SECRETS=$WS/secrets
CA=/provision/ca
STAMP=$WS/.project.sha256
FLARE_UID=10001 MLFLOW_UID=10002
# The kits' stamp: the project without what no kit holds (a site's UI port and tracking URI), so
# changing those needs no new kits. Kits stamped with the whole file's hash are still accepted.
read -r NAME want <<<"$(python3 - <<'PY'
import hashlib, json, yaml
with open("/provision/project.yml") as f:
    doc = yaml.safe_load(f)
for p in doc.get("participants", []):
    p.pop("mlflow_port", None), p.pop("tracking_uri", None)
print(doc["name"], hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest())
PY
)"
KITS=$WS/$NAME/prod_00
whole=$(sha256sum /provision/project.yml | cut -d' ' -f1)

# The stamps stack/clean.sh reads (it checks this header): what provisioning made in each folder.
KITS_STAMP=$WS/.provisioned-kits CA_STAMP=$CA/.provisioned-ca
STAMP_HEADER="# Made here by fedtrack's provisioning (provision/provision.sh); stack/clean.sh removes these names, nothing else"
# stamp FILE NAME...: add the names to FILE, the list of what provisioning made in FILE's folder.
stamp() {
  local file=$1 names; shift
  names=$({ [ ! -f "$file" ] || tail -n +2 "$file"; printf '%s\n' "$@"; } | sort -u)
  printf '%s\n%s\n' "$STAMP_HEADER" "$names" > "$file.new"
  chmod 644 "$file.new" && mv "$file.new" "$file"
}
# Kits an earlier version made (its .project.sha256, no stamp): listed now, as that version's `make clean`
# took them, and the root CA with them when it signed these kits.
if [ -f "$STAMP" ] && [ ! -f "$KITS_STAMP" ]; then
  stamp "$KITS_STAMP" .project.sha256 secrets $([ ! -f "$KITS/server/startup/fed_server.json" ] || echo "$NAME")
fi
if [ -f "$CA/cert.json" ] && [ ! -f "$CA_STAMP" ] && [ -f "$KITS/server/startup/rootCA.pem" ] \
   && python3 - "$CA/cert.json" "$KITS/server/startup/rootCA.pem" <<'PY'
import json, sys
try:
    with open(sys.argv[1]) as state, open(sys.argv[2]) as root:
        sys.exit(0 if json.load(state)["root_cert"].strip() == root.read().strip() else 1)
except (OSError, ValueError, KeyError, AttributeError):
    sys.exit(1)
PY
then
  stamp "$CA_STAMP" cert.json
fi

if [ -f "$STAMP" ] && [ -f "$KITS/server/startup/fed_server.json" ]; then
  if [ "$(cat "$STAMP")" != "$want" ] && [ "$(cat "$STAMP")" != "$whole" ]; then
    echo "error: provision/project.yml changed since the kits were made; run \`make clean-kits\`, then \`make up\`" >&2
    exit 1
  fi
  if [ ! -d "$SECRETS" ]; then
    echo "error: the kits in $KITS predate the sites' MLflow secrets; run \`make clean-kits\`, then \`make up\`" >&2
    exit 1
  fi
  echo "Skipping provisioning: startup kits already exist in $KITS"
  exit 0
fi
if [ -e "$KITS" ]; then
  if grep -qxF -- "$NAME" "$KITS_STAMP" 2>/dev/null; then
    echo "error: $KITS is incomplete; run \`make clean-kits\`, then \`make up\`" >&2
  else
    echo "error: $KITS is incomplete and not listed as made by provisioning; remove KITS_ROOT/$NAME yourself, then \`make up\`" >&2
  fi
  exit 1
fi
# What this provisioning makes, listed before it is made (a run cut short leaves what `make clean` removes),
# and only what it makes: a folder of these names that is there already must be one it listed.
for name in "$NAME" secrets .project.sha256; do
  if [ -e "$WS/$name" ] && ! grep -qxF -- "$name" "$KITS_STAMP" 2>/dev/null; then
    echo "error: KITS_ROOT/$name is there already and provisioning did not make it; give KITS_ROOT a folder of its own" >&2
    exit 1
  fi
done
stamp "$KITS_STAMP" "$NAME" secrets .project.sha256
mkdir -p "$CA" && chmod 700 "$CA"
[ -e "$CA/cert.json" ] || stamp "$CA_STAMP" cert.json
# With the CA of an earlier provisioning, the new kits are signed by the same root.
if [ -f "$CA/cert.json" ]; then
  mkdir -p "$WS/$NAME/state" && cp "$CA/cert.json" "$WS/$NAME/state/cert.json"
fi
nvflare provision -p /provision/project.yml -w "$WS" --force >/dev/null
mv "$WS/$NAME/state/cert.json" "$CA/cert.json" && chmod 600 "$CA/cert.json"
stamp "$CA_STAMP" cert.json  # also one put back: it is the root of the kits just made
rm -rf "$WS/$NAME/state"

python3 - "$SECRETS" "$FLARE_UID" "$MLFLOW_UID" <<'PY'
import os, secrets, sys, yaml
root, flare_uid, mlflow_uid = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
with open("/provision/project.yml") as f:
    sites = [p["name"] for p in yaml.safe_load(f)["participants"] if p.get("type") == "client"]

def write(path, value, uid):
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value)
    os.chown(path, uid, uid)

for site in sites:
    forwarder = secrets.token_urlsafe(24)
    write(f"{root}/{site}/mlflow/admin_password", secrets.token_urlsafe(24), mlflow_uid)
    write(f"{root}/{site}/mlflow/flask_secret", secrets.token_urlsafe(32), mlflow_uid)
    write(f"{root}/{site}/mlflow/forwarder_password", forwarder, mlflow_uid)
    write(f"{root}/{site}/client/forwarder_password", forwarder, flare_uid)
PY
chmod 700 "$SECRETS"
echo "$want" > "$STAMP"
# Kits: readable by the containers' user (10001) and the host user's group; private keys by the
# containers' user alone.
chown -R "$FLARE_UID:${HOST_GID:-0}" "$WS/$NAME"
chmod -R u+rwX,g+rX,o-rwx "$WS/$NAME"
find "$WS/$NAME" -name '*.key' -exec chmod 600 {} +
echo "Provisioned startup kits in $KITS and MLflow secrets for each site in $SECRETS"
