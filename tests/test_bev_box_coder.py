"""The 10-d box code and NMS-free top-k decoding."""

from __future__ import annotations

import math

import pytest
import torch

from bev import NMSFreeDecoder, decode_boxes, encode_boxes


def _boxes(n: int) -> torch.Tensor:
    torch.manual_seed(0)
    centre = torch.rand(n, 3) * torch.tensor([100.0, 100.0, 6.0]) - torch.tensor([50.0, 50.0, 3.0])
    size = torch.rand(n, 3) * 4 + 0.3
    yaw = torch.rand(n, 1) * 2 * math.pi - math.pi
    velocity = torch.randn(n, 2)
    return torch.cat([centre, size, yaw, velocity], dim=1)


def test_encode_decode_round_trip():
    boxes = _boxes(50)
    code = encode_boxes(boxes)
    assert code.shape == (50, 10)
    torch.testing.assert_close(code[:, 2], boxes[:, 3].log())  # log w
    torch.testing.assert_close(code[:, 4], boxes[:, 2])  # cz in metres
    torch.testing.assert_close(decode_boxes(code), boxes, atol=1e-5, rtol=1e-5)


def test_yaw_comes_back_wrapped():
    box = torch.tensor([[0.0, 0.0, 0.0, 1.0, 2.0, 1.5, 3 * math.pi / 2, 0.0, 0.0]])
    assert math.isclose(float(decode_boxes(encode_boxes(box))[0, 6]), -math.pi / 2, abs_tol=1e-5)


def test_decoder_keeps_top_scores_and_filters_centres():
    num_queries, num_classes = 6, 3
    logits = torch.full((1, num_queries, num_classes), -10.0)
    logits[0, 2, 1] = 3.0  # best
    logits[0, 4, 0] = 2.0  # second, but its centre is out of range
    logits[0, 0, 2] = 1.0  # third
    code = encode_boxes(_boxes(num_queries))[None]
    code[0, 4, 0] = 70.0
    decoder = NMSFreeDecoder(num_classes, max_num=3)
    (result,) = decoder.decode(logits, code)
    assert result["labels"].tolist() == [1, 2]
    torch.testing.assert_close(result["scores"], torch.tensor([3.0, 1.0]).sigmoid())
    torch.testing.assert_close(result["boxes"], decode_boxes(code[0, [2, 0]]))


def test_decoder_returns_at_most_max_num_per_sample():
    decoder = NMSFreeDecoder(10, max_num=300)
    results = decoder.decode(torch.randn(2, 50, 10), encode_boxes(_boxes(100)).view(2, 50, 10))
    assert [len(r["scores"]) for r in results] == [300, 300]
    assert all(bool((r["scores"][:-1] >= r["scores"][1:]).all()) for r in results)


def test_bad_shapes_raise_value_errors():
    with pytest.raises(ValueError, match="boxes"):
        encode_boxes(torch.zeros(3, 7))
    with pytest.raises(ValueError, match="box_code"):
        NMSFreeDecoder(10).decode(torch.zeros(1, 5, 10), torch.zeros(1, 4, 10))
