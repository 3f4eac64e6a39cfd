#!/usr/bin/env bash
# Make the startup kits once (runs in the FLARE image as the `provision` service).
# Output: /provision/workspace/fedtrack/prod_00/{server,site-1,site-2,admin@fedtrack.local}, git-ignored.
set -euo pipefail
WS=/provision/workspace
KITS=$WS/fedtrack/prod_00
STAMP=$WS/.project.sha256
want=$(sha256sum /provision/project.yml | cut -d' ' -f1)

if [ -f "$STAMP" ] && [ -f "$KITS/server/startup/fed_server.json" ]; then
  if [ "$(cat "$STAMP")" != "$want" ]; then
    echo "error: provision/project.yml changed since the kits were made; run \`make clean-kits\`, then \`make up\`" >&2
    exit 1
  fi
  echo "Skipping provisioning: startup kits already exist in $KITS"
  exit 0
fi
if [ -e "$KITS" ]; then
  echo "error: $KITS is incomplete; run \`make clean-kits\`, then \`make up\`" >&2
  exit 1
fi
nvflare provision -p /provision/project.yml -w "$WS" --force >/dev/null
echo "$want" > "$STAMP"
# Readable by the containers' user (10001) and the host user's group; nobody else.
chown -R "10001:${HOST_GID:-0}" "$WS"
chmod -R u+rwX,g+rX,o-rwx "$WS"
echo "Provisioned startup kits in $KITS"
