#!/usr/bin/env bash
# Start an NVFlare server or client from a startup kit mounted read-only at $KIT, with its
# writable workspace (logs, job runs, job store) at $WORKSPACE, a persistent volume.
# The kit's keys are linked, never copied into the workspace or the image. The local policy
# (authorization, allowed components: fedtrack.policy, `fedtrack-policy`) comes from the image, as
# does every line of code a site runs; a client site also runs its tracking forwarder, from the image.
#   fedtrack-entrypoint            run the participant the kit was made for (server or client)
#   fedtrack-entrypoint CMD ...    run CMD (e.g. the admin's job submission) instead
set -euo pipefail
KIT=${KIT:-/kit}
WORKSPACE=${WORKSPACE:-/workspace}

if [ ! -d "$KIT/startup" ]; then
  echo "error: startup kit not found at $KIT; run \`make provision\`" >&2
  exit 1
fi
if [ $# -gt 0 ]; then
  exec "$@"
fi

sub_start="$KIT/startup/sub_start.sh"
[ -f "$sub_start" ] || { echo "error: $KIT is not a server or client kit (no startup/sub_start.sh)" >&2; exit 1; }
# The kit's own launch command (module, uid, org), as its start script would run it.
cmd=$(sed -n 's/^ *exec \(python3 -u -m nvflare\.private\.fed\.app\..*\)$/\1/p' "$sub_start")
[ -n "$cmd" ] || { echo "error: no launch command found in $sub_start" >&2; exit 1; }

# nvflare finds its config by walking the workspace, which does not follow a linked directory:
# startup/ is a real folder of links to the kit's files.
rm -rf "$WORKSPACE/startup"
mkdir -p "$WORKSPACE/startup" "$WORKSPACE/local" "$WORKSPACE/transfer"
ln -s "$KIT"/startup/* "$WORKSPACE/startup/"
cp "$KIT"/local/* "$WORKSPACE/local/"
WORKSPACE="$WORKSPACE" fedtrack-policy "$KIT" "$WORKSPACE"
rm -f "$WORKSPACE"/{pid,shutdown,restart,daemon_pid}.fl
# A client site's forwarder runs as long as the container: it delivers what jobs spool (and what
# they spooled before a restart) to the site's MLflow; its log is the container's.
if [ -f "$KIT/startup/fed_client.json" ]; then
  WORKSPACE="$WORKSPACE" fedtrack-spool serve < /dev/null &
fi
echo "fedtrack: $cmd (kit $KIT, workspace $WORKSPACE)"
eval "exec $cmd"  # the kit's command refers to "$WORKSPACE", set above
