import pytest
import yaml

from pipeline.params import ParamsError, load_params, load_section
from tests.conftest import ROOT


def test_real_params_load_and_are_frozen():
    params = load_params(ROOT / "params.yaml")
    assert params["base"].classes == ("normal", "precancer", "cancer")
    with pytest.raises(AttributeError):
        params["split"].val = 0.5


def write(tmp_path, mutate):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    mutate(raw)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_unknown_key_is_named(tmp_path):
    path = write(tmp_path, lambda p: p["dedup"].update(max_distnce=3))
    with pytest.raises(ParamsError, match=r"unknown key dedup\.max_distnce"):
        load_section("dedup", path)


def test_missing_key_is_named(tmp_path):
    path = write(tmp_path, lambda p: p["split"].pop("test"))
    with pytest.raises(ParamsError, match=r"missing key split\.test"):
        load_section("split", path)


def test_wrong_type_is_named(tmp_path):
    path = write(tmp_path, lambda p: p["validate"].update(min_width="big"))
    with pytest.raises(ParamsError, match=r"validate\.min_width: expected int"):
        load_section("validate", path)


def test_unknown_section_is_named(tmp_path):
    path = write(tmp_path, lambda p: p.update(trian={}))
    with pytest.raises(ParamsError, match="unknown params section 'trian'"):
        load_params(path)
