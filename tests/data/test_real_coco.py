"""Real AP-10K and Animal-Pose files (../shared/reference/real/coco) from the command line, and
joint maps checked by keypoint name: built-in maps, map files, refused files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from da_pose import cli
from da_pose.data import coco, joint_maps, manifest
from da_pose.data.skeleton import JOINTS
from da_pose.errors import ConfigError, DataError

REAL = Path(__file__).resolve().parents[2].parent / "shared" / "reference" / "real" / "coco"
needs_real = pytest.mark.skipif(not REAL.is_dir(), reason=f"{REAL} absent (real reference files not mounted)")
AP10K_JSON = REAL / "ap10k" / "test_ap10k.json"
ANIMALPOSE_JSON = REAL / "animalpose" / "test_animalpose.json"

# What each TigDog joint is called in each dataset, written out here by name, independently of
# the loader's tables: eyes, hooves (paws), hip (tail root), knees, elbows, shoulders.
BY_NAME = {
    "ap10k": {
        "left_eye": "left_eye", "right_eye": "right_eye", "hip": "root_of_tail",
        "left_front_hoof": "left_front_paw", "right_front_hoof": "right_front_paw",
        "left_back_hoof": "left_back_paw", "right_back_hoof": "right_back_paw",
        "left_shoulder": "left_shoulder", "right_shoulder": "right_shoulder",
        "left_front_elbow": "left_elbow", "right_front_elbow": "right_elbow",
    },
    "animalpose": {
        "left_eye": "L_Eye", "right_eye": "R_Eye", "hip": "TailBase",
        "left_front_hoof": "L_F_Paw", "right_front_hoof": "R_F_Paw",
        "left_back_hoof": "L_B_Paw", "right_back_hoof": "R_B_Paw",
        "left_front_knee": "L_F_Knee", "right_front_knee": "R_F_Knee",
        "left_back_knee": "L_B_Knee", "right_back_knee": "R_B_Knee",
        "left_front_elbow": "L_F_Elbow", "right_front_elbow": "R_F_Elbow",
        "left_back_elbow": "L_B_Elbow", "right_back_elbow": "R_B_Elbow",
    },
}

HORSE10_NAMES = [
    "Nose", "Eye", "Nearknee", "Nearfrontfetlock", "Nearfrontfoot", "Offknee", "Offfrontfetlock",
    "Offfrontfoot", "Shoulder", "Midshoulder", "Elbow", "Girth", "Wither", "Nearhindhock",
    "Nearhindfetlock", "Nearhindfoot", "Hip", "Stifle", "Offhindhock", "Offhindfetlock",
    "Offhindfoot", "Ischium",
]
MACAQUE_NAMES = list(joint_maps.COCO_PERSON_KEYPOINTS)  # MacaquePose uses the COCO person names


def _json_keypoints(path: Path) -> dict[int, dict[str, tuple[float, float, int]]]:
    """annotation id -> {keypoint name: (x, y, v)} straight from the JSON."""
    doc = json.loads(path.read_text())
    names = {c["id"]: c["keypoints"] for c in doc["categories"]}
    out = {}
    for ann in doc["annotations"]:
        kp = np.asarray(ann["keypoints"], float).reshape(-1, 3)
        out[ann["id"]] = {n: (x, y, int(v)) for n, (x, y, v) in zip(names[ann["category_id"]], kp)}
    return out


def _check_by_name(records, path: Path, table: dict[str, str]) -> None:
    truth = _json_keypoints(path)
    assert len(records) == len(truth)
    for rec in records:
        kp = truth[rec.extra["annotation_id"]]
        for j, joint in enumerate(JOINTS):
            if joint not in table:
                assert rec.keypoints[j].tolist() == [0, 0, 0], joint  # no counterpart: never visible
                continue
            x, y, v = kp[table[joint]]
            if v > 0:
                assert rec.keypoints[j].tolist() == [x, y, 1.0], (joint, table[joint])
            else:
                assert rec.keypoints[j, 2] == 0, joint


@needs_real
@pytest.mark.parametrize("kind, path", [("ap10k", AP10K_JSON), ("animalpose", ANIMALPOSE_JSON)])
def test_real_files_load_on_the_right_body_parts(kind, path):
    records = manifest.parse_data_spec(f"{kind}:{path}", strict=True)
    _check_by_name(records, path, BY_NAME[kind])
    # the same file through coco: and --joint-map gives the same records
    again = manifest.parse_data_spec(f"coco:{path}", joint_map=kind, strict=True)
    assert [r.keypoints.tolist() for r in again] == [r.keypoints.tolist() for r in records]
    for rec in records:  # images beside the JSON (the fixture's layout: no images/ folder)
        assert Path(rec.image_path).parent == path.parent.resolve() and Path(rec.image_path).is_file()


@needs_real
def test_real_left_right_and_front_back_are_anatomical():
    """On the real images: a front hoof lies below its elbow, a hoof below the eyes, and the
    left and right hooves of one leg pair are different points."""
    for kind, path in (("ap10k", AP10K_JSON), ("animalpose", ANIMALPOSE_JSON)):
        for rec in manifest.parse_data_spec(f"{kind}:{path}"):
            k = rec.keypoints
            for hoof, elbow in (("left_front_hoof", "left_front_elbow"), ("right_front_hoof", "right_front_elbow")):
                h, e = JOINTS.index(hoof), JOINTS.index(elbow)
                if k[h, 2] and k[e, 2]:
                    assert k[h, 1] > k[e, 1], (kind, hoof)
            eye = [k[JOINTS.index(n), 1] for n in ("left_eye", "right_eye") if k[JOINTS.index(n), 2]]
            hooves = [k[JOINTS.index(n), 1] for n in JOINTS if "hoof" in n and k[JOINTS.index(n), 2]]
            assert eye and hooves and max(hooves) > max(eye)


@needs_real
@pytest.mark.parametrize("kind, path", [("ap10k", AP10K_JSON), ("animalpose", ANIMALPOSE_JSON)])
def test_data_show_from_the_command_line(kind, path, tmp_path, capsys):
    out = tmp_path / f"{kind}.png"
    cli.main(["data", "show", "--data", f"{kind}:{path}", "--out", str(out), "-n", "2"])
    assert out.is_file() and out.stat().st_size > 1000
    assert "2 of 2 samples" in capsys.readouterr().out
    cli.main(["data", "show", "--data", f"coco:{path}", "--joint-map", kind, "--out", str(out)])


@needs_real
def test_without_a_map_the_message_names_the_fitting_map(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["data", "show", "--data", f"coco:{AP10K_JSON}", "--out", "/dev/null"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "17 keypoints per instance but 18 joints" in err and "--data ap10k:ANN.json" in err
    with pytest.raises(SystemExit) as exc:
        cli.main(["data", "show", "--data", f"coco:{AP10K_JSON}", "--joint-map", "animalpose", "--out", "/dev/null"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "keypoint 0 is 'left_eye' where joint map 'animalpose' expects 'L_Eye'" in err
    assert "fit the built-in map 'ap10k'" in err


@needs_real
def test_documented_layout_and_image_folder(tmp_path):
    """datasets/animal_pose/README.md: ROOT/annotations/val.json reads ROOT/images/."""
    root = tmp_path / "animal_pose"
    (root / "annotations").mkdir(parents=True)
    (root / "images").mkdir()
    shutil.copy(ANIMALPOSE_JSON, root / "annotations" / "val.json")
    for img in ("ca110.jpeg", "ho105.jpeg"):
        shutil.copy(ANIMALPOSE_JSON.parent / img, root / "images" / img)
    records = manifest.parse_data_spec(f"animalpose:{root / 'annotations' / 'val.json'}", strict=True)
    assert {Path(r.image_path).parent for r in records} == {(root / "images").resolve()}
    # @IMAGEDIR wins
    records = manifest.parse_data_spec(f"animalpose:{root / 'annotations' / 'val.json'}@{ANIMALPOSE_JSON.parent}")
    assert {Path(r.image_path).parent for r in records} == {ANIMALPOSE_JSON.parent.resolve()}
    assert manifest.default_image_root(root / "annotations" / "val.json") == (root / "images").resolve()
    assert manifest.default_image_root(ANIMALPOSE_JSON) == ANIMALPOSE_JSON.parent.resolve()


@needs_real
def test_manifest_formats_ap10k_and_map_files(tmp_path):
    root = tmp_path / "bench"
    (root / "ap10k").mkdir(parents=True)
    for f in AP10K_JSON.parent.iterdir():
        shutil.copy(f, root / "ap10k" / f.name)
    (root / "ap10k.yaml").write_text(
        "keypoints: [%s]\njoints: {left_eye: left_eye, root_of_tail: hip}\n" % ", ".join(joint_maps.AP10K_KEYPOINTS)
    )
    doc = {"format_version": 1, "num_joints": 18, "domains": {
        "target": {"format": "ap10k", "species": "mixed", "annotations": {"test": "ap10k/test_ap10k.json"},
                   "images": "ap10k"},
        "file": {"format": "coco", "species": "mixed", "annotations": {"test": "ap10k/test_ap10k.json"},
                 "images": "ap10k", "joint_map": "ap10k.yaml"},
        "named": {"format": "coco", "species": "mixed", "annotations": {"test": "ap10k/test_ap10k.json"},
                  "images": "ap10k", "joint_map": "ap10k"},
    }}
    (root / "manifest.json").write_text(json.dumps(doc))
    target = manifest.load_domain(root, "target", "test", strict=True)
    _check_by_name(target, AP10K_JSON, BY_NAME["ap10k"])
    named = manifest.parse_data_spec(f"{root}#named")
    assert [r.keypoints.tolist() for r in named] == [r.keypoints.tolist() for r in target]
    small = manifest.load_domain(root, "file", "test")
    _check_by_name(small, AP10K_JSON, {"left_eye": "left_eye", "hip": "root_of_tail"})
    doc["domains"]["target"]["joint_map"] = "animalpose"
    (root / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(DataError, match="format 'ap10k' brings its own joint map"):
        manifest.read_manifest(root)


# ----------------------------------------------------------------------------------- other sets


def _write_coco(path: Path, names, n=2, category="animal"):
    rng = np.random.default_rng(0)
    images = [{"id": i, "file_name": f"{i}.jpg", "width": 100, "height": 80} for i in range(1, n + 1)]
    anns = []
    for i in range(1, n + 1):
        kp = np.zeros((len(names), 3))
        kp[:, 0], kp[:, 1], kp[:, 2] = rng.integers(1, 99, len(names)), rng.integers(1, 79, len(names)), 2
        anns.append({"id": i, "image_id": i, "keypoints": kp.reshape(-1).tolist(), "bbox": [0, 0, 99, 79]})
    coco.write_coco(path, images, anns, names, [[1, 2]], category_name=category)
    import cv2

    for im in images:
        cv2.imwrite(str(path.parent / im["file_name"]), np.zeros((80, 100, 3), np.uint8))
    return path


def _cli_error(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ")
    return err


def test_horse10_and_macaque_are_refused_by_the_ap10k_map(tmp_path, capsys):
    horse10 = _write_coco(tmp_path / "horse10.json", HORSE10_NAMES)
    err = _cli_error(["data", "show", "--data", f"ap10k:{horse10}", "--out", str(tmp_path / "x.png")], capsys)
    assert "keypoint 0 is 'Nose' where joint map 'ap10k' expects 'left_eye'" in err
    assert "no built-in map fits" in err and "joint-map file" in err and "--joint-map FILE.yaml" in err
    err = _cli_error(["data", "show", "--data", f"coco:{horse10}", "--out", str(tmp_path / "x.png")], capsys)
    assert "22 keypoints per instance but 18 joints" in err and "--joint-map FILE.yaml" in err
    (tmp_path / "mac").mkdir()
    macaque = _write_coco(tmp_path / "mac" / "macaque.json", MACAQUE_NAMES)
    err = _cli_error(["data", "show", "--data", f"ap10k:{macaque}", "--out", str(tmp_path / "x.png")], capsys)
    assert "keypoint 0 is 'nose' where joint map 'ap10k' expects 'left_eye'" in err
    assert "fit the built-in map 'coco_person'" in err


def test_a_map_file_for_horse10(tmp_path, capsys):
    horse10 = _write_coco(tmp_path / "horse10.json", HORSE10_NAMES)
    mapping = tmp_path / "horse10.yaml"
    mapping.write_text(
        "name: horse10\n"
        f"keypoints: [{', '.join(HORSE10_NAMES)}]\n"
        "joints:\n  Eye: left_eye\n  Nearfrontfoot: left_front_hoof\n  Offfrontfoot: right_front_hoof\n"
        "  Nearhindfoot: left_back_hoof\n  Offhindfoot: right_back_hoof\n  Nearknee: left_front_knee\n"
    )
    records = manifest.parse_data_spec(f"coco:{horse10}", joint_map=str(mapping), strict=True)
    truth = _json_keypoints(horse10)
    table = {"left_eye": "Eye", "left_front_hoof": "Nearfrontfoot", "right_front_hoof": "Offfrontfoot",
             "left_back_hoof": "Nearhindfoot", "right_back_hoof": "Offhindfoot", "left_front_knee": "Nearknee"}
    for rec in records:
        kp = truth[rec.extra["annotation_id"]]
        for j, joint in enumerate(JOINTS):
            if joint in table:
                assert rec.keypoints[j].tolist() == [*kp[table[joint]][:2], 1.0]
            else:
                assert rec.keypoints[j, 2] == 0
    cli.main(["data", "show", "--data", f"coco:{horse10}", "--joint-map", str(mapping), "--out", str(tmp_path / "h.png")])
    # the map declares Horse-10's names: the AP-10K-style macaque file is refused by it
    (tmp_path / "mac").mkdir()
    macaque = _write_coco(tmp_path / "mac" / "macaque.json", MACAQUE_NAMES)
    err = _cli_error(["data", "show", "--data", f"coco:{macaque}", "--joint-map", str(mapping),
                      "--out", str(tmp_path / "x.png")], capsys)
    assert "keypoint 1 is 'left_eye' where joint map 'horse10'" in err  # Nose == nose


@pytest.mark.parametrize("text, message", [
    ("keypoints: [a, b\n", "not valid YAML"),
    ("- a\n- b\n", "top level is list"),
    ("keypoints: [a, b]\njoints: {a: left_eye, b: left_ear}\n", "maps to unknown joint 'left_ear'"),
    ("keypoints: [a, b]\njoints: {a: left_eye, b: left_eye}\n", "'a' and 'b' both map to joint 'left_eye'"),
    ("keypoints: [a, b]\njoints: {c: left_eye}\n", "names keypoint 'c', which is not in 'keypoints'"),
    ("joints: {a: left_eye}\n", "'keypoints' must be a non-empty list"),
    ("keypoints: [a, b]\n", "'joints' must map"),
    ("keypoints: [a, a]\njoints: {a: left_eye}\n", "listed twice"),
    ("keypoints: [a, b]\njoints: {a: hip}\nsigmas: [0.1]\n", "'sigmas' must be 2 positive numbers"),
    ("keypoints: [a, b]\njoints: {a: hip}\nmapping: {}\n", "unknown key 'mapping'"),
])
def test_bad_map_files(tmp_path, capsys, text, message):
    ann = _write_coco(tmp_path / "ab.json", ["a", "b"])
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    with pytest.raises(ConfigError, match=message) as exc:
        joint_maps.read_joint_map(bad)
    assert str(bad) in str(exc.value) and "\n" not in str(exc.value)
    err = _cli_error(["data", "show", "--data", f"coco:{ann}", "--joint-map", str(bad), "--out", str(tmp_path / "x.png")],
                     capsys)
    assert message.split("'")[0] in err


def test_unknown_map_name_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="expected a built-in map \\(animalpose, ap10k, coco_person\\)"):
        joint_maps.resolve_joint_map("horse10")
    with pytest.raises(ConfigError, match="joint-map file not found"):
        joint_maps.resolve_joint_map(str(tmp_path / "none.yaml"))


def test_categories_that_disagree_on_keypoint_names(tmp_path):
    ann = _write_coco(tmp_path / "two.json", list(joint_maps.AP10K_KEYPOINTS))
    doc = json.loads(ann.read_text())
    other = dict(doc["categories"][0], id=2, name="macaque", keypoints=MACAQUE_NAMES)
    doc["categories"].append(other)
    ann.write_text(json.dumps(doc))
    with pytest.raises(DataError, match="categories 'animal' and 'macaque' disagree on keypoint 0 "
                                        "\\('left_eye' vs 'nose'\\); expected one keypoint list"):
        coco.load_coco(ann, tmp_path, "ap10k")


def test_names_compare_loosely_but_in_order():
    jm = joint_maps.AP10K
    assert jm.mismatch(["Left Eye", "RIGHT-EYE", *joint_maps.AP10K_KEYPOINTS[2:]]) is None
    assert "16 keypoints" in jm.mismatch(joint_maps.AP10K_KEYPOINTS[:16])
    swapped = list(joint_maps.AP10K_KEYPOINTS)
    swapped[0], swapped[1] = swapped[1], swapped[0]
    assert jm.mismatch(swapped) == "keypoint 0 is 'right_eye' where joint map 'ap10k' expects 'left_eye'"
    # a JointMap still iterates as pairs
    assert list(coco.AP10K_MAP)[0] == (0, 0) and len(list(coco.AP10K_MAP) + [(12, 16)]) == len(coco.AP10K_MAP) + 1
