"""The leak audit of an exported job: nothing forwards metrics to the server, no code travels with it."""

import os


def custom_code(job_dir: str) -> list:
    """Files an exported job would ship as code (should be []: sites refuse custom code)."""
    return sorted(
        os.path.relpath(os.path.join(d, f), job_dir)
        for d, _, files in os.walk(job_dir)
        for f in files
        if os.path.relpath(d, job_dir).split(os.sep)[1:2] == ["custom"]
    )


def check_config_only(job_dir: str):
    leaks = forwarding_components(job_dir)
    if leaks:
        raise RuntimeError(f"exported job would forward metrics to the server: {leaks}")
    code = custom_code(job_dir)
    if code:
        raise RuntimeError(f"exported job would carry custom code, which every site refuses: {code}")


def forwarding_components(job_dir: str) -> list:
    """Client components in an exported job that would send analytics to the server (should be [])."""
    import glob
    import json

    found = []
    for cfg in glob.glob(os.path.join(job_dir, "*", "config", "config_fed_client.json")):
        with open(cfg) as f:
            client = json.load(f)
        for comp in client.get("components", []):
            path = comp.get("path", "")
            args = comp.get("args", {})
            events = args.get("events_to_convert", []) + [e for e in args.get("events", []) if e.startswith("fed.")]
            if path.endswith("ConvertToFedEvent") or events:
                found.append(f"{os.path.relpath(cfg, job_dir)}: {comp.get('id')} ({path})")
        for executor in client.get("executors", []):
            args = executor.get("executor", {}).get("args", {})
            if args.get("launch_external_process") or args.get("execution_mode", "in_process") != "in_process":
                found.append(f"{os.path.relpath(cfg, job_dir)}: external process (fires fed events directly)")
    return found
