"""One sample of the site's hardware use under MLflow's system-metric names (its run page's System
metrics tab): CPU and memory through psutil, NVIDIA GPUs through the driver's NVML."""


def gpus() -> list:
    """NVML handles of the NVIDIA GPUs this process sees; none without a driver or a GPU."""
    try:
        import pynvml  # nvidia-ml-py; NVML itself comes with the driver (the container toolkit mounts it)

        pynvml.nvmlInit()
        return [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
    except Exception:  # noqa: BLE001 - NVMLError_LibraryNotFound and kin: a host without GPUs
        return []


def system_metrics(gpu_handles: list) -> dict:
    """One sample of this host's CPU, memory and GPUs, under MLflow's system-metric names (its run
    page's System metrics tab). CPU is the share since the previous sample."""
    import psutil

    mem = psutil.virtual_memory()
    out = {
        "system/cpu_utilization_percentage": psutil.cpu_percent(),
        "system/system_memory_usage_megabytes": (mem.total - mem.available) / 2**20,
        "system/system_memory_usage_percentage": mem.percent,
    }
    if gpu_handles:
        import pynvml

        for i, handle in enumerate(gpu_handles):
            used = pynvml.nvmlDeviceGetMemoryInfo(handle)
            out[f"system/gpu_{i}_utilization_percentage"] = pynvml.nvmlDeviceGetUtilizationRates(handle).gpu
            out[f"system/gpu_{i}_memory_usage_megabytes"] = used.used / 2**20
            out[f"system/gpu_{i}_memory_usage_percentage"] = 100.0 * used.used / used.total
    return out
