from clipvg.curriculum.manifest import StageManifests, stage_key


def test_a_stage_is_finished_only_with_the_same_key(tmp_path):
    m = StageManifests(str(tmp_path), {})
    key = stage_key("scores:template", {"bins": 1000}, {"measurers": "abc"})
    assert m.finished("scores:template", key) is None
    m.write("scores:template", key, {"bins": 1000}, {"measurers": "abc"}, {"rows": 5}, 1.0)
    assert m.finished("scores:template", key)["outputs"] == {"rows": 5}
    assert (tmp_path / "stages" / "scores-template.json").is_file()
    assert m.finished("scores:template", stage_key("scores:template", {"bins": 100}, {"measurers": "abc"})) is None
    assert m.finished("scores:template", stage_key("scores:template", {"bins": 1000}, {"measurers": "abd"})) is None
