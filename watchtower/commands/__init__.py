"""The command families of ``watchtower``, one module each; :data:`ALL` is what the root group adds."""

from . import jobs, look, prune, serve, spool, steer, supervise, worker

ALL = (
    jobs.retry,
    jobs.workers,
    look.jobs,
    look.failed,
    look.show,
    look.status,
    prune.prune_command,
    serve.serve,
    spool.spool_command,
    steer.pause,
    steer.resume,
    steer.stop,
    steer.restart,
    supervise.supervise,
    worker.worker,
)
