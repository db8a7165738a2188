"""The 18-joint TigDog skeleton: joint order, names, flip pairs, groups, limbs, species maps.

One module, used everywhere: datasets, codec (flip), metrics (groups), drawing (limbs).
The order is the TigDog convention (0-based), see the README's joint table.
"""

from __future__ import annotations

import numpy as np

JOINTS: tuple[str, ...] = (
    "left_eye",
    "right_eye",
    "chin",
    "left_front_hoof",
    "right_front_hoof",
    "left_back_hoof",
    "right_back_hoof",
    "hip",
    "left_front_knee",
    "right_front_knee",
    "left_back_knee",
    "right_back_knee",
    "left_shoulder",
    "right_shoulder",
    "left_front_elbow",
    "right_front_elbow",
    "left_back_elbow",
    "right_back_elbow",
)
NUM_JOINTS = len(JOINTS)

# Left/right partners; joints on the midline (chin, hip) are their own partner.
FLIP_PAIRS: tuple[tuple[int, int], ...] = (
    (0, 1), (3, 4), (5, 6), (8, 9), (10, 11), (12, 13), (14, 15), (16, 17),
)


def flip_index(pairs=FLIP_PAIRS, num_joints: int = NUM_JOINTS) -> np.ndarray:
    """Permutation ``p`` such that joint ``j`` of a mirrored image is joint ``p[j]``."""
    perm = np.arange(num_joints)
    for a, b in pairs:
        perm[a], perm[b] = b, a
    return perm


FLIP_INDEX = flip_index()

# Published per-part groups (CC-SSL tables).
GROUPS: dict[str, tuple[int, ...]] = {
    "eye": (0, 1),
    "chin": (2,),
    "hoof": (3, 4, 5, 6),
    "hip": (7,),
    "knee": (8, 9, 10, 11),
    "shoulder": (12, 13),
    "elbow": (14, 15, 16, 17),
}

# Bones for drawing: shoulder -> elbow -> knee -> hoof on each leg, head and back.
LIMBS: tuple[tuple[int, int], ...] = (
    (0, 1), (0, 2), (1, 2),
    (12, 14), (14, 8), (8, 3),
    (13, 15), (15, 9), (9, 4),
    (7, 16), (16, 10), (10, 5),
    (7, 17), (17, 11), (11, 6),
    (12, 13), (12, 7), (13, 7), (2, 12), (2, 13),
)

# TigDog landmark files list 19 points; the model uses the first 18 in the order above, except
# for tiger, whose file stores the leg groups in another order. Entry j is the 1-based landmark
# index in the file that holds model joint j.
TIGDOG_LANDMARK_ORDER: dict[str, tuple[int, ...]] = {
    "horse": tuple(range(1, 19)),
    "tiger": (1, 2, 3, 4, 5, 6, 7, 8, 15, 16, 17, 18, 13, 14, 9, 10, 11, 12),
}


def tigdog_landmark_index(animal: str) -> np.ndarray:
    """0-based indices into a TigDog landmark array that give the model's joint order.

    Animals without an entry (the embedded benchmark's, new ones) use the horse order.
    """
    order = TIGDOG_LANDMARK_ORDER.get(animal, TIGDOG_LANDMARK_ORDER["horse"])
    return np.asarray(order, dtype=np.int64) - 1


def group_of(joint: int) -> str:
    """Name of the published group that holds ``joint``."""
    for name, members in GROUPS.items():
        if joint in members:
            return name
    raise KeyError(joint)
