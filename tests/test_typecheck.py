"""Options checked against annotations: what JSON and NumPy hand over is taken as it means, the rest refused."""

from collections.abc import Sequence

import numpy as np
import pytest
import torch

from resnetlab.typecheck import check_types


def options(n: int, x: float, flag: bool, pair: tuple[int, int], names: list[str], widths: Sequence[int],
            maybe: int | None, device: torch.device) -> None:
    """A stand-in for a builder's options."""


def test_values_of_the_annotated_kind_come_back_as_plain_python():
    got = check_types(options, {"n": np.int64(3), "x": 2, "flag": False, "pair": [1, 2], "names": ("a", "b"),
                                "widths": np.array([16, 32]), "maybe": None, "device": torch.device("cpu")})
    assert got == {"n": 3, "x": 2.0, "flag": False, "pair": (1, 2), "names": ["a", "b"], "widths": [16, 32],
                   "maybe": None, "device": torch.device("cpu")}
    assert type(got["n"]) is int and type(got["x"]) is float and type(got["widths"][0]) is int


@pytest.mark.parametrize("values, message", [
    ({"n": True}, "n must be"),  # JSON's true is no count
    ({"n": 2.5}, "n must be"),
    ({"x": True}, "x must be"),  # nor a number
    ({"flag": "maybe"}, "flag must be"),  # which Python would take as true
    ({"pair": [1, 2, 3]}, "pair must be"),  # a tuple of two is two
    ({"pair": [1]}, "pair must be"),
    ({"names": "abc"}, "names must be"),  # text is no list of names, though Python iterates it
    ({"widths": "16"}, "widths must be"),
    ({"maybe": "1"}, "maybe must be"),
    ({"device": "cpu"}, "device must be"),
])
def test_a_value_of_another_kind_is_refused_by_name(values, message):
    with pytest.raises(TypeError, match=message):
        check_types(options, values)


def test_unannotated_names_are_left_to_the_callee():
    assert check_types(options, {"other": object}) == {"other": object}
