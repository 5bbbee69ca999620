"""hydra/sweeper=optuna: linreg-lab's own sweeper on Optuna's ask-and-tell API: pruning, a
study that lives on in its storage, and settings refused before any run."""

from __future__ import annotations

import pytest

optuna = pytest.importorskip("optuna", reason="pip install -e .[optuna]")

from tests.test_sweeps import sweep_runs  # noqa: E402

PRUNED = ["-m", "experiment=lr_batch_optuna_pruned", "trainer.epochs=5"]


def _study(store, name: str):
    """The study named name, or the one the last sweep of experiment name searched."""
    experiment = store.client.get_experiment_by_name(name)
    if experiment is not None:
        (parent,) = store.client.search_runs(
            [experiment.experiment_id], "tags.`linreg.sweep` = 'true'", max_results=1
        )
        name = parent.data.params["optuna.study_name"]
    return optuna.load_study(study_name=name, storage=f"sqlite:///{store.root / 'optuna.db'}")


def test_optuna_is_current():
    major = int(optuna.__version__.split(".")[0])
    assert major >= 4, optuna.__version__


@pytest.mark.slow
def test_pruned_trials_stop_early_and_say_so(store):
    store.command(*PRUNED, "hydra.sweeper.n_trials=8")
    parent, children = sweep_runs(store, "lr_batch_optuna_pruned")
    assert len(children) == 8 and parent.info.status == "FINISHED"
    pruned = [c for c in children if "linreg.pruned" in c.data.tags]
    assert pruned, "the median pruner stopped no trial"
    epochs = 0
    for run in children:
        history = store.client.get_metric_history(run.info.run_id, "train/loss")
        epochs += len(history)
        if run in pruned:  # KILLED, with every epoch it trained, the last one in its tag
            assert run.info.status == "KILLED"
            assert len(history) == int(run.data.tags["linreg.pruned"]) < 5
            assert "pruned by Optuna's SuccessiveHalvingPruner" in run.data.tags["linreg.failure"]
        else:
            assert run.info.status == "FINISHED" and len(history) == 5
    assert epochs < 8 * 5
    assert parent.data.tags["linreg.best_run_id"] not in {r.info.run_id for r in pruned}
    assert parent.data.metrics["optuna.trials.pruned"] == len(pruned)
    study = _study(store, "lr_batch_optuna_pruned")
    states = {t.number: t.state.name for t in study.trials}
    for run in children:
        expected = "PRUNED" if run in pruned else "COMPLETE"
        assert states[int(run.data.tags["linreg.trial"])] == expected
    report = store.report("--experiment", "lr_batch_optuna_pruned")
    assert "PRUNED" in report.stdout


@pytest.mark.slow
def test_a_study_resumes_with_the_trials_it_still_owes(store):
    base = ["-m", "experiment=lr_batch_optuna", "trainer.epochs=1"]
    store.command(*base, "hydra.sweeper.n_trials=2")
    store.command(*base, "hydra.sweeper.n_trials=4")  # the study's total: 2 more
    study = _study(store, "lr_batch_optuna")
    assert len(study.trials) == 4 and {t.state.name for t in study.trials} == {"COMPLETE"}
    assert len({tuple(sorted(t.params.items())) for t in study.trials}) == 4  # new points
    sweeps = [r for r in store.runs("lr_batch_optuna") if r.data.tags.get("linreg.sweep")]
    assert len(sweeps) == 2
    again = store.command(*base, "hydra.sweeper.n_trials=4")
    assert "has all its 4 trials" in again.stderr and "nothing to run" in again.stderr
    assert len([r for r in store.runs("lr_batch_optuna") if r.data.tags.get("linreg.sweep")]) == 2


@pytest.mark.slow
def test_ctrl_c_mid_study_then_the_same_command_finishes_it(store):
    from tests.test_failures import interrupt

    args = ["-m", "experiment=lr_batch_optuna", "hydra.sweeper.n_trials=2",
            "hydra.sweeper.study_name=long", "dataset.num_samples=100000"]  # fmt: skip
    interrupt(store, *args, "trainer.epochs=100000", experiment="lr_batch_optuna", timeout=60)
    (trial,) = _study(store, "long").trials
    assert trial.state.name in ("FAIL", "RUNNING")  # told FAIL, or left by the killed sweep
    store.command(*args, "trainer.epochs=1")  # the same study (named), shorter jobs
    study = _study(store, "long")
    assert [t.state.name for t in study.trials] == ["FAIL", "COMPLETE", "COMPLETE"]


@pytest.mark.parametrize(
    "override,words",
    [
        ("hydra.sweeper.pruner=sometimes", ["hydra.sweeper.pruner=sometimes", "median"]),
        ("hydra.sweeper.n_trials=0", ["hydra.sweeper.n_trials=0", ">= 1"]),
        ("trainer.batch_size=tag(log,choice(10,32))", ["tag(log, choice(...))", "categorical"]),
        ("hydra.sweeper.storage=sqlite:////proc/no/optuna.db", ["storage", "cannot be opened"]),
        ("hydra.sweeper.sampler._target_=optuna.samplers.NoSuchSampler",
         ["NoSuchSampler", "optuna.samplers"]),
    ],
)  # fmt: skip
def test_bad_sweeper_settings_are_one_line_before_any_run(store, override, words):
    result = store.command("-m", "experiment=lr_batch_optuna", override, check=False)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert all(word in lines[0] for word in words), lines[0]
    experiment = store.client.get_experiment_by_name("lr_batch_optuna")
    assert experiment is None or not store.runs("lr_batch_optuna")


