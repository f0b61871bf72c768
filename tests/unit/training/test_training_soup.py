"""Model soups (issue 10): the weight mean, the greedy choice on PublicTest, the CLI end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorflow")

from click.testing import CliRunner

from tests.unit.training.test_training_fer import random_fer_csv
from training.__main__ import cli
from training.soup import average, greedy


def test_average_is_the_elementwise_mean_and_refuses_another_network() -> None:
    a = [np.array([[1.0, 2.0]], np.float32), np.array([3.0], np.float32)]
    b = [np.array([[3.0, 6.0]], np.float32), np.array([5.0], np.float32)]
    mean = average([a, b])
    np.testing.assert_array_equal(mean[0], [[2.0, 4.0]])
    np.testing.assert_array_equal(mean[1], [4.0])
    assert mean[0].dtype == np.float32
    with pytest.raises(ValueError, match="model 1 is another network"):
        average([a, [a[0], np.zeros(2, np.float32)]])
    with pytest.raises(ValueError, match="at least one"):
        average([])


def test_greedy_adds_an_ingredient_only_where_the_score_does_not_drop() -> None:
    soups = {(1, 2): 0.72, (1, 2, 0): 0.71, (1, 2, 3): 0.72}
    tried: list[tuple[int, ...]] = []

    def score(chosen: list[int]) -> float:
        tried.append(tuple(chosen))
        return soups[tuple(chosen)]

    chosen, best = greedy([0.5, 0.7, 0.6, 0.4], score)
    assert tried == [(1, 2), (1, 2, 0), (1, 2, 3)]  # best first; 0 lowered the score, 3 tied (kept)
    assert chosen == [1, 2, 3] and best == 0.72
    assert greedy([0.3], score) == ([0], 0.3)  # one ingredient: nothing to try


@pytest.mark.slow
def test_soup_cli_writes_a_model_and_its_figures(tmp_path: Path) -> None:
    import keras

    from training.models import emonet
    from training.pipelines import load_source
    from training.train import model_pixels, recalibrate_bn

    keras.mixed_precision.set_global_policy("float32")
    data = random_fer_csv(tmp_path / "fer2013.csv")
    a, b, other = tmp_path / "a.keras", tmp_path / "b.keras", tmp_path / "eight.keras"
    # A finished run's batch-norm statistics are recalibrated on the training images, as the soup's are.
    model_a = emonet(7, width=4)
    recalibrate_bn(model_a, model_pixels(load_source("fer", data)["train"], 48, "grey"))
    model_a.save(a)
    emonet(7, width=4).save(b)
    emonet(8, width=4).save(other)
    runner = CliRunner()

    out = tmp_path / "soup" / "soup.keras"
    result = runner.invoke(cli, ["soup", str(a), str(b), "--source", "fer", "--data", str(data), "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.with_suffix(".json").read_text())
    assert [r["model"] for r in report["ingredients"]] == [str(a), str(b)]
    assert set(report["selected"]) <= {str(a), str(b)} and report["selected"]
    # the greedy and the uniform soup (a and b) are both scored; the higher on PublicTest is saved
    greedy_val, uniform_val = report["greedy_soup"]["PublicTest"], report["uniform_soup"]["PublicTest"]
    assert report["soup_PublicTest"] == max(greedy_val, uniform_val)
    assert report["kept"] == ("greedy" if greedy_val >= uniform_val else "uniform")
    want_kept = report["greedy"] if report["kept"] == "greedy" else [str(a), str(b)]
    assert report["selected"] == want_kept
    soup = keras.models.load_model(out)
    assert soup.name == "emonet" and soup.output_shape[-1] == 7

    # The same model twice: the soup has that model's weights (its batch-norm statistics are recalibrated
    # again, so its score may differ by an image and the second copy may or may not be kept).
    twice = tmp_path / "twice.keras"
    result = runner.invoke(cli, ["soup", str(a), str(a), "--source", "fer", "--data", str(data), "--out", str(twice)])
    assert result.exit_code == 0, result.output
    assert json.loads(twice.with_suffix(".json").read_text())["selected"] in ([str(a)], [str(a), str(a)])
    got, want = keras.models.load_model(twice), keras.models.load_model(a)
    for layer in want.layers:
        if layer.weights and not isinstance(layer, keras.layers.BatchNormalization):
            for w_got, w_want in zip(got.get_layer(layer.name).get_weights(), layer.get_weights(), strict=True):
                np.testing.assert_allclose(w_got, w_want, rtol=1e-6)

    # Another network: one line, exit 1; a wrong --out suffix: usage error, exit 2.
    result = runner.invoke(cli, ["soup", str(a), str(other), "--source", "fer", "--data", str(data), "--out", str(out)])
    assert result.exit_code == 1 and "model 1 is another network" in result.output
    result = runner.invoke(
        cli, ["soup", str(a), "--source", "fer", "--data", str(data), "--out", str(tmp_path / "x.h5")]
    )
    assert result.exit_code == 2 and "--out must end in .keras" in result.output
