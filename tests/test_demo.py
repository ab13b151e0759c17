"""The ``pixelrefine demo`` job: embedded data -> anomalib Engine -> metrics table."""

import pytest

from anomalib_pixelrefine.demo import build_demo_model, format_table, run_demo


def _tiny_demo(tmp_path, model: str, category: str) -> dict[str, dict[str, float]]:
    """``run_demo`` on one category at 32 px, one epoch."""
    return run_demo(
        model=model,
        root=str(tmp_path / "data"),
        results_dir=str(tmp_path / "results"),
        categories=[category],
        image_size=32,
        max_epochs=1,
    )


def test_demo_trains_and_reports_image_pixel_and_dice_metrics(tmp_path, capsys):
    results = _tiny_demo(tmp_path, "Padim", "gravel")
    row = results["gravel"]
    for key in ("image_AUROC", "pixel_AUROC", "pixel_AUPRO", "pixel_Dice", "pixel_IoU", "pixel_BestDice", "pixel_SPRO"):
        assert key in row, sorted(row)
        assert 0.0 <= row[key] <= 1.0
    assert row["seconds"] > 0
    # The table printed for the user holds the same numbers.
    printed = capsys.readouterr().out
    assert "| gravel |" in printed
    assert f"{row['pixel_Dice']:.3f}" in printed
    assert results["mean"]["pixel_Dice"] == pytest.approx(row["pixel_Dice"])


def test_unknown_demo_model_is_named_in_the_error():
    with pytest.raises(ValueError, match="Unknown demo model 'NoSuchModel'"):
        build_demo_model("NoSuchModel", image_size=32)


def test_format_table_lists_rows_and_columns():
    table = format_table({"a": {"x": 0.5, "y": 1.0}, "b": {"x": 0.25}}, title="t")
    assert "| category | x | y |" in table
    assert "| b | 0.250 |  |" in table


@pytest.mark.parametrize("model", ["Pae", "Pni", "FeatureEnsemble"])
def test_demo_runs_our_models(tmp_path, model):
    """``pixelrefine demo --model <ours>``: the demo settings train and test each of our models offline."""
    results = _tiny_demo(tmp_path, model, "brick")
    row = results["brick"]
    assert 0.0 <= row["pixel_AUROC"] <= 1.0
    assert 0.0 <= row["pixel_BestDice"] <= 1.0
