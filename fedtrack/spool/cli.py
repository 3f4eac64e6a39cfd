"""`fedtrack-spool`: a site's spool from the command line.

    fedtrack-spool serve [DIR]     deliver whatever appears in DIR, until DIR is removed (the site's forwarder)
    fedtrack-spool forward [DIR]   deliver everything in DIR, then exit
    fedtrack-spool status [DIR]    one line: undelivered, refused and lost record counts
    fedtrack-spool count [DIR]     the number of undelivered records (exit 1 if a spool cannot be read)

DIR defaults to this container's spool folder ($WORKSPACE/tracking-spool).
"""

import logging
import os
import sys

from fedtrack.names import spool_dir
from fedtrack.spool.forwarder import forward
from fedtrack.spool.report import counts, status


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if not 1 <= len(argv) <= 2 or argv[0] not in ("serve", "forward", "status", "count"):
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    cmd, folder = argv[0], argv[1] if len(argv) == 2 else spool_dir()
    if cmd in ("status", "count"):
        if not os.path.isdir(folder):
            print("0" if cmd == "count" else "0 record(s) spooled (no spool yet)")
        elif cmd == "status":
            print(status(folder))
        else:
            c = counts(folder)
            print(c["pending"])
            if c["unreadable"]:  # what they hold is unknown: not a count anyone should act on
                print(f"error: {c['unreadable']} job spool(s) in {folder} cannot be read now", file=sys.stderr)
                return 1
        return 0
    if cmd == "serve":
        os.makedirs(folder, exist_ok=True)
        return forward(folder, idle_exit=None)
    return forward(folder)


if __name__ == "__main__":
    sys.exit(main())
