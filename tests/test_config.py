"""Every option of every config group composes, validates and instantiates."""

from __future__ import annotations

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import linreg_lab.config  # noqa: F401  # registers the linreg.root resolver, nothing else
from linreg_lab import build
from linreg_lab.config.validate import ConfigError, validate
from linreg_lab.paths import CONF_DIR, MLRUNS_DIR

GROUPS = ["dataset", "model", "optimizer", "trainer", "tracking", "experiment"]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def make(*overrides: str):
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        return compose("config", overrides=list(overrides))


def test_every_group_has_options():
    for group in GROUPS:
        assert options(group), group


@pytest.mark.parametrize(
    "group,option", [(g, o) for g in GROUPS for o in options(g)], ids=lambda v: str(v)
)
def test_every_option_instantiates(group, option, monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    extra = []
    if (group, option) == ("dataset", "table"):  # a table needs a file
        (tmp_path / "t.csv").write_text(
            "a,b,y\n" + "".join(f"{i},{i * i % 7},{i}\n" for i in range(20))
        )
        extra = [f"dataset.path={tmp_path / 't.csv'}", "dataset.target=y"]
    cfg = make(f"{group}={option}", *extra)
    validate(cfg)
    data = build.dataset(cfg)
    model = build.model(cfg, data.num_features)
    optimizer = build.optimizer_factory(cfg)(model.parameters())
    assert isinstance(model, torch.nn.Linear) and model.in_features == data.num_features
    assert isinstance(optimizer, torch.optim.Optimizer)
    assert build.trainer(cfg).epochs >= 1
    assert build.tracking(cfg).uri


def test_defaults_are_the_tutorial(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = make()
    assert list(cfg.dataset.true_w) == [2.8, -1.7, 3.6] and cfg.dataset.true_b == 3.0
    assert cfg.dataset.num_samples == 1000 and cfg.dataset.noise_std == 0.01
    assert cfg.optimizer.lr == 0.03 and cfg.trainer.batch_size == 10 and cfg.trainer.epochs == 3
    assert cfg.tracking.uri == f"sqlite:///{MLRUNS_DIR}/mlflow.db"
    model = build.model(cfg, 3)
    assert float(model.bias.detach()) == 0.0 and model.weight.std() < 0.05


def test_tracking_uri_follows_the_environment(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////tmp/elsewhere.db")
    assert make().tracking.uri == "sqlite:////tmp/elsewhere.db"


def test_num_features_draws_a_seeded_random_truth():
    cfg = make("dataset.num_features=20", "dataset.num_samples=50")
    first, second = build.dataset(cfg), build.dataset(cfg)
    assert first.X.shape == (50, 20) and first.true_w.shape == (20,)
    assert torch.equal(first.true_w, second.true_w) and torch.equal(first.X, second.X)
    other = build.dataset(make("dataset.num_features=20", "dataset.seed=1"))
    assert not torch.equal(first.true_w, other.true_w)


@pytest.mark.parametrize(
    "override,message",
    [
        ("optimizer.lr=0", "optimizer.lr=0"),
        ("optimizer.lr=-1", "optimizer.lr=-1"),
        ("optimizer.lr=inf", "optimizer.lr=inf"),
        ("trainer.batch_size=0", "trainer.batch_size=0"),
        ("trainer.epochs=0", "trainer.epochs=0"),
        ("dataset.num_samples=0", "dataset.num_samples=0"),
        ("dataset.noise_std=-0.1", "dataset.noise_std=-0.1"),
        ("dataset.true_w=[]", "dataset.true_w=[]"),
        ("dataset.true_w=[1,nan]", "dataset.true_w"),
        ("optimizer.momentum=1.5", "optimizer.momentum=1.5"),
        ("optimizer.nesterov=true", "optimizer.nesterov"),
        ("model.module._target_=os.system", "only torch.nn"),
        ("trainer.threads=zero", "trainer.threads=zero"),
        ("model.module.out_features=2", "model.module.out_features=2"),
        ("tracking.uri=/not/a/uri", "tracking.uri"),
        ("+model.module.biass=true", "model.module.biass=True .*torch.nn.Linear takes no"),
        ("+dataset.seeds=1", "dataset.seeds=1 .*takes no argument 'seeds'"),
        ("+optimizer.params=[]", "optimizer.params=[] .*takes no argument 'params'"),
        # types, from the targets' own signatures
        ("optimizer.lr=abc", "optimizer.lr=abc .*torch.optim.SGD takes a number"),
        ("trainer.shuffle=maybe", "trainer.shuffle=maybe .*true or false"),
        ("trainer.epochs=1.5", "trainer.epochs=1.5 .*an integer"),
        ("dataset.true_w=[1,a]", "a list of numbers or null"),
        ("trainer.device=gpu", "trainer.device=gpu .*auto, cpu, cuda"),
        ("trainer.engine=fast", "trainer.engine=fast .*auto, analytic, autograd"),
        ("trainer.threads=100000", "trainer.threads=100000 .*1 to 1024"),
        ("tracking.log_plots=2", "tracking.log_plots=2 .*true or false"),
        ("optimizer._target_=torch.optim.AdamW", "optimizer.momentum=0.0 .*AdamW takes no"),
    ],
)
def test_bad_values_name_the_setting(override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        validate(make(override))


def test_added_keys_that_the_target_takes_are_allowed():
    validate(make("+optimizer.maximize=false", "+model.module.dtype=null"))


@pytest.mark.parametrize("launcher", ["basic", "joblib", "submitit_local", "slurm", "vectorized"])
def test_every_launcher_option_instantiates(launcher):
    from hydra.plugins.launcher import Launcher
    from hydra.utils import instantiate

    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = compose("config", [f"hydra/launcher={launcher}"], return_hydra_config=True)
    if launcher == "basic":  # Hydra's own class: not instantiable from a config (by design)
        assert cfg.hydra.launcher._target_.endswith("BasicLauncher")
    else:
        assert isinstance(instantiate(cfg.hydra.launcher), Launcher)
    if launcher == "slurm":
        assert cfg.hydra.launcher.timeout_min == 30 and cfg.hydra.launcher.partition is None


@pytest.mark.parametrize(
    "task,refused",
    [
        (["optimizer.momentum=0.5,0.9", "optimizer.nesterov=true"], None),
        (["++trainer.epochs=1,2"], None),  # a forced add: composed as Hydra composes it
        (["optimizer=sgd,adam", "optimizer.lr=0.1,0.2"], None),
        (["optimizer.momentum=0,0.9", "optimizer.nesterov=false,true"], "optimizer.nesterov=True"),
        (["optimizer.lr=0.1,-1"], "optimizer.lr=-1"),
    ],
)
def test_sweep_check_takes_each_job_as_a_whole(task, refused):
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import open_dict

    from linreg_lab.config.validate import ConfigError
    from linreg_lab.sweep.check import check_sweep

    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = compose("config", return_hydra_config=True)
        with open_dict(cfg):
            cfg.hydra.overrides.task = task
        assert GlobalHydra.instance().is_initialized()
        if refused is None:
            check_sweep(cfg)
        else:
            with pytest.raises(ConfigError, match=refused.replace(".", r"\.")):
                check_sweep(cfg)


def test_sample_jobs_covers_every_value_when_the_grid_is_too_large(monkeypatch):
    from linreg_lab.sweep import check as sweep_check

    swept = {"a": ["a=1", "a=2", "a=3"], "b": ["b=1", "b=2"]}
    assert len(sweep_check.sample_jobs(swept)) == 6
    monkeypatch.setattr(sweep_check, "_MAX_JOBS_CHECKED", 4)
    jobs = sweep_check.sample_jobs(swept)
    assert jobs == [("a=1", "b=1"), ("a=2", "b=1"), ("a=3", "b=1"), ("a=1", "b=2")]


def _target_defaults(target: str) -> dict:
    import inspect

    from hydra.utils import get_object

    function = get_object(target)
    return {
        name: p.default for name, p in inspect.signature(function).parameters.items()
        if p.default is not inspect.Parameter.empty
    }  # fmt: skip


@pytest.mark.parametrize(
    "group,option", [(g, o) for g in GROUPS[:-1] for o in options(g)], ids=lambda v: str(v)
)
def test_every_setting_is_defined_once_where_code_has_a_default_too(group, option):
    """The YAML is the source of every default; our own targets' defaults (for use without
    Hydra) must say the same, and every value must be one its target's signature accepts.
    (torch's defaults are torch's: the tutorial's lr for Adam is ours to choose.)"""
    from omegaconf import OmegaConf

    from linreg_lab.config.validate import check_arguments

    def nodes(node, path):
        if isinstance(node, dict):
            if "_target_" in node:
                yield path, node
            for key, value in node.items():
                yield from nodes(value, f"{path}.{key}")

    raw = OmegaConf.to_container(OmegaConf.load(CONF_DIR / group / f"{option}.yaml"))
    check_arguments(raw, group)  # every key is an argument, of the declared type
    for path, node in nodes(raw, group):
        if not node["_target_"].startswith("linreg_lab."):
            continue
        defaults = _target_defaults(node["_target_"])
        for key, value in node.items():
            if key.startswith("_") or key not in defaults or isinstance(value, dict):
                continue
            if isinstance(value, str) and ("${" in value or value == "???"):
                continue
            code = defaults[key]
            code = list(code) if isinstance(code, tuple) else code
            assert value == code, f"{path}.{key}: YAML says {value!r}, the code {code!r}"


@pytest.mark.parametrize(
    "overrides,optimizer",
    [
        (["optimizer=adam", "optimizer._target_=torch.optim.AdamW"], torch.optim.AdamW),
        (
            [
                "optimizer._target_=torch.optim.RMSprop",
                "~optimizer.dampening",
                "~optimizer.nesterov",
                "+optimizer.alpha=0.9",
            ],
            torch.optim.RMSprop,
        ),
        (
            [
                "optimizer._target_=torch.optim.LBFGS",
                "~optimizer.momentum",
                "~optimizer.dampening",
                "~optimizer.nesterov",
                "~optimizer.weight_decay",
                "+optimizer.max_iter=5",
            ],
            torch.optim.LBFGS,
        ),
    ],
)
def test_any_torch_optimizer_works_from_the_command_line(overrides, optimizer):
    cfg = make(*overrides)
    validate(cfg)
    built = build.optimizer_factory(cfg)(build.model(cfg, 3).parameters())
    assert type(built) is optimizer


def test_a_key_can_be_deleted():
    cfg = make("~optimizer.nesterov")
    validate(cfg)
    assert "nesterov" not in cfg.optimizer
    assert build.engine(cfg) == "analytic"  # SGD's own default for nesterov


@pytest.mark.parametrize("key", ["trainer.threads", "trainer.device", "trainer.compiled",
                                 "trainer.engine", "trainer.batch_size", "optimizer.momentum",
                                 "tracking.log_plots", "model.module.bias"])  # fmt: skip
def test_a_deleted_key_takes_its_targets_default(key):
    """A user's file may leave a key out (or delete it with ~): the target's own default then,
    for the checks as for the run (a traceback here once: 'threads' is not in struct)."""
    cfg = make(f"~{key}")
    validate(cfg)
    section, _, name = key.rpartition(".")
    assert name not in OmegaConf.select(cfg, section)  # the user's config is left as it is
    if section == "trainer":
        assert getattr(build.trainer(cfg), name) is not None
    # and a bad value is still refused where the key is given
    with pytest.raises(ConfigError, match="trainer.threads=0"):
        validate(make(f"~{key}" if key != "trainer.threads" else "~trainer.device",
                      "trainer.threads=0"))  # fmt: skip


@pytest.mark.parametrize(
    "overrides",
    [[], ["dataset=diabetes"], ["optimizer=adam", "+extra=???"], ["+e=1", "+w=${e}"],
     ["+z=${optimizer}"], ["+lr_copy=${optimizer.lr}"]],
    ids=str,
)  # fmt: skip
def test_the_resolved_config_is_omegaconfs_own(overrides):
    """build.plain_config (node by node) is what OmegaConf resolves from the task's keys, and
    config.yaml is the text OmegaConf.to_yaml writes for it."""
    from omegaconf import OmegaConf

    from linreg_lab.experiment.run import config_yaml

    cfg = make(*overrides)
    task_keys = [key for key in cfg if key != "hydra"]
    expected = OmegaConf.to_container(
        OmegaConf.masked_copy(cfg, task_keys), resolve=True, enum_to_str=True
    )
    plain = build.plain_config(cfg)
    assert plain == expected and list(plain) == list(expected)
    tricky = {"a": "1e5", "b": "🚀 ünï", "c": "yes", "n": None, "d": "10e-3", "e": "0x1F",
              "f": [1, 2.5], "g": "plain words", "h": ""}  # fmt: skip
    shared = [1, 2]
    for config in (plain, {**plain, "tricky": tricky, "s1": shared, "s2": shared}):
        assert config_yaml(config) == OmegaConf.to_yaml(config)


def test_settings_are_shared_per_resolved_config_and_nothing_else():
    """build.trainer / build.tracking hand out one frozen object per resolved config."""
    first, again = build.tracking(make()), build.tracking(make())
    assert first is again
    named = build.tracking(make("tracking.run_name=mine"))
    assert named is not first and named.run_name == "mine" and first.run_name is None
    assert build.trainer(make("trainer.epochs=7")).epochs == 7
    assert build.trainer(make("trainer.epochs=7")) is build.trainer(make("trainer.epochs=7"))
    assert build.trainer(make()).epochs == 3
