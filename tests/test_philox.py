"""Philox4x32-10 known-answer vectors (docs/design.md, section 1) on every backend and CPU
path."""
import numpy as np
import oracle
import pytest
import torch
from oracle import KAT
from testing import BACKENDS, HAS_EMULATOR, NO_EMULATOR_REASON, keep_mask

from dropout_ext import _backend, _reference
from dropout_ext import functional as F


@pytest.mark.parametrize("counter,key,expected", KAT)
def test_oracle_known_answers(counter, key, expected):
    """The test suite's own Philox (tests/oracle.py), plain ints and numpy, on the known-answer vectors."""
    assert oracle.philox4x32_10_int(counter, key) == expected
    got = oracle.philox4x32_10(*(np.array([c, c]) for c in counter), *key)
    assert [tuple(int(w[r]) for w in got) for r in range(2)] == [expected, expected]


def test_oracle_words_follow_the_counter_layout():
    """words_at / words: element i is word i % 4 of counter (j lo, j hi, base lo, base hi)."""
    key, base = 0xA4093822299F31D0 >> 1, 0x0370734413198A2E
    idx = [0, 1, 2, 3, 4, 7, 4099, 2**32 * 4 + 2, 2**62 + 1]
    for i, w in zip(idx, oracle.words_at(key, base, idx)):
        j = i // 4
        expected = oracle.philox4x32_10_int((j & 0xFFFFFFFF, j >> 32, base & 0xFFFFFFFF, base >> 32),
                                            (key & 0xFFFFFFFF, key >> 32))[i % 4]
        assert int(w) == expected, i
    assert np.array_equal(oracle.words(key, base, 4099), oracle.words_at(key, base, np.arange(4099)))
    assert oracle.words(0, 0, 4).tolist() == list(KAT[0][2])


class _PythonPhilox:
    """The Python kernels' Philox (dropout_ext._reference) with the testing op's signature."""

    @staticmethod
    def philox4x32_10(counter, key):
        c, k = counter & 0xFFFFFFFF, key & 0xFFFFFFFF
        return torch.stack(_reference.philox4x32_10(c[..., 0], c[..., 1], c[..., 2], c[..., 3], k[0], k[1]), dim=-1)


def _ops(name):
    """The namespace whose philox4x32_10 op runs the backend's Philox: for the compiled
    kernels, the testing module's (the product has no such op)."""
    if name == "python":
        return _PythonPhilox
    if not HAS_EMULATOR:
        pytest.skip(NO_EMULATOR_REASON)
    return _backend.testing_ops()


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
        words = oracle.philox4x32_10_int((j & 0xFFFFFFFF, j >> 32, 0, 0), (seed & 0xFFFFFFFF, seed >> 32))
        expected.append(int(words[i % 4]) >= t)
    assert keep_mask((n,), p, seed).tolist() == expected
    with _backend.use(BACKENDS[0]):
        out = F.dropout(torch.ones(n), p, seed=seed, scale_train=False)
    assert (out == 1).tolist() == expected
