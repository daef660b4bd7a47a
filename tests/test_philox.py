"""Philox4x32-10 known-answer vectors (SPEC section 3) on every backend and CPU path."""
import pytest
import torch
from testing import BACKENDS, keep_mask

from dropout_ext import _backend, _reference
from dropout_ext import functional as F

KAT = [
    ((0x00000000, 0x00000000, 0x00000000, 0x00000000), (0x00000000, 0x00000000),
     (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF), (0xFFFFFFFF, 0xFFFFFFFF),
     (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


def _ops(name):
    return _backend.compiled_ops() if name == "compiled" else _backend.python_ops()


@pytest.mark.parametrize("counter,key,expected", KAT)
@pytest.mark.parametrize("name", BACKENDS)
def test_known_answers(name, device, counter, key, expected):
    ops = _ops(name)
    got = ops.philox4x32_10(torch.tensor([counter], device=device), torch.tensor(key, device=device))
    assert [int(v) for v in got[0].tolist()] == list(expected)


def test_known_answers_plain_python():
    for counter, key, expected in KAT:
        got = _reference.philox4x32_10(*counter, *key)
        assert tuple(int(v) for v in got) == expected


def test_mask_definition_by_hand():
    """Element i keeps iff word i % 4 of philox(j = i // 4, base, key) >= floor(p * 2**32),
    written out with plain Python integers for a 64-bit seed and 9 elements."""
    seed, p, n = 0x0123456789ABCDEF, 0.37, 9
    t = int(p * 2**32)
    expected = []
    for i in range(n):
        j = i // 4
        words = _reference.philox4x32_10(j & 0xFFFFFFFF, j >> 32, 0, 0, seed & 0xFFFFFFFF, seed >> 32)
        expected.append(int(words[i % 4]) >= t)
    assert keep_mask((n,), p, seed).tolist() == expected
    with _backend.use(BACKENDS[0]):
        out = F.dropout(torch.ones(n), p, seed=seed, scale_train=False)
    assert (out == 1).tolist() == expected
