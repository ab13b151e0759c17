"""Attaching a refining post-processor must not change the global random stream (host initialisation/training)."""

import pytest
import torch

from anomalib_pixelrefine.post_processing import F2PAD, PaedidRefiner


@pytest.mark.parametrize("build", [lambda: PaedidRefiner(channels=(8, 16)), lambda: F2PAD(init="pae")])
def test_refiner_construction_leaves_the_global_rng_alone(build) -> None:
    torch.manual_seed(123)
    expected = torch.rand(4)
    torch.manual_seed(123)
    build()
    assert torch.equal(torch.rand(4), expected)


def test_paedid_refiner_pae_initialisation_is_seeded() -> None:
    first = PaedidRefiner(channels=(8, 16), seed=3).pae.state_dict()
    torch.manual_seed(999)  # a different global state must not matter
    second = PaedidRefiner(channels=(8, 16), seed=3).pae.state_dict()
    other = PaedidRefiner(channels=(8, 16), seed=4).pae.state_dict()
    assert all(torch.equal(first[key], second[key]) for key in first)
    assert not all(torch.equal(first[key], other[key]) for key in first)
