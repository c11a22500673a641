"""The architecture grammar round-trips, and spaces reject what they cannot build."""

from __future__ import annotations

import dataclasses
import random
import re

import pytest

from orchestrator.arch import ZERO, Arch, Op, Widths
from orchestrator.spaces import get_space, space_names


def test_op_tokens_round_trip():
    for token in ("k3e3", "k5e6", "k7e1", "zero"):
        assert Op.parse(token).encode() == token
    assert Op.parse("zero") is ZERO


@pytest.mark.parametrize("name", space_names())
def test_space_candidates_round_trip(name):
    space = get_space(name)
    for op in space.candidates:
        assert Op.parse(op.encode()) == op


@pytest.mark.parametrize("name", space_names())
def test_random_architectures_round_trip(name):
    space = get_space(name)
    rng = random.Random(1234)
    seen = set()
    for _ in range(200):
        arch = space.random_arch(rng)
        text = arch.encode()
        assert Arch.parse(text) == arch
        assert Arch.parse(text).encode() == text
        assert space.parse(text) == arch
        assert space.arch_from_indices(space.indices(arch)) == arch
        seen.add(text)
    assert len(seen) > 150  # sampling explores the space rather than repeating one string


def test_widths_round_trip():
    text = "proxyless-imagenet@40,24,32,56,112,128,256,432,1728:" + "/".join(
        ".".join(["k3e3"] * d) for d in (4, 4, 4, 4, 4, 1)
    )
    arch = Arch.parse(text)
    assert arch.widths == Widths(40, 24, (32, 56, 112, 128, 256, 432), 1728)
    assert arch.encode() == text
    get_space("proxyless-imagenet").validate(arch)


def test_imagenet_space_matches_the_paper():
    space = get_space("proxyless-imagenet")
    assert space.resolution == 224 and space.num_classes == 1000
    assert (space.stem, space.first, space.head) == (32, 16, 1280)
    assert [s.width for s in space.stages] == [24, 40, 80, 96, 192, 320]
    assert list(space.depths) == [4, 4, 4, 4, 4, 1]
    assert [s.stride for s in space.stages] == [2, 2, 2, 1, 2, 1]
    assert [o.encode() for o in space.candidates] == ["k3e3", "k3e6", "k5e3", "k5e6", "k7e3", "k7e6", "zero"]
    # zero exactly on stride-1, equal-width blocks: every block but the first of each stage, and none in the last
    zero_ok = [b.zero_ok for b in space.blocks()]
    assert zero_ok == [False, True, True, True] * 5 + [False]
    assert space.stem_resolution() == 112 and space.blocks()[-1].out_resolution == 7


def test_fingerprint_is_stable_and_sensitive():
    space = get_space("tiny")
    assert space.fingerprint() == get_space("tiny").fingerprint()
    assert dataclasses.replace(space, resolution=32).fingerprint() != space.fingerprint()
    assert dataclasses.replace(space, description="x").fingerprint() == space.fingerprint()


@pytest.mark.parametrize(
    "text, message",
    [
        ("tiny:k3e3.zero/k5e6.k9e3", "not a candidate"),
        ("tiny:k3e3.zero/k5e6.kxe3", "unknown op token"),
        ("tiny:k3e3.zero/k5e6", "stage 2 of space 'tiny' has 2 blocks"),
        ("tiny:k3e3.zero", "has 2 stages"),
        ("tiny:zero.k3e3/k5e6.k3e3", "block 0 (stage 1) cannot be 'zero'"),
        ("nosuch:k3e3", "unknown search space 'nosuch'"),
        ("k3e3.zero", "expected 'SPACE:ops'"),
        ("tiny:k4e3.zero/k5e6.k3e3", "odd"),
    ],
)
def test_bad_architectures_are_refused_with_the_reason(text, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        arch = Arch.parse(text)
        get_space(arch.space).validate(arch)


def test_task_variants_name_themselves_and_round_trip():
    base = get_space("tiny")
    v = base.variant(num_classes=3, resolution=64)
    assert v.name == "tiny[c3,r64]" and v.num_classes == 3 and v.resolution == 64
    assert get_space(v.name) == v and v.base_name == "tiny"
    assert base.variant() is not None and base.variant().name == "tiny"  # no change: the base itself
    assert get_space("proxyless-imagenet[w1.4]").width_mult == 1.4
    # the variant is part of the space fingerprint, but not of the body's when only the classes differ
    assert v.fingerprint() != base.fingerprint()
    c3 = base.variant(num_classes=3)
    assert c3.body_fingerprint() == base.body_fingerprint() and c3.fingerprint() != base.fingerprint()
    assert v.body_fingerprint() != base.body_fingerprint()  # another resolution is another body
    arch = v.random_arch(random.Random(0))
    text = arch.encode()
    assert text.startswith("tiny[c3,r64]:") and Arch.parse(text) == arch and Arch.parse(text).encode() == text
    assert get_space(Arch.parse(text).space).validate(arch) == arch


@pytest.mark.parametrize("name,fragment", [
    ("tiny[c1]", "num_classes: must be an integer of at least 2"),
    ("tiny[r4]", "resolution: must be an integer in [8, 4096]"),
    ("tiny[x3]", "bad variant token 'x3'"),
    ("tiny[c3,c4]", "bad variant token 'c4'"),
    ("tiny[r64,c3]", "not in canonical form: write 'tiny[c3,r64]'"),
    ("tiny[c10]", "not in canonical form: write 'tiny'"),
    ("nope[c3]", "unknown search space 'nope'"),
])
def test_bad_variants_are_refused(name, fragment):
    with pytest.raises(ValueError, match=re.escape(fragment)):
        get_space(name)
