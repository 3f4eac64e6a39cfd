"""The FL job, in NVFlare's hello-pt shape (installed as `fedtrack.job`; the FLARE image runs it from there):

    client.py   the training script each site runs (Client API)
    model.py    the model
    data.py     each site's data
    job.py      the job CLI (`fedtrack-job`): parser -> recipe -> simulate, export or submit,
                with inputs.py (checks), recipe.py (the FedAvg recipe), audit.py, runners.py
"""
