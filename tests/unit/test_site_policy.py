"""What a site and the server run from a job, without a server: the deploy check (fedtrack.policy.validator)
on the real exported job and on each attack of tests/attacks.py, the site's own trainer and settings, its
privacy filter on real nvflare task results, and the policy files the installer writes."""

import json
import shutil

import numpy as np
import pytest

from attacks import ATTACKS, NVFLARE_REFUSES, load, write
from support import run_job


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("policy")
    result = run_job("--env", "export", "--export-dir", str(out), "--name", "pol", "--rounds", "2", "--register-model", "m1")
    assert result.returncode == 0, result.stderr[-3000:]
    return out / "pol"


@pytest.mark.parametrize("attack", [a for a in ATTACKS if a not in NVFLARE_REFUSES])
def test_the_deploy_check_refuses_each_attack_with_its_reason(attack, exported, tmp_path):
    from fedtrack.policy.validator import check_app

    edit, refuser, reason = ATTACKS[attack]
    job = tmp_path / "job"
    shutil.copytree(exported, job)
    config = load(job)
    edit(config)
    write(config, job)
    app = "app_server" if refuser == "server" else f"app_{refuser}"
    problem = check_app(str(job / app), is_server=refuser == "server")
    assert reason in problem, problem
    assert problem.startswith("the server refuses the job: " if refuser == "server" else "this site refuses the job: ")
    others = [a for a in sorted(p.name for p in job.iterdir() if p.name.startswith("app_")) if a != app]
    assert all(check_app(str(job / a), is_server=a == "app_server") == "" for a in others), "an untouched app was refused"


def test_a_site_narrows_its_datasets_and_bounds_its_training(monkeypatch):
    from fedtrack.policy.validator import check_training
    from fedtrack.site.settings import DATASETS_ENV

    good = {"dataset": "cifar10", "lr": 0.02, "local_epochs": 1, "batch_size": 32, "site_index": 1, "num_sites": 2}
    assert check_training(good) is None
    monkeypatch.setenv(DATASETS_ENV, "digits")
    assert "dataset='cifar10': this site trains on digits" in check_training(good)
    monkeypatch.delenv(DATASETS_ENV)
    assert "site_index 2 is not below num_sites 2" in check_training(dict(good, site_index=2))
    assert "local_epochs=true" in check_training(dict(good, local_epochs=True))


def test_the_sites_trainer_runs_the_installed_script_with_the_sites_data(monkeypatch):
    from fedtrack.site.settings import DATA_DIR_ENV
    from fedtrack.site.trainer import TRAINING_SCRIPT, SiteTrainer

    monkeypatch.setenv(DATA_DIR_ENV, "/data")
    trainer = SiteTrainer(dataset="digits", lr=0.5, local_epochs=2, batch_size=8, site_index=1, num_sites=3,
                          register_model="best")
    backend = vars(trainer)
    assert TRAINING_SCRIPT in json.dumps(backend, default=str)
    assert ("--dataset digits --data-dir /data --local-epochs 2 --lr 0.5 --batch-size 8 --site-index 1 "
            "--num-sites 3 --register-model best") in json.dumps(backend, default=str)
    with pytest.raises(ValueError, match="register_model="):
        SiteTrainer(dataset="digits", lr=0.5, local_epochs=2, batch_size=8, register_model="${secret:env:HOME}")


@pytest.mark.parametrize("var,value,words", [("FEDTRACK_SPOOL_LIMIT", "0", "FEDTRACK_SPOOL_LIMIT=0: give the most"),
                                             ("FEDTRACK_SYSTEM_METRICS_INTERVAL", "nan", "FEDTRACK_SYSTEM_METRICS_INTERVAL=nan"),
                                             ("FEDTRACK_DATASETS", "digits,mnist", "FEDTRACK_DATASETS=digits,mnist: give")])
def test_a_bad_site_setting_is_one_line_naming_it(monkeypatch, var, value, words):
    from fedtrack.site import settings

    monkeypatch.setenv(var, value)
    with pytest.raises(settings.SiteSettingError) as e:
        settings.spool_limit(), settings.system_metrics_interval(), settings.datasets()
    assert words in str(e.value) and "\n" not in str(e.value)


def result_of(fl_model):
    from nvflare.app_common.utils.fl_model_utils import FLModelUtils

    return FLModelUtils.to_shareable(fl_model)


def test_the_privacy_filter_lets_weights_and_the_step_count_out_and_nothing_metric_like():
    from nvflare.apis.dxo import DataKind, from_shareable
    from nvflare.apis.fl_context import FLContext
    from nvflare.app_common.abstract.fl_model import FLModel, ParamsType

    from fedtrack.site.filters import WeightsOnly

    weights = {"fc.weight": np.ones((2, 3), dtype=np.float32), "fc.bias": np.zeros(2, dtype=np.float32)}
    model = FLModel(params_type=ParamsType.FULL, params=dict(weights, smuggled=0.9377, acc=np.float32(0.93)),
                    metrics={"accuracy": 0.9377}, current_round=3, total_rounds=5,
                    meta={"NUM_STEPS_CURRENT_ROUND": 45, "accuracy": 0.9377, "note": "0.9377"})
    shareable = result_of(model)
    shareable.set_header("leak", 0.9377)
    out = WeightsOnly().process(shareable, FLContext())
    dxo = from_shareable(out)
    assert dxo.data_kind == DataKind.WEIGHTS and sorted(dxo.data) == ["fc.bias", "fc.weight"]
    assert dxo.meta == {"NUM_STEPS_CURRENT_ROUND": 45}
    assert out.get_header("current_round") == 3 and out.get_header("leak") is None
    assert "0.9377" not in repr(out) and "0.93" not in repr(out)

    metrics = WeightsOnly().process(result_of(FLModel(metrics={"accuracy": 0.9377})), FLContext())
    assert from_shareable(metrics).data == {} and "0.9377" not in repr(metrics)


def test_the_installer_writes_the_deploy_check_and_the_sites_privacy_policy(tmp_path):
    from fedtrack.policy import install

    for name, fed in (("server", "fed_server.json"), ("site", "fed_client.json")):
        kit = tmp_path / name / "kit"
        (kit / "startup").mkdir(parents=True)
        (kit / "local").mkdir()
        (kit / "startup" / fed).write_text("{}")
        (kit / "local" / "resources.json.default").write_text(json.dumps({"format_version": 2, "components": []}))
        ws = tmp_path / name / "ws"
        install.install(str(kit), str(ws))
        resources = json.loads((ws / "local" / "resources.json").read_text())
        assert resources["app_validator"] == {"path": "fedtrack.policy.validator.ParticipantAppValidator",
                                              "args": {"is_server": name == "server"}}
        privacy = ws / "local" / "privacy.json"
        if name == "server":
            assert not privacy.exists()
        else:
            policy = json.loads(privacy.read_text())
            assert policy["default_scope"] == "site" and len(policy["scopes"]) == 1
            assert policy["scopes"][0]["task_result_filters"] == [{"path": "fedtrack.site.filters.WeightsOnly", "args": {}}]