@pytest.mark.slow
@pytest.mark.parametrize(
    "launcher",
    [["hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "hydra.sweeper.n_jobs=5"],
     ["hydra/launcher=vectorized", "hydra.sweeper.n_jobs=5", "trainer.batch_size=32"]],
    ids=["joblib", "vectorized"],
)  # fmt: skip
def test_jobs_are_pruned_on_other_launchers(store, launcher):
    """joblib's workers reach the study from their own processes; the vectorized launcher
    trains a batch of trials in one pass and drops the pruned ones from it."""
    store.command(*PRUNED, "hydra.sweeper.n_trials=10", *launcher)
    parent, children = sweep_runs(store, "lr_batch_optuna_pruned")
    assert len(children) == 10 and parent.info.status == "FINISHED"
    pruned = [c for c in children if c.info.status == "KILLED"]
    assert pruned and all("linreg.pruned" in c.data.tags for c in pruned)
    finished = [c for c in children if c.info.status == "FINISHED"]
    if "hydra/launcher=vectorized" in launcher:  # in passes of several models
        assert {c.data.tags["linreg.engine"] for c in finished} == {"vectorized"}
    study = _study(store, "lr_batch_optuna_pruned")
    assert sum(t.state.name == "PRUNED" for t in study.trials) == len(pruned)


@pytest.mark.slow
def test_without_a_pruner_every_trial_trains_every_epoch_and_reports_it(store):
    store.command(*PRUNED, "hydra.sweeper.n_trials=6", "hydra.sweeper.pruner=null")
    parent, children = sweep_runs(store, "lr_batch_optuna_pruned")
    assert {c.info.status for c in children} == {"FINISHED"} and len(children) == 6
    assert parent.data.params["optuna.pruner"] == "none"
    study = _study(store, "lr_batch_optuna_pruned")
    assert [len(t.intermediate_values) for t in study.trials] == [5] * 6


@pytest.mark.slow
def test_two_commands_on_one_study_share_its_trials(store):
    """Started together on a storage that does not exist yet: both open it, and together
    they run the study's n_trials, each a parent run of its own."""
    from tests.test_failures import start_in_group

    args = ["-m", "experiment=lr_batch_optuna", "hydra.sweeper.n_trials=4",
            "hydra.sweeper.study_name=shared", "trainer.epochs=1"]  # fmt: skip
    first, second = start_in_group(store, *args), start_in_group(store, *args)
    try:
        assert first.wait(timeout=300) == 0, first.stderr.read()
        assert second.wait(timeout=300) == 0, second.stderr.read()
    finally:
        first.kill()
        second.kill()
    study = _study(store, "shared")
    assert len(study.trials) == 4 and {t.state.name for t in study.trials} == {"COMPLETE"}
    runs = store.runs("lr_batch_optuna")
    assert len([r for r in runs if r.data.tags.get("linreg.sweep") == "true"]) == 2
    assert len([r for r in runs if "linreg.trial" in r.data.tags]) == 4


def test_a_named_study_searched_otherwise_is_one_line_before_any_new_run(store):
    base = ["-m", "experiment=lr_batch_optuna", "hydra.sweeper.study_name=named",
            "hydra.sweeper.n_trials=1", "trainer.epochs=1"]  # fmt: skip
    store.command(*base)
    for args, words in [
        (["trainer.batch_size=choice(10,100)"], ["trainer.batch_size", "choice(10, 32, 100)"]),
        (["hydra.sweeper.direction=maximize", "hydra.sweeper.n_trials=2"],
         ["hydra.sweeper.direction=maximize", "minimizes"]),
    ]:  # fmt: skip
        result = store.command(*base, *args, check=False)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.returncode == 2 and len(lines) == 1, result.stderr
        assert all(word in lines[0] for word in words), lines[0]
    assert len(store.runs("lr_batch_optuna")) == 2  # the first sweep's parent and its job


_CLAIMER = """
import sys

import optuna
from linreg_lab.sweep import study as studies

storage, n_trials = sys.argv[1], int(sys.argv[2])
sampler = {"_target_": "optuna.samplers.RandomSampler"}
settings = studies.StudySettings("race", storage, "minimize", n_trials, 1, sampler, None,
                                 {"x": optuna.distributions.FloatDistribution(0.0, 1.0)}, [])
study = studies.open_study(settings)
ran = 0
while trials := studies._claim(study, settings, 1, f"claimer:{ran}"):
    for trial in trials:
        study.tell(trial, trial.params["x"])
        ran += 1
print(ran)
"""


@pytest.mark.slow
def test_commands_racing_on_one_study_ask_its_n_trials_exactly(tmp_path):
    """Four processes claim trials one at a time from one new sqlite study, as fast as they
    can: together they ask n_trials, no more, and none is told FAIL."""
    import subprocess
    import sys

    storage, n_trials = f"sqlite:///{tmp_path / 'optuna.db'}", 40
    racers = [
        subprocess.Popen([sys.executable, "-c", _CLAIMER, storage, str(n_trials)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(4)
    ]  # fmt: skip
    ran = []
    for racer in racers:
        out, err = racer.communicate(timeout=300)
        assert racer.returncode == 0, err
        ran.append(int(out))
    study = optuna.load_study(study_name="race", storage=storage)
    assert sum(ran) == n_trials, ran
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * n_trials
