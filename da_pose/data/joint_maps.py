"""Joint maps: how a COCO-format dataset's keypoints land on the 18 TigDog joints, checked by name.

A :class:`JointMap` declares the keypoint names it expects (the dataset's category keypoint
list, in order) and pairs ``(dataset keypoint index, skeleton joint index)``. The COCO loader
compares the file's category keypoint names with the declared ones and refuses a file whose
names differ, so a map can never silently put one dataset's joints on another's body parts.

Built-in maps (``BUILTIN``): ``ap10k`` (AP-10K, 17 keypoints), ``animalpose`` (Animal-Pose, 20
keypoints; alias ``animal_pose``), ``coco_person`` (COCO people, 17 keypoints, the WS-CDA
"other" body plan). Any other set: a YAML joint-map file (format in ``datasets/README.md``)::

    name: horse10                    # optional, for messages
    keypoints: [Nose, Eye, ...]      # every keypoint name of the COCO category, in its order
    joints:                          # dataset keypoint name -> TigDog joint name (skeleton.JOINTS)
      Eye: left_eye
      Hip: hip
    sigmas: [0.026, 0.025, ...]      # optional: OKS sigmas, one per keypoint (for OKS AP)

Names compare case-insensitively, with spaces and hyphens read as underscores
(``Root of tail`` == ``root_of_tail``).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from da_pose.data.skeleton import JOINTS, NUM_JOINTS
from da_pose.errors import ConfigError

MAP_FILE_HELP = (
    "write a joint-map file (YAML: keypoints, joints, optional sigmas; format in datasets/README.md) "
    "and pass --joint-map FILE.yaml"
)


def normalise_name(name: str) -> str:
    """``Root of tail`` -> ``root_of_tail``: case and space/hyphen/underscore differences ignored."""
    return re.sub(r"[\s\-_]+", "_", str(name).strip().lower())


@dataclass(frozen=True)
class JointMap:
    """A dataset's keypoints (names, in order) and their TigDog joints.

    Iterating a map yields its ``(keypoint_index, skeleton_index)`` pairs, so it can be used
    wherever a plain list of pairs is accepted (``list(AP10K_MAP) + [(12, 16)]`` gives pairs).

    Attributes:
        name: short name used in messages (``ap10k``, a file's ``name`` or stem).
        keypoints: the category keypoint names the map expects, in the file's order.
        pairs: ``(keypoint_index, skeleton_index)``, each skeleton joint at most once.
        sigmas: OKS sigmas per keypoint (same order as ``keypoints``), or None.
        source: ``built-in`` or the file the map was read from.
    """

    name: str
    keypoints: tuple[str, ...]
    pairs: tuple[tuple[int, int], ...]
    sigmas: tuple[float, ...] | None = None
    source: str = "built-in"

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter(self.pairs)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i):
        return self.pairs[i]

    @property
    def label(self) -> str:
        return f"joint map {self.name!r}" + ("" if self.source == "built-in" else f" ({self.source})")

    def mismatch(self, names: Sequence[str]) -> str | None:
        """None when ``names`` are the declared keypoints, else what differs first (one phrase)."""
        names = [str(n) for n in names]
        for i, (got, want) in enumerate(zip(names, self.keypoints)):
            if normalise_name(got) != normalise_name(want):
                return f"keypoint {i} is {got!r} where {self.label} expects {want!r}"
        if len(names) != len(self.keypoints):
            return f"{len(names)} keypoints where {self.label} expects {len(self.keypoints)}"
        return None

    def as_array(self) -> np.ndarray:
        """(P, 2) int64 pairs."""
        return np.asarray(self.pairs, dtype=np.int64).reshape(-1, 2)

    def dataset_sigmas(self) -> np.ndarray | None:
        return None if self.sigmas is None else np.asarray(self.sigmas, dtype=np.float64)


def _pairs_by_name(keypoints: Sequence[str], joints: dict[str, str]) -> tuple[tuple[int, int], ...]:
    index = {normalise_name(n): i for i, n in enumerate(keypoints)}
    return tuple((index[normalise_name(k)], JOINTS.index(j)) for k, j in joints.items())


# ----------------------------------------------------------------------------------- built-in

# AP-10K (Yu et al., NeurIPS 2021): the names as the AP-10K annotation files write them. No
# counterpart: chin, front knees, back knees, back elbows. AP-10K's hind hip and knee are
# anatomical joints (hip joint and the hind leg's middle bend) that do not line up with TigDog's
# hind chain (tail root -> back elbow -> back knee -> hoof), so they are left out; nose and neck
# are dropped.
AP10K_KEYPOINTS: tuple[str, ...] = (
    "left_eye", "right_eye", "nose", "neck", "root_of_tail", "left_shoulder", "left_elbow",
    "left_front_paw", "right_shoulder", "right_elbow", "right_front_paw", "left_hip", "left_knee",
    "left_back_paw", "right_hip", "right_knee", "right_back_paw",
)
AP10K = JointMap(
    "ap10k",
    AP10K_KEYPOINTS,
    _pairs_by_name(AP10K_KEYPOINTS, {
        "left_eye": "left_eye", "right_eye": "right_eye",
        "root_of_tail": "hip",
        "left_shoulder": "left_shoulder", "right_shoulder": "right_shoulder",
        "left_elbow": "left_front_elbow", "right_elbow": "right_front_elbow",
        "left_front_paw": "left_front_hoof", "right_front_paw": "right_front_hoof",
        "left_back_paw": "left_back_hoof", "right_back_paw": "right_back_hoof",
    }),
    # AP-10K's published per-keypoint OKS sigmas, in its keypoint order.
    sigmas=(0.025, 0.025, 0.026, 0.035, 0.035, 0.079, 0.072, 0.062, 0.079, 0.072,
            0.062, 0.107, 0.087, 0.089, 0.107, 0.087, 0.089),
)

# Animal-Pose (Cao et al., ICCV 2019). Its leg names follow TigDog's (front/back elbow, knee,
# paw = hoof), so legs map by name; tail base = TigDog hip. No counterpart: chin, shoulders
# (withers is on the midline); ear bases, nose, throat and withers are dropped.
ANIMAL_POSE_KEYPOINTS: tuple[str, ...] = (
    "L_Eye", "R_Eye", "L_EarBase", "R_EarBase", "Nose", "Throat", "TailBase", "Withers",
    "L_F_Elbow", "R_F_Elbow", "L_B_Elbow", "R_B_Elbow", "L_F_Knee", "R_F_Knee", "L_B_Knee",
    "R_B_Knee", "L_F_Paw", "R_F_Paw", "L_B_Paw", "R_B_Paw",
)
ANIMAL_POSE = JointMap(
    "animalpose",
    ANIMAL_POSE_KEYPOINTS,
    _pairs_by_name(ANIMAL_POSE_KEYPOINTS, {
        "L_Eye": "left_eye", "R_Eye": "right_eye",
        "TailBase": "hip",
        "L_F_Elbow": "left_front_elbow", "R_F_Elbow": "right_front_elbow",
        "L_B_Elbow": "left_back_elbow", "R_B_Elbow": "right_back_elbow",
        "L_F_Knee": "left_front_knee", "R_F_Knee": "right_front_knee",
        "L_B_Knee": "left_back_knee", "R_B_Knee": "right_back_knee",
        "L_F_Paw": "left_front_hoof", "R_F_Paw": "right_front_hoof",
        "L_B_Paw": "left_back_hoof", "R_B_Paw": "right_back_hoof",
    }),
    # The sigmas the mmpose toolbox evaluates Animal-Pose with (the paper gives none).
    sigmas=(0.025, 0.025, 0.026, 0.035, 0.035, 0.10, 0.10, 0.10, 0.107, 0.107,
            0.107, 0.107, 0.087, 0.087, 0.087, 0.087, 0.089, 0.089, 0.089, 0.089),
)

# COCO people (WS-CDA's other body plan): eyes, shoulders, elbows -> front elbows, wrists -> front
# knees (carpus), knees -> back elbows (stifle), ankles -> back knees (hock). Chin, hooves and hip
# have no counterpart.
COCO_PERSON_KEYPOINTS: tuple[str, ...] = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle",
)
COCO_PERSON = JointMap(
    "coco_person",
    COCO_PERSON_KEYPOINTS,
    _pairs_by_name(COCO_PERSON_KEYPOINTS, {
        "left_eye": "left_eye", "right_eye": "right_eye",
        "left_shoulder": "left_shoulder", "right_shoulder": "right_shoulder",
        "left_elbow": "left_front_elbow", "right_elbow": "right_front_elbow",
        "left_wrist": "left_front_knee", "right_wrist": "right_front_knee",
        "left_knee": "left_back_elbow", "right_knee": "right_back_elbow",
        "left_ankle": "left_back_knee", "right_ankle": "right_back_knee",
    }),
    # COCO's person keypoint sigmas (pycocotools).
    sigmas=(0.026, 0.025, 0.025, 0.035, 0.035, 0.079, 0.079, 0.072, 0.072, 0.062,
            0.062, 0.107, 0.107, 0.087, 0.087, 0.089, 0.089),
)

BUILTIN: dict[str, JointMap] = {"ap10k": AP10K, "animalpose": ANIMAL_POSE, "coco_person": COCO_PERSON}
# Built-in maps that name a --data spec kind of their own (``ap10k:ANN.json``).
SPEC_KINDS: tuple[str, ...] = ("ap10k", "animalpose")
ALIASES: dict[str, str] = {"animal_pose": "animalpose", "ap-10k": "ap10k", "ap_10k": "ap10k"}


def builtin_names() -> list[str]:
    return sorted(BUILTIN)


def matching_builtin(names: Sequence[str]) -> str | None:
    """The built-in map whose declared keypoints are ``names``, or None."""
    for key, jm in BUILTIN.items():
        if jm.mismatch(names) is None:
            return key
    return None


# ----------------------------------------------------------------------------------- files


def read_joint_map(path: str | os.PathLike) -> JointMap:
    """Read and check a YAML joint-map file; ConfigError naming the file and what was expected."""
    import yaml

    path = Path(path)
    where = f"{path}"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{where}: joint-map file not found (expected a YAML joint map, format in "
                          "datasets/README.md)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{where}: unreadable joint-map file ({exc}); expected a YAML text file") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"{where}: not valid YAML ({first}); expected a joint map with "
                          "'keypoints' and 'joints'") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{where}: top level is {type(doc).__name__}; expected a mapping with "
                          "'keypoints' (list) and 'joints' (keypoint -> joint)")
    unknown = sorted(set(doc) - {"name", "keypoints", "joints", "sigmas"})
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}; expected name, keypoints, joints, sigmas")
    kps = doc.get("keypoints")
    if not isinstance(kps, list) or not kps or not all(isinstance(k, str) and k.strip() for k in kps):
        raise ConfigError(f"{where}: 'keypoints' must be a non-empty list of the dataset's keypoint names, "
                          "in the order of its COCO category")
    seen: dict[str, str] = {}
    for k in kps:
        if normalise_name(k) in seen:
            raise ConfigError(f"{where}: keypoint {k!r} is listed twice in 'keypoints'")
        seen[normalise_name(k)] = k
    joints = doc.get("joints")
    if not isinstance(joints, dict) or not joints:
        raise ConfigError(f"{where}: 'joints' must map dataset keypoint names to TigDog joint names "
                          f"(one of {', '.join(JOINTS)})")
    owner: dict[str, str] = {}
    for k, j in joints.items():
        if not isinstance(k, str) or normalise_name(k) not in seen:
            raise ConfigError(f"{where}: 'joints' names keypoint {k!r}, which is not in 'keypoints'")
        if not isinstance(j, str) or j not in JOINTS:
            raise ConfigError(f"{where}: keypoint {k!r} maps to unknown joint {j!r}; expected one of "
                              f"{', '.join(JOINTS)}")
        if j in owner:
            raise ConfigError(f"{where}: keypoints {owner[j]!r} and {k!r} both map to joint {j!r}; "
                              "each joint takes at most one keypoint")
        owner[j] = k
    sigmas = doc.get("sigmas")
    if sigmas is not None:
        ok = (
            isinstance(sigmas, list) and len(sigmas) == len(kps)
            and all(isinstance(s, (int, float)) and not isinstance(s, bool) and s > 0 for s in sigmas)
        )
        if not ok:
            raise ConfigError(f"{where}: 'sigmas' must be {len(kps)} positive numbers (one per keypoint)")
        sigmas = tuple(float(s) for s in sigmas)
    name = doc.get("name", path.stem)
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{where}: 'name' must be a non-empty string")
    return JointMap(name, tuple(kps), _pairs_by_name(kps, joints), sigmas=sigmas, source=str(path))


def is_map_file(value: str) -> bool:
    return str(value).lower().endswith((".yaml", ".yml"))


def resolve_joint_map(value, base: str | os.PathLike | None = None):
    """A joint map from a name, a YAML file, a :class:`JointMap` or plain pairs.

    Returns None for None or "" (the identity: the file must have 18 keypoints), a
    :class:`JointMap` for a built-in name or a ``.yaml``/``.yml`` file (relative to ``base``
    when given), and a tuple of ``(keypoint_index, skeleton_index)`` pairs (not checked by
    name) for a list of pairs.
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, JointMap):
        return value
    if isinstance(value, (str, os.PathLike)):
        text = os.fspath(value).strip()
        key = ALIASES.get(text.lower(), text.lower())
        if key in BUILTIN:
            return BUILTIN[key]
        if is_map_file(text) or Path(text).is_file():
            path = Path(text)
            if base is not None and not path.is_absolute():
                path = Path(base) / path
            return read_joint_map(path)
        raise ConfigError(f"joint map {text!r}: expected a built-in map ({', '.join(builtin_names())}) "
                          "or a .yaml joint-map file (format in datasets/README.md)")
    try:
        pairs = tuple((int(a), int(b)) for a, b in value)
    except (TypeError, ValueError):
        raise ConfigError(f"joint map {value!r}: expected a name, a .yaml file or [keypoint_index, "
                          "joint_index] pairs") from None
    return pairs


def check_names(jm: JointMap, names: Sequence[str], where: str) -> None:
    """ConfigError when a COCO category's keypoint ``names`` are not the map's declared ones."""
    diff = jm.mismatch(names)
    if diff is None:
        return
    fit = matching_builtin(names)
    hint = (
        f"these names fit the built-in map {fit!r} (--joint-map {fit})"
        if fit else f"no built-in map fits ({', '.join(builtin_names())}); {MAP_FILE_HELP}"
    )
    raise ConfigError(f"{where}: {diff}; {hint}")


def identity_hint(names: Sequence[str], num_joints: int = NUM_JOINTS) -> str:
    """What to do when a file without a joint map has ``len(names) != num_joints`` keypoints."""
    fit = matching_builtin(names)
    if fit in SPEC_KINDS:
        return f"its keypoint names fit the built-in map {fit!r}: use --data {fit}:ANN.json or --joint-map {fit}"
    if fit:
        return f"its keypoint names fit the built-in map {fit!r}: pass --joint-map {fit}"
    return f"pass a joint map: no built-in map fits ({', '.join(builtin_names())}); {MAP_FILE_HELP}"
