"""MLflow tracking behind one narrow door: a store, its runs, and what each run records.

    store = Store.open(settings)                 # the experiment opens in the helper process
    run = store.start_run(name, tags, parent_run_id=None)
    run.log_params({...}); run.log_metrics({...}, step=1); run.log_text(text, "config.yaml")
    run.log_dataset(spec, facts); run.log_plots(inputs); run.end(FINISHED)

Every write is a verb sent to the MLflow helper process (helper.py); what the verbs do in MLflow
is in records.py, dataset.py, plots.py, orphans.py and report.py, which only the helper runs.
"""

from linreg_lab.tracking.run import Run, Store
from linreg_lab.tracking.store import TrackingError, TrackingSettings
from linreg_lab.tracking.tags import FAILED, FINISHED, KILLED, RUNNING

__all__ = [
    "FAILED", "FINISHED", "KILLED", "RUNNING",
    "Run", "Store", "TrackingError", "TrackingSettings",
]  # fmt: skip
