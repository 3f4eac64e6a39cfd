"""Durable, site-local delivery of tracking records to the site's own MLflow server.

The training side only appends records to a spool on the site's persistent storage (one SQLite
file per job, in `<site workspace>/tracking-spool/`), committed in groups by a thread of its own
(SpoolWriter): no I/O on the training thread. A forwarder process (one per site: `serve`, started with the site's container, or
`forward`, started by the receiver when none runs) delivers them in order and in batches,
retrying with backoff until the server accepts them, and deletes a record only after the server
has it. It outlives the job: records spooled while the server is down arrive after it returns,
and the run then gets its real final status. It always runs this file as installed (at a site,
the image's copy), never a copy on a volume that a job could write.

At a deployed site the forwarder sends only to the site's own server (FEDTRACK_TRACKING_URI) and
logs in there with the site's writer account (FEDTRACK_MLFLOW_USERNAME and the password in the
file FEDTRACK_MLFLOW_PASSWORD_FILE); a spool naming any other server is refused.

Exactly once as seen in MLflow: a metric keeps the timestamp of its log call, and MLflow's store
drops a point identical to one it holds (key, value, timestamp, step), so a batch re-sent after
a lost answer adds nothing. Params are re-sent with the same value; tags and text artifacts
overwrite. The run is found again by its `job_id` and `site` tags before one is created.

A `model` record names a folder (the final model, saved by the training script in MLflow's
format): its files become the run's artifacts under the record's key (re-sent, they overwrite),
then the folder is removed. Only a folder inside the spool's own folder is uploaded: any other
(a job must not make the forwarder upload, e.g., the site's keys) is refused and counted.

Bounded: a spool holds at most `max_records` undelivered records; past that, new records are
refused and counted (a warning in the site's log, and in `status`); what is spooled is kept.
A write the storage refuses (disk full) is counted too (SpoolWriter); the forwarder's own writes
(deleting what was delivered) are retried, and a re-sent batch adds nothing.

The modules, one step of the record's way each:

    store.py      the on-disk format (one SQLite file per job) and its transactions
    writer.py     SpoolWriter, in the training process: queues and group-commits records
    failures.py   FailureLog: failed spool writes, kept where a full volume cannot stop them
    delivery.py   Delivery: one job's spool to its MLflow server, exactly once
    forwarder.py  the site's forwarder daemon: every spool of a folder, with backoff
    report.py     counts and the one-line status (`make status`, the healthcheck, `make clean`)
    cli.py        `fedtrack-spool serve|forward|status|count [DIR]`
"""
