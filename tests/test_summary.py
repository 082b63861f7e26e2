"""The Keras-style summary: rows, totals, multiply-adds."""

import torch

from resnetlab import create_model
from resnetlab.summary import summary


def test_signs_summary_totals_match_keras():
    lines = []
    s = summary(create_model("signs_resnet50"), (3, 64, 64), "signs_resnet50", print_fn=lines.append)
    text = lines[0]
    assert "Total params: 23,600,006" in text
    assert "Trainable params: 23,546,886" in text
    assert "Non-trainable params: 53,120" in text
    # The rows add up to the total, as in Keras.
    assert sum(r.params for r in s.rows) == 23_600_006
    assert s.rows[-1].name == "fc" and s.rows[-1].output_shape == (1, 6)


def test_summary_rows_follow_execution_with_shapes_and_adds():
    s = summary(create_model("resnet20"), (3, 32, 32), print_fn=None)
    names = [r.name for r in s.rows]
    assert names[:3] == ["conv1", "bn1", "relu"]
    adds = [r for r in s.rows if r.kind == "add"]
    assert len(adds) == 9
    assert adds[-1].output_shape == (1, 64, 8, 8)
    assert s.trainable == 269_722
    assert s.macs == 40_551_040  # 3x32x32 input, counted by torch.utils.flop_counter


def test_summary_feeds_the_models_dtype():
    """A bfloat16 model gets a bfloat16 input, and the same count as in float32."""
    s = summary(create_model("resnet20").to(torch.bfloat16), (3, 32, 32), print_fn=None)
    assert s.macs == 40_551_040 and s.rows[-1].output_shape == (1, 10)
