"""The shipped model's recipe (image_ar/configs/shapes_t2i_recipe.json) expands to exactly the
configs that produced the shipped weights, the trainers and the export take it, and bad input is
refused by name."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from mmaccel.image_ar import export_t2i
from mmaccel.image_ar.recipe import expand, find_stage, read_recipe, tokenizer_config
from mmaccel.image_ar.t2i_model import ShapesT2IModel
from mmaccel.image_ar.train_t2i import CKPT_NAME, CONFIG_KEYS, config_from_dict
from mmaccel.image_ar.train_vq import config_from_dict as vq_config_from_dict

ROOT = Path(__file__).parents[1]
RECIPE = ROOT / "image_ar" / "configs" / "shapes_t2i_recipe.json"
WEIGHTS = ROOT / "image_ar" / "weights"

# sha256 of json.dumps(config, sort_keys=True) of each config file of the shipped chain as it was
# at commit 16d956f, before the files became the recipe (git show 16d956f:image_ar/configs/NAME.json)
STAGE_DIGESTS = {
    "t2i_tiny_stage1": "720014dccb339a5856953c17e1b86f4ea940ee5272a878323966e3eca31b5798",
    "t2i_tiny_stage2": "c0a1aa369c935c7c18a72841b36b757f15536eab926cdca17da33e7aed859d02",
    "t2i_tiny_stage3": "2201e6e0c06024806db8cda5caef6dcc4ea1c0be5fa0b0247525a0367b5f385f",
    "t2i_tiny_stage4": "dfb6cb0cd284679c52054751a69a9cbb1a1a21f23f584dd1b781a19b491f8713",
    "t2i_tiny_stage5": "1b4810ad7b08c208eebfd8ecfc88b1269a0ddb6d210f0a493d52ee02c6349b1d",
    "t2i_tiny_stage6": "d3a901794cc32722a9e84b795a20b34fe47ee435f87f23ecd08c45f45eefc9fc",
    "t2i_tiny_stage7": "1fe9273b7245f06b4a482322f6633f4cab785d3d2164bef735a5202f285538b7",
    "t2i_tiny_stage8_gate": "2d48e094b2ea8a31d08d63a348eeed5e7bbaa25ab14d973df853e61366b6529e",
    "t2i_tiny_stage9": "917a48dc85f5c6bebfb21d512e17451409e2007748b4e68416204cc29b079ed8",
    "t2i_tiny_stage10_lookahead": "36837f1b7e60654beb9107908c1e0e5c6acb18a9ffd22396ba17ddc6c2f542f0",
    "t2i_tiny_stage11": "0c41639aeebfb74cce283da71a1e3645fb9287a2ede41428c6615f40dc13a1fe",
    "t2i_tiny_stage12": "ac77ae4fcd5f2d17032042005eed4e48c16eb712e8fa8082bde566fc6147abe3",
    "t2i_tiny_stage13": "caf793204affea00eb6f831d400a9bda7e8c20565e53727ea46c6a44b5b99c3e",
    "t2i_tiny_stage14": "1ab3ba20c3c24bd219a6224c0ea58ca303f8ebe4573f2bb4cb5ae2d79c7ed3d0",
    "t2i_tiny_stage15": "fde3fb14865641dd30e97cb640653bcd916b45d68a713bd827ea91312388c4a1",
    "t2i_tiny_stage16": "67c23c522d23a4ae5cdca8199cf57e13299cfa61dfb983bc41834d905537b982",
    "t2i_tiny_stage17": "51e9b96720b5cae4b31058b480412ab9de4124f6e59d2f854016396043886f8d",
    "t2i_tiny_stage18": "782b4b94dcced9aa86fd55a996b6a156bfd4bc3c51b19ff063bc7135d7d85d8b",
}
VQ_DIGEST = ("vq_tiny", "82fc552a6ce38ff696e4b34f525454a0e1f1459506ce62c6d34d22822debff7f")


def digest(config: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


def as_json(x: Any) -> Any:
    """Tuples -> lists, as a config comes back from a json file."""
    return json.loads(json.dumps(x))


@pytest.fixture
def recipe() -> dict[str, Any]:
    return read_recipe(RECIPE)


def test_stages_expand_to_the_recorded_configs(recipe):
    stages = expand(recipe, CONFIG_KEYS)
    assert [s.name for s in stages] == list(STAGE_DIGESTS)
    assert [s.number for s in stages] == list(range(1, 19))
    assert {s.name: digest(s.config) for s in stages} == STAGE_DIGESTS


def test_tokenizer_is_the_config_of_the_shipped_vq(recipe):
    config = tokenizer_config(recipe)
    assert (recipe["tokenizer"]["name"], digest(config)) == VQ_DIGEST
    meta = json.loads((WEIGHTS / "vq_tiny.json").read_text())
    vq_cfg, train_cfg = vq_config_from_dict(config)
    assert as_json(dataclasses.asdict(vq_cfg)) == meta["vq_config"]
    assert as_json(dataclasses.asdict(train_cfg)) == meta["train_config"]
    assert f"configs/{VQ_DIGEST[0]}.json" in meta["command"]


def test_last_stage_is_what_the_shipped_weights_record(recipe):
    stage = expand(recipe, CONFIG_KEYS)[-1]
    meta = json.loads((WEIGHTS / "shapes_t2i.json").read_text())
    # the weights record the file the stage was: --config image_ar/configs/<name>.json
    for command in (meta["command"], meta["export_command"]):
        assert f"--config image_ar/configs/{stage.name}.json" in command
    model_cfg, train_cfg = config_from_dict(stage.config)
    assert as_json(model_cfg.to_dict()) == meta["config"]
    train = as_json(dataclasses.asdict(train_cfg))
    # init_layers was added to TrainConfig after stage 18 ran; its default (None) is what it used
    assert set(train) - set(meta["train"]) == {"init_layers"} and train["init_layers"] is None
    assert {k: train[k] for k in meta["train"]} == meta["train"]


def test_the_trainer_takes_every_stage(recipe):
    for stage in expand(recipe, CONFIG_KEYS):
        model_cfg, train_cfg = config_from_dict(stage.config)
        assert model_cfg.gpt.n_layer == 6 and train_cfg.steps > 0, stage.name
        if stage.number > 1:  # every later stage starts from an earlier one's weights
            assert train_cfg.init_from is not None, stage.name


def test_a_changed_override_changes_the_digests_from_there_on(recipe):
    changed = copy.deepcopy(recipe)
    changed["stages"][11]["train"]["reveal_loss_weight"] = 5.0  # stage 12: 6, kept up to stage 18
    digests = {s.name: digest(s.config) for s in expand(changed, CONFIG_KEYS)}
    names = list(STAGE_DIGESTS)
    assert all(digests[n] == STAGE_DIGESTS[n] for n in names[:11])
    assert all(digests[n] != STAGE_DIGESTS[n] for n in names[11:])
    changed["stages"][11]["train"]["reveal_loss_weight"] = 6  # an int where the file had 6.0
    assert digest(expand(changed, CONFIG_KEYS)[11].config) != STAGE_DIGESTS["t2i_tiny_stage12"]
    del changed["stages"][8]["unset"]  # stage 9 keeps gate_init: no longer the file that trained
    assert digest(expand(changed, CONFIG_KEYS)[8].config) != STAGE_DIGESTS["t2i_tiny_stage9"]


def test_unknown_stage_is_refused_listing_the_stages(recipe):
    stages = expand(recipe, CONFIG_KEYS)
    assert find_stage(stages, 18) is find_stage(stages, "18") is find_stage(stages, "t2i_tiny_stage18")
    assert find_stage(stages, "t2i_tiny_stage8_gate").number == 8
    for bad in (19, "t2i_tiny_stage10_cell"):  # stage 19 and the stage-10 variants did not ship
        with pytest.raises(
            ValueError, match=rf"no stage '?{bad}'?.*1 \(t2i_tiny_stage1\).*18 \(t2i_tiny_stage18\)"
        ):
            find_stage(stages, bad)


@pytest.mark.parametrize(
    ("section", "key"), [("train", "cell_only_prb"), ("model", "n_layers")]
)  # fmt: skip
def test_override_of_an_unknown_key_is_refused(recipe, section, key):
    bad = copy.deepcopy(recipe)
    bad["stages"][11].setdefault(section, {})[key] = 1
    with pytest.raises(ValueError, match=rf"stage 12 .*unknown {section} key.*{key}"):
        expand(bad, CONFIG_KEYS)
    with pytest.raises(ValueError, match=key):
        config_from_dict({section: {key: 1}})


def test_malformed_stages_are_refused(recipe):
    cases = [
        (lambda st: st[11].update(trian={"seed": 1}), "unknown field.*trian"),
        (lambda st: st[11].update(unset=["train.gate_init"]), "unset 'train.gate_init'"),
        (
            lambda st: st[11]["train"].update(batch_size=32),
            "sets train.batch_size to 32, the value it already has",
        ),
        (lambda st: st[11].update(stage=11), "increasing numbers"),
        (lambda st: st[11].update(name="t2i_tiny_stage11"), "distinct names"),
    ]
    for mutate, message in cases:
        bad = copy.deepcopy(recipe)
        mutate(bad["stages"])
        with pytest.raises(ValueError, match=message):
            expand(bad, CONFIG_KEYS)


def test_export_names_the_recipe_stage_in_the_recorded_command(tmp_path, capsys):
    """export_t2i --recipe R --stage 18: the stage's model takes the checkpoint, and the weights'
    json records the training command in the same terms."""
    model_cfg, train_cfg = config_from_dict(find_stage(expand(read_recipe(RECIPE), CONFIG_KEYS), 18).config)
    torch.manual_seed(0)
    ckpt = {"model": ShapesT2IModel(model_cfg).state_dict(), "step": train_cfg.steps, "elapsed": 1.0,
            "summary": {"heldout_loss": 2.0}, "configs": {"train": as_json(dataclasses.asdict(train_cfg))}}  # fmt: skip
    torch.save(ckpt, tmp_path / CKPT_NAME)
    target = tmp_path / "w.safetensors"
    args = ["--recipe", str(RECIPE), "--stage", "18", "--out-dir", str(tmp_path), "--target", str(target)]
    export_t2i.main([*args, "--default-guidance", "2.0", "--default-temperature", "0.35"])
    meta = json.loads(target.with_suffix(".json").read_text())
    assert meta["command"] == (
        f"OMP_WAIT_POLICY=PASSIVE python -m mmaccel.image_ar.train_t2i --recipe {RECIPE} --stage 18 --out-dir {tmp_path}"
    )
    assert meta["finished"] and meta["config"] == as_json(model_cfg.to_dict())
    for bad in ([*args, "--config", str(RECIPE)], args[4:], [*args[:2], "--stage", "99", *args[4:]]):
        with pytest.raises(SystemExit):
            export_t2i.main(bad)
    assert "no stage '99'" in capsys.readouterr().err
