"""Several attributes per photo: manifests with a header, the label matrix, masked losses,
training with one head per attribute, and the checkpoint that records them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import write_tagged_shop

from fashionclf.data.attributes import UNLABELLED, Attribute, Schema
from fashionclf.data.photo_folders import read_manifest
from fashionclf.data.sources import describe, load_data
from fashionclf.errors import DataError, UsageError
from fashionclf.evaluation.attributes import attribute_losses, best_thresholds, results_of


def test_schema_encodes_single_multi_and_unlabelled_cells():
    schema = Schema.from_cells(["category", "colour", "looks"], [
        ("top", "red", "warm;upper"), ("shoe", "", "cool"), ("top", "blue", "")])
    assert schema.attributes == (Attribute("category", ("shoe", "top")), Attribute("colour", ("blue", "red")),
                                 Attribute("looks", ("cool", "upper", "warm"), multi=True))
    y = schema.encode([("top", "red", "warm;upper"), ("shoe", "", "cool"), ("top", "blue", "")])
    assert y.tolist() == [[1, 1, 0, 1, 1], [0, UNLABELLED, 1, 0, 0], [1, 0, -1, -1, -1]]
    assert schema.labelled(y, 1).tolist() == [True, False, True]
    assert schema.labelled(y, 2).tolist() == [True, True, False]
    assert schema.counts(y, 2).tolist() == [1, 1, 1]
    assert schema.outputs == 7 and schema.width == 5 and not schema.single
    assert Schema.from_dict(schema.to_dict()) == schema
    with pytest.raises(ValueError, match="category, colour, looks"):
        schema.attribute("pattern")
    one = Schema.from_cells(["label"], [("a",), ("b",)])
    assert one.single and one.encode([("b",), ("a",)]).tolist() == [1, 0]


def test_manifest_header_names_attribute_columns_and_old_manifests_still_read(tmp_path):
    m = tmp_path / "m.csv"
    m.write_text("path,category,colour,split\na.jpg,top,red,train\nb.jpg,shoe,,test\n")
    manifest = read_manifest(m)
    assert manifest.attributes == ("category", "colour")
    assert [(e.label, e.cells, e.split) for e in manifest.entries] == [
        ("top", ("top", "red"), "train"), ("shoe", ("shoe", ""), "test")]
    m.write_text("a.jpg,top,val\nb.jpg,shoe\n")  # no header: path,label[,split] by position, as always
    old = read_manifest(m)
    assert old.attributes == ("label",) and [(e.label, e.cells, e.split) for e in old.entries] == [
        ("top", (), "val"), ("shoe", (), None)]
    m.write_text("path,label\na.jpg,top,test\n")  # header of two columns over rows with a split
    assert read_manifest(m).entries[0].split == "test"
    for header, message in (("path,colour,colour", "repeated"), ("path,split,colour", "after the attribute")):
        m.write_text(f"{header}\na.jpg,x,y\n")
        with pytest.raises(DataError, match=message):
            read_manifest(m)
    m.write_text("path,category,colour\na.jpg,,\n")
    with pytest.raises(DataError, match="row 2: expected a path and at least one attribute"):
        read_manifest(m)


def test_tagged_shop_loads_as_a_label_matrix_and_data_shows_a_table_per_attribute(tmp_path, capsys):
    manifest = write_tagged_shop(tmp_path, per_category=12)
    ds = load_data(str(manifest))
    assert ds.schema.names == ["category", "colour", "looks"] and ds.classes == ["shoe", "top", "trousers"]
    assert ds.train.labels.shape[1] == ds.schema.width
    # every photo lands in one split, those without a colour too
    assert sum(len(s.labels) for s in (ds.train, ds.val, ds.test)) == 36
    info = describe(str(manifest))
    colour = info["attributes"][1]
    assert colour["name"] == "colour" and sum(colour["unlabelled"].values()) == 36 // 7
    assert sum(map(sum, colour["counts"].values())) == 36 - 36 // 7
    from fashionclf.cli import main

    assert main(["data", "--data", str(manifest)]) == 0
    out = capsys.readouterr().out
    assert "attribute looks (several values per photo)" in out and "(unlabelled)" in out


def test_data_reports_values_seen_only_in_test_and_refuses_a_multi_label_first_column(tmp_path):
    manifest = write_tagged_shop(tmp_path, per_category=12)
    lines = manifest.read_text().splitlines()
    lines[-1] = lines[-1].replace(",red,", ",green,").replace(",blue,", ",green,")  # a test row
    manifest.write_text("\n".join(lines) + "\n")
    problems = describe(str(manifest))["attributes"][1]["problems"]
    assert any("'green' is in test (1) but not in train" in p for p in problems)
    manifest.write_text("path,looks,category\n" + "\n".join(
        f"{line.split(',')[0]},{line.split(',')[3]},{line.split(',')[1]}" for line in lines[1:]) + "\n")
    with pytest.raises(DataError, match="first column after path"):
        load_data(str(manifest))
    with pytest.raises(UsageError, match="--classes"):
        load_data(str(write_tagged_shop(tmp_path / "b", per_category=12)), classes="top,shoe")


def test_masked_loss_ignores_unlabelled_cells_and_thresholds_come_from_validation():
    schema = Schema((Attribute("c", ("a", "b")), Attribute("m", ("x", "y"), multi=True)))
    logits = torch.tensor([[2.0, -1.0, 3.0, -3.0], [0.0, 0.0, 50.0, 50.0]])
    labels = torch.tensor([[0, 1, 0], [UNLABELLED, UNLABELLED, UNLABELLED]])
    c_loss, m_loss = attribute_losses(logits, labels, schema)
    # only the first photo counts: the second one's huge logits change nothing
    assert c_loss.item() == pytest.approx(torch.nn.functional.cross_entropy(logits[:1, :2], labels[:1, 0]).item())
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits[0, 2:], torch.tensor([1.0, 0.0]), reduction="sum")
    assert m_loss.item() == pytest.approx(expected.item())
    y = np.array([[1, 0], [1, 0], [0, 1], [0, 1]])
    p = np.array([[0.3, 0.1], [0.35, 0.2], [0.1, 0.9], [0.2, 0.8]])
    cut = best_thresholds(y, p)
    assert 0.2 < cut[0] <= 0.3 and ((p >= cut) == y).all()
    r = results_of(torch.tensor(np.log(p / (1 - p)), dtype=torch.float32).repeat(1, 2)[:, [0, 1, 0, 1]],
                   torch.tensor(np.c_[y.argmax(1), y]), schema, "val")
    assert r.of("m").accuracy == pytest.approx(1.0)  # mAP


@pytest.mark.slow
def test_training_on_a_tagged_shop_learns_every_head_and_records_them(tmp_path):
    from fashionclf import train
    from fashionclf.inference.checkpoint import load_checkpoint

    manifest = write_tagged_shop(tmp_path / "shop", per_category=40)
    metrics = train(data=str(manifest), model="fast-cnn", epochs=10, out=str(tmp_path / "run"), seed=0).metrics
    attrs = metrics["attributes"]
    assert list(attrs) == ["category", "colour", "looks"]
    assert metrics["test_accuracy"] == attrs["category"]["test_accuracy"]
    assert attrs["colour"]["test_accuracy"] >= 0.9  # red against blue of the same brightness: colour input
    assert attrs["looks"]["test_mAP"] >= 0.9 and set(attrs["looks"]["test"]["per_value"]) == {
        "cool", "lower", "upper", "warm"}
    assert attrs["colour"]["test"]["unlabelled"] > 0
    ckpt = load_checkpoint(tmp_path / "run" / "model.pt")
    assert ckpt.attributes.names == ["category", "colour", "looks"]
    assert len(ckpt.attributes.attributes[2].thresholds) == 4
    assert ckpt.build_model()(torch.zeros(1, 3, 28, 28)).shape == (1, 9)
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["attributes"]["looks"]["test"]["kind"] == "multi-label"


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_predict_writes_a_column_pair_per_attribute_and_json_nested(tagged_model, tmp_path, backend):
    import csv

    from fashionclf.inference.predict import TagSettings, tag_to_file

    model, shop = tagged_model
    photos = sorted((shop / "photos").glob("*.jpg"))[::12] + [shop / "tags.csv"]  # one unreadable "photo"
    out = tmp_path / "tags.csv"
    tag_to_file(out, model, [str(p) for p in photos], TagSettings(backend=backend))
    rows = list(csv.DictReader(out.open()))
    assert list(rows[0]) == ["path", "category", "category_confidence", "colour", "colour_confidence", "looks",
                             "looks_confidence", "unknown", "error"]
    good = [r for r in rows if not r["error"]]
    assert len(good) == 10 and rows[-1]["error"] and rows[-1]["category"] == ""
    right = [r["category"] == Path(r["path"]).name.split("-")[0] for r in good]  # e.g. photos/top-012.jpg
    assert sum(right) >= 8
    assert sum(bool(set(r["looks"].split(";")) & {"upper", "lower"}) for r in good) >= 7
    assert all(len(r["looks"].split(";")) == len(r["looks_confidence"].split(";")) for r in good)
    out_json = tmp_path / "tags.json"
    tag_to_file(out_json, model, [str(p) for p in photos[:3]], TagSettings(fmt="json", backend=backend))
    item = json.loads(out_json.read_text())[0]
    assert set(item["attributes"]) == {"category", "colour", "looks"}
    if backend == "onnx":  # one named output per attribute, then the unknown score
        import onnx

        from fashionclf.inference.export import cached_onnx_bytes

        graph = onnx.load_from_string(cached_onnx_bytes(model)).graph
        assert [o.name for o in graph.output] == ["attribute:category", "attribute:colour", "attribute:looks", "score"]
    assert item["attributes"]["category"]["value"] in ("shoe", "top", "trousers") and isinstance(item["attributes"]["looks"]["values"], list)


def test_recode_maps_data_onto_a_models_attributes_and_refuses_what_it_does_not_know():
    from fashionclf.data.attributes import recode

    model = Schema((Attribute("category", ("shoe", "top")), Attribute("colour", ("blue", "red")),
                    Attribute("looks", ("cool", "warm"), multi=True)))
    data = Schema((Attribute("category", ("top",)), Attribute("looks", ("warm",), multi=True)))
    y = np.array([[0, 1], [UNLABELLED, UNLABELLED]])
    assert recode(y, data, model).tolist() == [[1, UNLABELLED, 0, 1], [UNLABELLED, UNLABELLED, UNLABELLED, UNLABELLED]]
    folders = Schema.one(["shoe", "top"])  # class folders: the model's first attribute
    assert recode(np.array([1, 0]), folders, model)[:, 0].tolist() == [1, 0]
    with pytest.raises(ValueError, match="'pattern'"):
        recode(y, Schema((Attribute("category", ("top",)), Attribute("pattern", ("x",)))), model)
    with pytest.raises(ValueError, match="'green'"):
        recode(np.array([[0, 0]]), Schema((Attribute("category", ("top",)), Attribute("colour", ("green",)))), model)


@pytest.mark.slow
def test_evaluate_scores_a_model_of_several_attributes_per_attribute(tagged_model, tmp_path):
    from fashionclf.training.results import evaluate_checkpoint

    model, shop = tagged_model
    evaluation = evaluate_checkpoint(model, out=tmp_path / "eval")
    attrs = evaluation.summary["attributes"]
    assert set(attrs) == {"category", "colour", "looks"} and attrs["looks"]["kind"] == "multi-label"
    assert evaluation.summary["accuracy"] == attrs["category"]["accuracy"]
    recorded = json.loads((model.parent / "metrics.json").read_text())["attributes"]
    assert attrs["colour"]["accuracy"] == pytest.approx(recorded["colour"]["test_accuracy"])
    assert attrs["looks"]["mAP"] == pytest.approx(recorded["looks"]["test_mAP"])
    report = (tmp_path / "eval" / "report.html").read_text()
    assert "Attribute colour" in report and "Attribute looks (several values per photo)" in report
    assert (tmp_path / "eval" / "confusion_matrix_colour.png").is_file()


def test_serving_net_answers_per_head_with_each_heads_temperature():
    from fashionclf.models.contract import GREY_28, ServingNet

    class Fixed(torch.nn.Module):  # logits that do not depend on the image
        def forward(self, x):
            return torch.tensor([[2.0, 0.0, 1.0, -1.0, 3.0, -3.0]]).repeat(len(x), 1)

    net = ServingNet(Fixed(), GREY_28, 2.0, heads=[(0, 2, False, 2.0), (2, 4, False, 0.5), (4, 6, True, 1.0)]).eval()
    first, second, multi, score = net(torch.zeros(3, 28, 28, dtype=torch.uint8))
    assert torch.allclose(first[0], torch.softmax(torch.tensor([1.0, 0.0]), 0))
    assert torch.allclose(second[0], torch.softmax(torch.tensor([2.0, -2.0]), 0))
    assert torch.allclose(multi[0], torch.sigmoid(torch.tensor([3.0, -3.0])))
    assert score[0].item() == pytest.approx(2.0 * torch.logsumexp(torch.tensor([1.0, 0.0]), 0).item())


def test_balance_weights_each_class_from_its_training_count_and_attribute_weights_are_checked():
    import dataclasses

    from fashionclf.evaluation.attributes import balanced_weights
    from fashionclf.training.config import TrainConfig, add_flags, config_from_args
    from fashionclf.training.loop import make_loss

    schema = Schema((Attribute("c", ("a", "b", "z")), Attribute("m", ("x", "y"), multi=True)))
    y = np.array([[0, 1, 0], [0, 1, 1], [0, 0, 1], [1, UNLABELLED, UNLABELLED]])
    c, m = balanced_weights(schema, y)
    assert c.tolist() == pytest.approx([4 / (3 * 3), 4 / 3, 0.0])  # "z" has no training photo
    assert m.tolist() == pytest.approx([1 / 2, 1 / 2])  # x: 2 of 3 photos have it, y: 2 of 3
    assert balanced_weights(schema, y, 0.5)[0].tolist() == pytest.approx(np.sqrt(c).tolist())
    import argparse

    parser = argparse.ArgumentParser()
    add_flags(parser)
    assert config_from_args(parser.parse_args(["--balance"])).balance == "sqrt"  # the flag alone
    config = dataclasses.replace(config_from_args(parser.parse_args([])), attribute_weights="colour=2")
    with pytest.raises(UsageError, match="'colour'.*c, m"):
        make_loss(config, schema, ["a", "b", "z"], torch.from_numpy(y), torch.device("cpu"))
    with pytest.raises(UsageError, match="several attribute"):
        make_loss(config, None, ["a", "b"], torch.tensor([0, 1]), torch.device("cpu"))
    weighted = dataclasses.replace(TrainConfig(label_smoothing=0.0), attribute_weights="m=0", balance="weights")
    loss, note = make_loss(weighted, schema, ["a", "b", "z"], torch.from_numpy(y), torch.device("cpu"))
    logits = torch.randn(4, 5)
    only_c = attribute_losses(logits, torch.from_numpy(y), schema, value_weights=[torch.tensor(c).float(), None])[0]
    assert loss(logits, torch.from_numpy(y)).item() == pytest.approx(only_c.item(), rel=1e-5)  # m weighs 0
    assert note.startswith("--balance weights: c a 0.44, b 1.33, z 0.00")


@pytest.mark.slow
def test_review_files_photos_by_the_attribute_named_and_refuses_an_unknown_one(tagged_model, tmp_path, capsys):
    import csv

    from fashionclf.cli import main

    model, shop = tagged_model
    photos = [str(p) for p in sorted((shop / "photos").glob("*.jpg"))[::10]]
    review = tmp_path / "review"
    assert main(["predict", str(model), *photos, "-o", str(tmp_path / "t.csv"), "--min-confidence", "0.999",
                 "--review", str(review), "--review-attribute", "colour"]) == 0
    rows = list(csv.DictReader((review / "review.csv").open()))
    assert rows and {r["label"] for r in rows} <= {"red", "blue"}
    assert {p.name for p in review.iterdir() if p.is_dir()} <= {"red", "blue"}
    assert main(["predict", str(model), photos[0], "--review", str(review), "--review-attribute", "pattern"]) == 2
    err = capsys.readouterr().err
    assert "no attribute 'pattern'" in err and "category, colour, looks" in err and "Traceback" not in err


@pytest.mark.slow
def test_int8_export_and_dask_tagging_work_unchanged_for_a_model_of_several_attributes(tagged_model, tmp_path):
    from fashionclf.inference.classifier import load_classifier
    from fashionclf.inference.predict import TagSettings, tag_files
    from fashionclf.inference.quantize import export_int8

    model, shop = tagged_model
    result = export_int8(model, output=tmp_path / "m.int8.onnx", log=lambda _: None)
    assert result["int8_accuracy"] >= result["fp32_accuracy"] - 0.1 and result["agreement"] >= 0.9
    int8 = load_classifier(tmp_path / "m.int8.onnx")
    assert int8.schema.names == ["category", "colour", "looks"]
    photos = [str(p) for p in sorted((shop / "photos").glob("*.jpg"))[::15]]
    import io

    local, dask = io.StringIO(), io.StringIO()
    tag_files(model, photos, local, TagSettings(backend="onnx"))
    tag_files(model, photos, dask, TagSettings(dask="local:1"))
    assert dask.getvalue() == local.getvalue() and "colour_confidence" in local.getvalue()


@pytest.mark.slow
def test_init_from_a_one_attribute_model_keeps_its_body_and_starts_every_head_fresh(tmp_path, capsys):
    from helpers import save_untrained_checkpoint

    from fashionclf import train
    from fashionclf.inference.checkpoint import load_checkpoint

    one = save_untrained_checkpoint(tmp_path / "one.pt")  # fast-cnn, the ten classes, grey
    manifest = write_tagged_shop(tmp_path / "shop", per_category=16)
    train(data=str(manifest), init=str(one), epochs=1, out=str(tmp_path / "run"), seed=0)
    log = capsys.readouterr().out
    assert "new heads for category, colour, looks" in log and "adapted from 1 to 3 input channel" in log
    before, after = load_checkpoint(one), load_checkpoint(tmp_path / "run" / "model.pt")
    head = [k for k, v in after.state_dict.items() if v.dim() and v.shape[0] == after.attributes.outputs]
    assert head and all(before.state_dict[k].shape[0] == 10 for k in head)  # a new head of 3 + 2 + 4 outputs


@pytest.mark.slow
def test_python_api_answers_per_attribute(tagged_model):
    import fashionclf

    model_path, shop = tagged_model
    model = fashionclf.load(model_path)
    assert model.attributes == ["category", "colour", "looks"] and model.classes == ["shoe", "top", "trousers"]
    rows = model.predict(sorted((shop / "photos").glob("*.jpg"))[:3])
    assert all(set(r["attributes"]) == {"category", "colour", "looks"} for r in rows)
    assert rows.labels("colour")[0] in ("red", "blue") and rows.labels() == [r["label"] for r in rows]
    assert "<th>colour</th>" in rows._repr_html_()
