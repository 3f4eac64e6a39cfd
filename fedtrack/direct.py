"""HTTP straight to the address asked, never through a proxy the environment names. Stdlib only: it runs on
the host (`make status` and the tests, through stack/mlflow_rest.py) and wherever `fedtrack-job` probes a
site's tracking server (fedtrack/job/inputs.py).

urllib's default opener sends every request through the proxy that http_proxy, HTTP_PROXY or all_proxy
names, also for 127.0.0.1 (only no_proxy exempts an address), so a site's MLflow login would reach it.
"""

import urllib.request

DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))
