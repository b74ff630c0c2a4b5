"""The Python API: docs/api.md's walkthrough runs as written, on the real dataset; the API's
parts on small data; `import fashionclf` stays free of torch."""

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import catalogue_photo, synthetic_images
from PIL import Image

import fashionclf
from fashionclf.errors import UsageError

DOC = Path(__file__).parents[1] / "docs" / "api.md"


def test_import_loads_no_torch_and_the_api_is_lazy():
    code = ("import sys, fashionclf; assert 'torch' not in sys.modules; "
            "assert callable(fashionclf.train) and callable(fashionclf.load); print(fashionclf.__version__)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == fashionclf.__version__, r.stderr
    with pytest.raises(AttributeError, match="no attribute 'trian'"):
        fashionclf.trian


@pytest.mark.integration
@pytest.mark.slow
def test_the_notebook_walkthrough_runs_as_written(real_data_dir, tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    monkeypatch.setenv("FASHIONCLF_DATA", str(real_data_dir))
    monkeypatch.chdir(tmp_path)
    data = fashionclf.load_dataset(real_data_dir)
    Path("photo.jpg").write_bytes(catalogue_photo(data.test.images[1], np.random.default_rng(0)))
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    assert len(blocks) >= 5
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(DOC), "exec"), namespace)
    run, model, predictions = namespace["run"], namespace["model"], namespace["predictions"]
    assert run.folder == Path("runs/train") and run.test_accuracy > 0.9  # the fast recipe: >= the Keras reference
    assert "test 0.9" in run._repr_html_() and "<table>" in predictions._repr_html_()
    assert predictions.labels() == [data.classes[i] for i in data.test.labels[:8]] or \
        sum(a == data.classes[b] for a, b in zip(predictions.labels(), data.test.labels[:8])) >= 6
    assert "data:image/png;base64" in predictions._repr_html_()  # what the model saw
    assert namespace["evaluation"].summary["samples"] == 10000
    again = fashionclf.train(recipe="fast", epochs=1, log=None)  # a new folder, the first run kept
    assert again.folder == Path("runs/train-2") and (run.folder / "model.pt").is_file()
    assert model.predict("photo.jpg")[0]["label"]


def test_train_load_predict_and_evaluate_on_small_data(tiny_data, tmp_path):
    with pytest.raises(UsageError, match="unknown setting 'epoch'; valid: .*epochs"):
        fashionclf.train(epoch=3)
    run = fashionclf.train(model="fast-cnn", data=tiny_data, verify=False, epochs=1, threads=1,
                           out=tmp_path / "run", log=None)
    assert run.metrics["total_epochs"] == 1 and len(run.history) == 1 and run.config["model"] == "fast-cnn"
    with pytest.raises(UsageError, match="already holds a run"):
        fashionclf.train(model="fast-cnn", data=tiny_data, verify=False, epochs=1, out=tmp_path / "run", log=None)
    model = fashionclf.load(run.folder)
    images = synthetic_images(np.arange(4) % 10)
    by_array = model.predict(images)
    by_image = model.predict([Image.fromarray(images[0]), b"not a path", tmp_path / "missing.png"])
    assert len(by_array) == 4 and by_array[0]["label"] == by_image[0]["label"]
    assert by_array[0]["confidence"] == pytest.approx(by_image[0]["confidence"])
    assert [bool(r["error"]) for r in by_image] == [False, True, True]  # each bad input its own error
    evaluation = model.evaluate(data=str(tiny_data), verify=False)
    assert evaluation.summary["samples"] == 100 and 0 <= evaluation.accuracy <= 1
    assert (run.folder / "eval-test" / "report.html").is_file()
    import matplotlib

    matplotlib.use("Agg")
    ax = run.plot_confusion_matrix()
    assert ax.get_title().startswith("Confusion matrix (test")
    assert run.plot_curves().get_lines()
