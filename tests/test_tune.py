"""fashionclf tune: Optuna studies shared by worker processes, on SQLite and journal storage."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fashionclf.cli import main
from fashionclf.errors import UsageError

optuna = pytest.importorskip("optuna", reason="fashionclf tune needs the 'scale' extra (make test installs it)")

SPACE = {"lr": {"log": [1e-3, 1e-2]}, "epochs": {"int": [1, 3]}, "batch_size": {"choice": [32, 64]}}


def test_search_spaces_are_checked_and_a_file_changes_them(tmp_path):
    from fashionclf.scale.tune import SPACES, load_space

    assert load_space("fast") == SPACES["fast"] and load_space(None) == SPACES["model"]
    path = tmp_path / "space.toml"
    path.write_text('epochs = {int = [2, 4]}\nlabel_smoothing = {choice = [0.0, 0.1]}\n')
    space = load_space("fast", path)
    assert space["epochs"] == {"int": [2, 4]} and space["label_smoothing"] == {"choice": [0.0, 0.1]}
    (tmp_path / "drop.json").write_text('{"weight_decay": null}')
    assert "weight_decay" not in load_space("fast", tmp_path / "drop.json")
    for text, message in (('{"colour": {"choice": [1]}}', "'colour' is not a training setting"),
                          ('{"lr": {"log": [0, 1]}}', "above 0"), ('{"lr": {"gauss": [1, 2]}}', "expected one of"),
                          ('{"epochs": {"int": [5, 2]}}', "low < high"), ("{oops", "not valid JSON")):
        (tmp_path / "bad.json").write_text(text)
        with pytest.raises(UsageError, match=message):
            load_space("fast", tmp_path / "bad.json")
    with pytest.raises(UsageError, match="cannot read it"):
        load_space("fast", tmp_path / "missing.toml")


def test_a_missing_space_file_is_one_line_and_the_python_floor_has_tomllib(tmp_path):
    import tomllib

    r = subprocess.run([sys.executable, "-m", "fashionclf", "tune", "--model", "fast-cnn", "--space",
                        str(tmp_path / "x.toml"), "--out", str(tmp_path / "t")], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "x.toml: cannot read it" in r.stderr, r.stderr
    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    assert project["requires-python"] == ">=3.11"  # tune --space x.toml reads TOML with the standard tomllib


def _worker(tiny_data, out, storage, n_trials, space, study="s", worker=True):
    return subprocess.Popen(
        [sys.executable, "-m", "fashionclf", "tune", *(["--worker"] if worker else []), "--model", "fast-cnn",
         "--data", str(tiny_data),
         "--no-verify", "--study", study, "--storage", storage, "--n-trials", str(n_trials), "--out", str(out),
         "--space", str(space), "--threads", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_two_workers_share_one_study_and_the_winner_is_tested_once(kind, tiny_data, tmp_path, capsys):
    out, space = tmp_path / "study", tmp_path / "space.json"
    out.mkdir()
    space.write_text(json.dumps(SPACE))
    storage = f"sqlite:///{out / 'shared.db'}" if kind == "sqlite" else f"journal:{out / 'journal.log'}"
    workers = [_worker(tiny_data, out, storage, 6, space) for _ in range(2)]
    logs = [w.communicate(timeout=600)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], logs
    study = optuna.load_study(study_name="s", storage=storage if kind == "sqlite" else
                              optuna.storages.JournalStorage(
                                  optuna.storages.journal.JournalFileBackend(str(out / "journal.log"))))
    done = [t for t in study.trials if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]
    numbers = [t.number for t in study.trials]
    assert len(done) >= 6 and len(numbers) == len(set(numbers))  # each number once; both workers may finish one more
    assert {t.user_attrs["pid"] for t in study.trials} == {w.pid for w in workers}  # both took part
    for t in done:  # every trial reported per epoch, into its own folder, and never touched the test split
        assert t.intermediate_values and (out / f"trial-{t.number:04d}" / "last.pt").is_file()
        assert not (out / f"trial-{t.number:04d}" / "metrics.json").exists()

    # The summary: the winner alone is evaluated on test; best.json trains again through --config
    assert main(["tune", "--model", "fast-cnn", "--data", str(tiny_data), "--no-verify", "--study", "s",
                 "--storage", storage, "--n-trials", "6", "--out", str(out), "--space", str(space)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    best = out / f"trial-{summary['best_trial']:04d}"
    assert json.loads((best / "metrics.json").read_text())["test_accuracy"] == summary["test_accuracy"]
    assert sum((d / "metrics.json").exists() for d in out.glob("trial-*")) == 1
    rows = list(csv.DictReader(open(out / "trials.csv")))
    assert len(rows) == len(study.trials) and {"lr", "epochs", "batch_size", "val_accuracy"} <= set(rows[0])
    assert (out / "history.png").is_file() and "Best: trial" in (out / "report.html").read_text()
    best_config = json.loads((out / "best.json").read_text())
    assert best_config["lr"] == summary["best_params"]["lr"]
    assert main(["train", "--config", str(out / "best.json"), "--out", str(tmp_path / "again"), "--no-verify"]) == 0
    again = json.loads((tmp_path / "again" / "config.json").read_text())
    assert (again["lr"], again["epochs"], again["batch_size"]) == (best_config["lr"], best_config["epochs"],
                                                                   best_config["batch_size"])


@pytest.mark.slow
def test_a_killed_worker_loses_only_its_running_trial(tiny_data, tmp_path):
    out, space = tmp_path / "study", tmp_path / "space.json"
    out.mkdir()
    space.write_text(json.dumps({**SPACE, "epochs": {"int": [40, 41]}}))  # long enough to be killed mid-trial
    storage = f"journal:{out / 'journal.log'}"
    victim = _worker(tiny_data, out, storage, 3, space)
    for _ in range(600):  # until its first trial has trained an epoch
        if list(out.glob("trial-*/last.pt")):
            break
        time.sleep(0.1)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    space.write_text(json.dumps(SPACE))
    survivor = _worker(tiny_data, out, storage, 3, space)
    log = survivor.communicate(timeout=600)[0]
    assert survivor.returncode == 0, log
    study = optuna.load_study(study_name="s", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(out / "journal.log"))))
    states = [t.state for t in study.trials]
    assert states[0] == optuna.trial.TrialState.FAIL  # the killed one, marked failed by the next worker
    assert sum(s in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED) for s in states) == 3


@pytest.fixture
def postgres():
    """A real PostgreSQL server from Debian's package on a free port and a temporary folder,
    stopped afterwards; yields its URL."""
    import glob
    import pwd
    import shutil
    import tempfile

    from helpers import free_port

    initdb = shutil.which("initdb") or next(iter(sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))), None)
    if initdb is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is required under CI (apt-get install postgresql; make test does it)")
        pytest.skip("PostgreSQL is not installed (make test installs Debian's postgresql)")
    pytest.importorskip("psycopg", reason="the 'scale' extra's psycopg is not installed")
    bindir = os.path.dirname(initdb)
    folder = tempfile.mkdtemp(prefix="fashionclf-pg-")
    run_as = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root: as the package's postgres user
        user = pwd.getpwnam("postgres")
        os.chmod(folder, 0o755)
        os.chown(folder, user.pw_uid, user.pw_gid)
        run_as = ["runuser", "-u", "postgres", "--"]
    data, port = os.path.join(folder, "data"), free_port()
    subprocess.run([*run_as, initdb, "-D", data, "-U", "fashionclf", "--auth", "trust"], check=True,
                   capture_output=True)
    subprocess.run([*run_as, os.path.join(bindir, "pg_ctl"), "-D", data, "-w", "-l", os.path.join(folder, "log"),
                    "-o", f"-p {port} -h 127.0.0.1 -k {folder}", "start"], check=True, capture_output=True)
    try:
        yield f"postgresql://fashionclf@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*run_as, os.path.join(bindir, "pg_ctl"), "-D", data, "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.slow
def test_two_workers_share_a_study_on_a_real_postgresql_server(postgres, tiny_data, tmp_path):
    out, space = tmp_path / "study", tmp_path / "space.json"
    out.mkdir()
    space.write_text(json.dumps(SPACE))
    workers = [_worker(tiny_data, out, postgres, 4, space, study="pg") for _ in range(2)]
    logs = [w.communicate(timeout=600)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], logs
    from fashionclf.scale.tune import open_storage

    study = optuna.load_study(study_name="pg", storage=open_storage(postgres, out))
    done = [t for t in study.trials if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]
    numbers = [t.number for t in study.trials]
    assert len(done) >= 4 and len(numbers) == len(set(numbers))
    assert {t.user_attrs["pid"] for t in study.trials} == {w.pid for w in workers}


@pytest.mark.slow
def test_workers_with_their_own_out_folders_all_end_well_and_name_the_winners_run(tiny_data, tmp_path, capsys):
    """As on two machines: each `fashionclf tune` has its own --out, the study is shared. Every
    one ends with exit 0 and its summary names the winner and where its run lives, evaluating it
    when that folder can be read from here (else saying how)."""
    space = tmp_path / "space.json"
    space.write_text(json.dumps(SPACE))
    storage = f"journal:{tmp_path / 'journal.log'}"
    outs = [tmp_path / "tune1", tmp_path / "tune2"]
    workers = [_worker(tiny_data, out, storage, 4, space, worker=False) for out in outs]
    logs = [w.communicate(timeout=600)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], logs
    summaries = [json.loads((out / "summary.json").read_text()) for out in outs]
    for summary, log in zip(summaries, logs):
        best = Path(summary["best_run"])
        assert best.parent in outs and best.name == f"trial-{summary['best_trial']:04d}"
        metrics = json.loads((best / "metrics.json").read_text())
        assert summary["test_accuracy"] == metrics["test_accuracy"] and f"its run in {summary['best_host']}:" in log
    assert sum((d / "metrics.json").exists() for out in outs for d in out.glob("trial-*")) <= 2

    # The winner's folder out of reach (another machine's disk): the summary says so and how to evaluate it
    winner = Path(summaries[0]["best_run"])
    (winner / "metrics.json").unlink()
    hidden = winner.rename(tmp_path / "elsewhere")
    args = ["tune", "--evaluate-best", "--study", "s", "--storage", storage]
    capsys.readouterr()
    assert main([*args, "--out", str(tmp_path / "summary1")]) == 0
    out = capsys.readouterr().out
    assert "test not evaluated" in out and "cannot be read from here" in out and "--evaluate-best" in out
    assert json.loads((tmp_path / "summary1" / "summary.json").read_text())["test_accuracy"] is None
    assert json.loads((tmp_path / "summary1" / "best.json").read_text())["lr"] == summaries[0]["best_params"]["lr"]
    hidden.rename(winner)  # on the machine that holds it: evaluated on test, once
    assert main([*args, "--out", str(tmp_path / "summary2")]) == 0
    summary = json.loads((tmp_path / "summary2" / "summary.json").read_text())
    assert summary["test_accuracy"] == json.loads((winner / "metrics.json").read_text())["test_accuracy"]


@pytest.mark.slow
def test_jobs_start_workers_on_this_machine_from_the_same_settings(tiny_data, tmp_path):
    space = tmp_path / "space.json"
    space.write_text(json.dumps(SPACE))
    out = tmp_path / "study"
    r = subprocess.run([sys.executable, "-m", "fashionclf", "tune", "--model", "fast-cnn", "--data", str(tiny_data),
                        "--no-verify", "--n-trials", "4", "--jobs", "2", "--out", str(out), "--space", str(space),
                        "--seed", "3"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "2 worker(s) here with 1 thread(s) each" in r.stdout
    study = optuna.load_study(study_name="fashionclf", storage=f"sqlite:///{out / 'study.db'}")
    assert len({t.user_attrs["pid"] for t in study.trials}) == 2  # both processes ran trials
    for t in study.trials:  # every trial got the settings given here, whichever process ran it
        assert (t.user_attrs["config"]["seed"], t.user_attrs["config"]["verify"]) == (3, False)
        assert t.user_attrs["config"]["data"] == [str(tiny_data)]
