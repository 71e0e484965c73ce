"""`dpmesh synth`, `dpmesh train` and `dpmesh eval` from the command line, on a few synthetic images."""

from __future__ import annotations

import json

import yaml

from dpmesh_core.cli import main


def _events(capsys) -> list[dict]:
    return [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]


def test_synth_train_eval(tmp_path, capsys):
    data = tmp_path / "synth"
    assert main(["synth", str(data), "--n", "4", "--size", "128", "--json"]) == 0
    ev = _events(capsys)
    assert [e["frame"] for e in ev if e["event"] == "frame"] == [0, 1, 2, 3]
    ann = data / "annotations.jsonl"
    assert ann.is_file() and len(ann.read_text().splitlines()) == 4

    cfg = yaml.safe_load(open("dpmesh_core/data/configs/tiny_synthetic.yaml"))
    cfg.update(output_dir=str(tmp_path / "run"), max_steps=2, batch_size=2, log_every=1, eval_every=2,
               checkpoint_every=2)
    cfg["data"]["train"] = [{"kind": "dpmesh", "path": str(ann), "ratio": 1.0}]
    cfg["data"]["val"] = [{"kind": "dpmesh", "path": str(ann)}]
    cfg["data"]["val_max_samples"] = 2
    cfg["schedule"].update(warmup_steps=0, decay_steps=[])
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    assert main(["train", str(cfg_path), "--json"]) == 0
    ev = _events(capsys)
    steps = [e for e in ev if e["event"] == "step"]
    assert [e["step"] for e in steps][-1] == 2 and all(e["loss"] == e["loss"] for e in steps)  # finite
    assert any(e["event"] == "checkpoint" for e in ev) and ev[-1]["event"] == "done"

    assert main(["eval", "--model", str(tmp_path / "run"), "--data", str(ann), "--json"]) == 0
    res = _events(capsys)[-1]
    assert res["event"] == "eval"
    text = json.dumps(res)
    assert "mpjpe" in text.lower()


def test_train_config_with_unknown_key_names_it(tmp_path, capsys):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("output_dir: x\noptim: {lrr: 0.1}\n")
    assert main(["train", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "lrr" in err and "bad.yaml" in err
