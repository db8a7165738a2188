"""The semi-supervised protocol's labelled subset: its three forms, seeded and deterministic,
nested, drawn from the target train split only (never val or test), the other labels dropped."""

import numpy as np
import pytest

from da_pose.data import labelled, manifest
from da_pose.data.labelled import parse_spec, select, strip_unlabelled
from da_pose.errors import ConfigError


@pytest.fixture(scope="module")
def target(tiny_benchmark):
    return {split: manifest.load_domain(tiny_benchmark, "target", split) for split in ("train", "val", "test")}


def ids(records, chosen=None):
    picked = records if chosen is None else [records[i] for i in chosen]
    return {labelled.image_id(r) for r in picked}


def test_the_three_forms_parse_and_bad_values_name_them():
    assert parse_spec("").kind == parse_spec("0").kind == parse_spec(0.0).kind == "none"
    assert parse_spec(0.05) == labelled.LabelSpec("fraction", 0.05, "0.05")
    assert parse_spec("20") == labelled.LabelSpec("count", 20.0, "20")
    assert parse_spec("2_per_video") == labelled.LabelSpec("per_video", 2.0, "2_per_video")
    assert parse_spec("all").kind == parse_spec("1.0").kind == "all"
    for bad in ("1.5", "-0.1", "abc", "0_per_video", "two_per_video"):
        with pytest.raises(ConfigError, match="K_per_video|fraction"):
            parse_spec(bad)


def test_subset_is_deterministic_per_seed_order_free_and_differs_across_seeds(target):
    train = target["train"]
    spec = parse_spec("0.3")
    a = select(train, spec, seed=0)
    assert np.array_equal(a, select(train, spec, seed=0))
    # the same images whatever order the loader returns the records in
    assert ids(train[::-1], select(train[::-1], spec, seed=0)) == ids(train, a)
    assert len({tuple(select(train, spec, seed=s)) for s in range(6)}) > 1
    assert len(a) == max(1, round(0.3 * len(train)))


def test_count_all_and_nested_fractions(target):
    train = target["train"]
    assert len(select(train, parse_spec("3"), 1)) == 3
    assert np.array_equal(select(train, parse_spec("all"), 1), np.arange(len(train)))
    assert len(select(train, parse_spec("0.01"), 1)) == 1  # at least one image
    small, large = set(select(train, parse_spec("0.2"), 4)), set(select(train, parse_spec("0.6"), 4))
    assert small < large  # the 20 % set is part of the 60 % one (one seeded permutation)
    with pytest.raises(ConfigError, match="only"):
        select(train, parse_spec(str(len(train) + 1)), 0)


def test_per_video_takes_k_frames_of_every_shot(target):
    train = target["train"]
    chosen = select(train, parse_spec("2_per_video"), seed=3)
    videos = np.array([r.video for r in train])
    for v in np.unique(videos):
        assert (videos[chosen] == v).sum() == min(2, (videos == v).sum())
    assert np.array_equal(chosen, select(train, parse_spec("2_per_video"), seed=3))


def test_subset_is_drawn_from_train_never_val_or_test(target):
    train_ids, val_ids, test_ids = ids(target["train"]), ids(target["val"]), ids(target["test"])
    assert val_ids and test_ids
    for spec in ("0.5", "4", "1_per_video", "all"):
        for seed in range(3):
            chosen = ids(target["train"], select(target["train"], parse_spec(spec), seed))
            assert chosen <= train_ids and not chosen & val_ids and not chosen & test_ids
    # whole shots: no labelled frame shares a video with val or test
    val_test_videos = {r.video for r in target["val"] + target["test"]}
    assert not {r.video for r in target["train"]} & val_test_videos


def test_unchosen_labels_are_dropped_and_crops_kept(target):
    train = target["train"]
    chosen = select(train, parse_spec("0.25"), seed=0)
    stripped = strip_unlabelled(train, chosen)
    for i, (a, b) in enumerate(zip(train, stripped)):
        assert np.array_equal(a.center, b.center) and a.side == b.side and a.image_path == b.image_path
        if i in set(chosen.tolist()):
            assert np.array_equal(a.keypoints, b.keypoints)
        else:
            assert not b.keypoints.any()  # no coordinate and no visibility left
