"""The ``pixelrefine demo`` job: embedded data -> benchmark job (host alone and refined) -> deployed-mask table."""

import pytest

from anomalib_pixelrefine.demo import build_demo_model, format_table, run_demo

DEPLOYED = ("image_auroc", "pixel_auroc", "oracle_best_dice", "mean_image_dice", "empty_mask_rate", "good_fp_area")


def _tiny_demo(tmp_path, model: str, category: str, post_processor: str | None = None) -> dict[str, dict[str, float]]:
    """``run_demo`` on one category at 32 px, one epoch, random weights (fast)."""
    return run_demo(
        model=model,
        post_processor=post_processor,
        root=str(tmp_path / "data"),
        results_dir=str(tmp_path / "results"),
        categories=[category],
        image_size=32,
        max_epochs=1,
        pre_trained=False,
        n_train=8,
        n_test_good=2,
    )


def test_demo_compares_host_and_refiner_at_the_deployed_threshold(tmp_path, capsys):
    results = _tiny_demo(tmp_path, "Padim", "gravel", post_processor="f2pad")
    assert set(results) == {"gravel/default", "gravel/f2pad", "mean/default", "mean/f2pad"}
    for row in results.values():
        for key in DEPLOYED:
            assert 0.0 <= row[key] <= 1.0, key
        assert row["s_per_image"] > 0
    printed = capsys.readouterr().out
    # The table printed for the user holds the same numbers, and the mask grids are named.
    assert "| gravel/f2pad |" in printed
    assert f"{results['gravel/f2pad']['mean_image_dice']:.3f}" in printed
    assert "qualitative/gravel-Padim-f2pad-s0.png" in printed
    assert (tmp_path / "results" / "qualitative" / "gravel-Padim-f2pad-s0.png").is_file()
    # The chosen operating point (default budget 5 %) is printed; the refiner's deployed masks are that point.
    assert "Chosen operating point: false-alarm budget 5% of the" in printed
    refined = results["gravel/f2pad"]
    assert refined["op_dice"] == pytest.approx(refined["mean_image_dice"], abs=1e-6)
    assert 0.0 <= refined["good_flagged"] <= 1.0


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
    row = results["brick/default"]
    assert 0.0 <= row["pixel_auroc"] <= 1.0
    assert 0.0 <= row["oracle_best_dice"] <= 1.0
