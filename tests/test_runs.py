"""Run folders are never overwritten without asking; flags typed beside --config always win."""

import hashlib
import json
import subprocess
import sys

import pytest

from fashionclf.cli import main, typed_flags
from fashionclf.errors import UsageError
from fashionclf.inference.checkpoint import load_checkpoint
from fashionclf.training.rundir import RunBusy, claim, is_run


def _train(tiny_data, *extra):
    return ["train", "--model", "fast-cnn", "--data", str(tiny_data), "--no-verify", "--epochs", "1",
            "--batch-size", "64", "--threads", "1", "--val-fraction", "0.1", *extra]


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_train_refuses_a_finished_run_unless_told_to_reuse_or_resume_it(tiny_data, tmp_path, capsys):
    out = tmp_path / "a"
    out.mkdir()  # an empty folder is not a run: fine
    assert main(_train(tiny_data, "--out", str(out))) == 0
    before = {name: _digest(out / name) for name in ("model.pt", "metrics.json", "config.json")}
    capsys.readouterr()
    for argv in (_train(tiny_data, "--out", str(out)),  # the same --out again
                 ["train", "--config", str(out / "config.json")],  # the run it reads, rerun without --out
                 _train(tiny_data, "--out", str(out), "--nproc", "2")):  # refused before torchrun starts
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "already holds a run" in err, err
        assert "--exist-ok" in err and f"--resume {out}" in err
    assert {name: _digest(out / name) for name in before} == before  # nothing of it was touched
    assert main(["train", "--config", str(out / "config.json"), "--exist-ok"]) == 0  # reuse on purpose
    assert _digest(out / "metrics.json") != before["metrics.json"]
    assert main(["train", "--resume", str(out), "--epochs", "2"]) == 0  # continue it
    assert json.loads((out / "config.json").read_text())["epochs"] == 2
    assert main(["train", "--resume", str(tmp_path / "nothing")]) == 2
    assert "no such run folder" in capsys.readouterr().err


def test_a_run_holds_its_folder_while_it_writes(tiny_data, tmp_path, capsys):
    out = tmp_path / "b"
    with claim(out) as held:  # another process writing there, as far as train can tell
        assert held == out and not is_run(out)
        for extra in ((), ("--exist-ok",)):
            assert main(_train(tiny_data, "--out", str(out), *extra)) == 2
            err = capsys.readouterr().err
            assert "another fashionclf process" in err and "is writing this run folder" in err
        with pytest.raises(RunBusy):
            with claim(out, exist_ok=True):
                pass
    assert main(_train(tiny_data, "--out", str(out))) == 0  # released: the run goes ahead
    with pytest.raises(UsageError, match="already holds a run"):
        with claim(out):
            pass


@pytest.mark.slow
def test_two_runs_started_at_once_on_one_folder_leave_one_run(tiny_data, tmp_path):
    out = tmp_path / "c"
    procs = [subprocess.Popen([sys.executable, "-m", "fashionclf", *_train(tiny_data, "--out", str(out),
                                                                           "--seed", str(seed))],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for seed in (1, 2)]
    results = [(p.wait(timeout=600), *p.communicate()) for p in procs]
    assert sorted(code for code, _, _ in results) == [0, 2], results
    winner = next(i for i, (code, _, _) in enumerate(results) if code == 0)
    loser_err = results[1 - winner][2].strip()
    assert len(loser_err.splitlines()) == 1 and ("already holds a run" in loser_err or "is writing" in loser_err)
    seed = json.loads((out / "config.json").read_text())["seed"]
    assert seed == (1, 2)[winner]  # one run's files only
    assert load_checkpoint(out / "model.pt").config["seed"] == seed


def test_a_flag_typed_beside_config_wins_even_at_its_default_value(tiny_data, tmp_path):
    assert {"seed", "config", "verify"} <= typed_flags(["train", "--config", "x.json", "--seed", "0", "--no-verify"],
                                                       "train")
    assert "seed" not in typed_flags(["train", "--config", "x.json"], "train")
    assert "lr" in typed_flags(["train", "--finetune-lr", "0.001"], "train")  # any spelling of a flag
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    assert main(_train(tiny_data, "--out", str(a), "--seed", "3", "--lr", "0.002")) == 0
    assert main(["train", "--config", str(a / "config.json"), "--out", str(b), "--seed", "0",
                 "--lr", "0.001"]) == 0
    config = json.loads((b / "config.json").read_text())
    assert (config["seed"], config["lr"], config["epochs"]) == (0, 0.001, 1)  # typed ones win; the rest is a's
    assert main(["train", "--config", str(a / "config.json"), "--out", str(c)]) == 0
    assert json.loads((c / "config.json").read_text())["seed"] == 3
