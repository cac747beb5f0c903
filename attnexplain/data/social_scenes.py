"""Synthetic social scenes: individuals partitioned into groups, one activity per group.

The data of the learned-query set decoder (:mod:`attnexplain.set_decoder`), made by the project
so that group membership is known by construction (no PyPI package ships a social-group data set).

**Scene.** ``n`` individuals (4 to 12) in a square arena of side ``ARENA`` metres. Each has a 2-D
position ``(x, y)``, a heading ``h`` (radians; the direction the person faces and, when moving,
walks), a speed (m/s) and an observed atomic action, one of :data:`ACTIONS`. The individuals are
partitioned into groups (1 to 5 people; a group of one is a *singleton*); each group does one
activity of :data:`ACTIVITIES`:

====================  =========================================  ===========  =====================
activity              formation                                  speed        likely actions
====================  =========================================  ===========  =====================
``talking``           circle (F-formation), everyone faces the   ~0.05        talk, gesture, stand
                      centre (a singleton: phoning)
``walking``           side by side, common heading               ~1.3         walk
``queueing``          a file, one behind the other, all facing   ~0.1         stand, look
                      along the file
``waiting``           a loose cluster, headings within 45 deg    ~0.05        stand, look
                      of a common direction
====================  =========================================  ===========  =====================

The observed action is drawn from the activity's distribution (:data:`ACTION_PROBS`), so one
person's action is a noisy hint; the group's activity needs the members' evidence together.

**Grouping rule** (what "a group" is): individuals ``i`` and ``j`` are *linked* when all three hold

* proximity: ``|p_i - p_j| < LINK_DISTANCE`` (2.0 m);
* orientation: one of them faces the other, ``max(cos(h_i, p_j - p_i), cos(h_j, p_i - p_j)) >
  -0.5`` (back-to-back strangers are not linked), or they share a heading (``cos(h_i - h_j) >
  0.7``: people walking side by side);
* motion: ``|speed_i - speed_j| < 0.6`` (a passer-by does not join a standing group);

and the groups are the connected components of the links. The generator builds each group in its
activity's formation, places the groups apart, and keeps a scene only if the rule's components are
exactly the groups it built (else it draws the scene again): the gold partition is both the
construction and the rule's output (:func:`rule_groups`, tested).

**Features** (:func:`scene_features`, 9 per individual): ``x / ARENA``, ``y / ARENA``,
``cos h``, ``sin h``, ``speed``, one-hot action (4).

**Files.** :func:`generate_scenes` is deterministic (``random.Random`` seeded with a string).
The splits are committed as JSON lines in ``attnexplain/data/synthetic_data/social-scenes-<split>.jsonl``
(written by ``datasets/make_social_scenes.py``; train 1,600, validation 200, test 400 scenes;
each split its own seed). A row: ``{"id", "x", "y", "heading", "speed", "action", "groups",
"activities"}`` (lists over individuals; ``groups`` a list of member-index lists, ``activities``
one index per group). :func:`load_scenes` reads them (or regenerates them in memory, with a
warning, if the file is missing).

The text-data registry (:func:`attnexplain.data.load_dataset`) holds text classification sets
(``TextDataset``); scenes are not text, so they are loaded with :func:`load_scenes` by split name.
"""

from __future__ import annotations

import json
import math
import random
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "ACTIVITIES",
    "ACTIONS",
    "ACTION_PROBS",
    "ARENA",
    "LINK_DISTANCE",
    "FEATURE_DIM",
    "MAX_INDIVIDUALS",
    "MAX_GROUPS",
    "SPLIT_SIZES",
    "Scene",
    "generate_scenes",
    "rule_groups",
    "scene_features",
    "load_scenes",
    "write_scenes",
    "scenes_file",
    "generate_split",
    "group_sizes",
]

ACTIVITIES: tuple[str, ...] = ("talking", "walking", "queueing", "waiting")
ACTIONS: tuple[str, ...] = ("stand", "walk", "talk", "look")
#: P(observed action | group activity), rows in ACTIVITIES order, columns in ACTIONS order
ACTION_PROBS: dict[str, tuple[float, ...]] = {
    "talking": (0.30, 0.00, 0.60, 0.10),
    "walking": (0.05, 0.85, 0.05, 0.05),
    "queueing": (0.55, 0.05, 0.05, 0.35),
    "waiting": (0.45, 0.05, 0.10, 0.40),
}
_SPEED = {"talking": 0.05, "walking": 1.3, "queueing": 0.1, "waiting": 0.05}
ARENA = 12.0
LINK_DISTANCE = 2.0
FEATURE_DIM = 5 + len(ACTIONS)
MIN_INDIVIDUALS = 4
MAX_INDIVIDUALS = 12
#: the most groups (singletons included) a generated scene has
MAX_GROUPS = 6
SPLIT_SIZES = {"train": 1600, "validation": 200, "test": 400}
SPLIT_SEEDS = {"train": 11, "validation": 12, "test": 13}
#: group sizes and their weights (a singleton is a group of one)
_SIZES = (1, 2, 3, 4, 5)
_SIZE_WEIGHTS = (0.25, 0.25, 0.2, 0.18, 0.12)


@dataclass
class Scene:
    """One scene: per-individual lists and the gold partition.

    Attributes:
        id: stable id (``"scene-<split>-<i>"``).
        x, y: positions in metres (``0 <= x, y <= ARENA``).
        heading: radians in ``[-pi, pi)``.
        speed: m/s.
        action: index into :data:`ACTIONS`.
        groups: member indices of each group (every individual in exactly one group; sorted).
        activities: index into :data:`ACTIVITIES` per group.
    """

    id: str
    x: list[float]
    y: list[float]
    heading: list[float]
    speed: list[float]
    action: list[int]
    groups: list[list[int]]
    activities: list[int]

    @property
    def n(self) -> int:
        return len(self.x)

    def membership(self) -> list[int]:
        """Group index of each individual."""
        out = [-1] * self.n
        for g, members in enumerate(self.groups):
            for i in members:
                out[i] = g
        return out

    def to_json(self) -> dict:
        return {"id": self.id, "x": self.x, "y": self.y, "heading": self.heading, "speed": self.speed,
                "action": self.action, "groups": self.groups, "activities": self.activities}

    @classmethod
    def from_json(cls, d: dict) -> "Scene":
        return cls(id=d["id"], x=list(d["x"]), y=list(d["y"]), heading=list(d["heading"]), speed=list(d["speed"]),
                   action=list(d["action"]), groups=[list(g) for g in d["groups"]], activities=list(d["activities"]))


# -- the grouping rule -------------------------------------------------------------------------


def _linked(s: Scene, i: int, j: int) -> bool:
    dx, dy = s.x[j] - s.x[i], s.y[j] - s.y[i]
    dist = math.hypot(dx, dy)
    if dist >= LINK_DISTANCE:
        return False
    if abs(s.speed[i] - s.speed[j]) >= 0.6:
        return False
    if dist == 0:
        return True
    ux, uy = dx / dist, dy / dist
    face_i = math.cos(s.heading[i]) * ux + math.sin(s.heading[i]) * uy
    face_j = -(math.cos(s.heading[j]) * ux + math.sin(s.heading[j]) * uy)
    same_heading = math.cos(s.heading[i] - s.heading[j]) > 0.7
    return max(face_i, face_j) > -0.5 or same_heading


def rule_groups(scene: Scene) -> list[list[int]]:
    """The groups the grouping rule gives (module docstring): connected components of the links,
    each sorted, ordered by their smallest member."""
    n = scene.n
    parent = list(range(n))

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for i in range(n):
        for j in range(i + 1, n):
            if _linked(scene, i, j):
                parent[find(i)] = find(j)
    comps: dict[int, list[int]] = {}
    for i in range(n):
        comps.setdefault(find(i), []).append(i)
    return sorted((sorted(c) for c in comps.values()), key=lambda c: c[0])


# -- generation ----------------------------------------------------------------------------------


def _wrap(a: float) -> float:
    return (a + math.pi) % (2 * math.pi) - math.pi


def _formation(rng: random.Random, activity: str, size: int) -> list[tuple[float, float, float]]:
    """Offsets (dx, dy) from the group centre and headings for one group."""
    base = rng.uniform(-math.pi, math.pi)
    if size == 1:
        return [(0.0, 0.0, base)]
    if activity == "talking":
        radius = rng.uniform(0.5, 0.8) if size <= 3 else rng.uniform(0.7, 1.0)
        out = []
        for k in range(size):
            a = base + 2 * math.pi * k / size + rng.uniform(-0.2, 0.2)
            px, py = radius * math.cos(a), radius * math.sin(a)
            out.append((px, py, _wrap(a + math.pi + rng.uniform(-0.3, 0.3))))  # facing the centre
        return out
    if activity == "walking":  # abreast: along the normal of the heading, 0.7 m apart
        nx, ny = -math.sin(base), math.cos(base)
        return [((k - (size - 1) / 2) * 0.7 * nx, (k - (size - 1) / 2) * 0.7 * ny,
                 _wrap(base + rng.uniform(-0.15, 0.15))) for k in range(size)]
    if activity == "queueing":  # a file along the heading, 0.9 m apart
        hx, hy = math.cos(base), math.sin(base)
        return [((k - (size - 1) / 2) * 0.9 * hx, (k - (size - 1) / 2) * 0.9 * hy,
                 _wrap(base + rng.uniform(-0.2, 0.2))) for k in range(size)]
    # waiting: loose cluster, headings near a common direction
    out = []
    for _ in range(size):
        r, a = 0.9 * math.sqrt(rng.random()), rng.uniform(-math.pi, math.pi)
        out.append((r * math.cos(a), r * math.sin(a), _wrap(base + rng.uniform(-0.8, 0.8))))
    return out


def _draw_scene(rng: random.Random, scene_id: str) -> Scene | None:
    """One attempt; None when the groups cannot be placed or the rule disagrees."""
    n_target = rng.randint(MIN_INDIVIDUALS, MAX_INDIVIDUALS)
    sizes: list[int] = []
    while sum(sizes) < n_target:
        sizes.append(rng.choices(_SIZES, weights=_SIZE_WEIGHTS)[0])
    if len(sizes) > MAX_GROUPS or sum(sizes) > MAX_INDIVIDUALS:
        return None
    rng.shuffle(sizes)
    x: list[float] = []
    y: list[float] = []
    heading: list[float] = []
    speed: list[float] = []
    action: list[int] = []
    groups: list[list[int]] = []
    activities: list[int] = []
    margin = 2.0  # the widest formation (a file of 5) reaches 1.8 m from its centre
    for size in sizes:
        act = rng.randrange(len(ACTIVITIES))
        name = ACTIVITIES[act]
        members = _formation(rng, name, size)
        # usually clear of every other group; sometimes (35 %) as close as 1 m, where only the
        # orientation and motion rules keep the groups apart (else the rule check rejects the scene)
        clearance = 1.0 if rng.random() < 0.35 else LINK_DISTANCE + 0.2
        for _ in range(60):
            cx, cy = rng.uniform(margin, ARENA - margin), rng.uniform(margin, ARENA - margin)
            pts = [(cx + dx, cy + dy) for dx, dy, _ in members]
            if all(math.hypot(px - qx, py - qy) >= clearance for px, py in pts for qx, qy in zip(x, y)):
                break
        else:
            return None
        first = len(x)
        for (px, py), (_, _, h) in zip(pts, members):
            x.append(round(px, 4))
            y.append(round(py, 4))
            heading.append(round(h, 4))
            speed.append(round(max(0.0, _SPEED[name] + rng.gauss(0.0, 0.08)), 4))
            action.append(rng.choices(range(len(ACTIONS)), weights=ACTION_PROBS[name])[0])
        groups.append(list(range(first, first + size)))
        activities.append(act)
    # shuffle the individuals so that group members are not contiguous
    perm = list(range(len(x)))
    rng.shuffle(perm)
    inv = {old: new for new, old in enumerate(perm)}
    scene = Scene(
        id=scene_id,
        x=[x[i] for i in perm], y=[y[i] for i in perm], heading=[heading[i] for i in perm],
        speed=[speed[i] for i in perm], action=[action[i] for i in perm],
        groups=[sorted(inv[i] for i in g) for g in groups], activities=list(activities),
    )
    order = sorted(range(len(scene.groups)), key=lambda g: scene.groups[g][0])
    scene.groups = [scene.groups[g] for g in order]
    scene.activities = [scene.activities[g] for g in order]
    if rule_groups(scene) != scene.groups:
        return None
    return scene


def generate_scenes(n: int, seed: int, *, prefix: str = "scene") -> list[Scene]:
    """``n`` scenes, deterministic in ``(n, seed, prefix)`` on every machine.

    Each scene is drawn until the grouping rule gives back exactly the groups it was built from
    (module docstring), so ``rule_groups(s) == s.groups`` for every returned scene.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = random.Random(f"social-scenes:{prefix}:{seed}")
    width = len(str(max(0, n - 1)))
    out = []
    for i in range(n):
        while True:
            s = _draw_scene(rng, f"{prefix}-{i:0{width}d}")
            if s is not None:
                out.append(s)
                break
    return out


def scene_features(scene: Scene) -> list[list[float]]:
    """The 9 features of each individual: x/ARENA, y/ARENA, cos h, sin h, speed, one-hot action."""
    out = []
    for i in range(scene.n):
        one_hot = [0.0] * len(ACTIONS)
        one_hot[scene.action[i]] = 1.0
        out.append([scene.x[i] / ARENA, scene.y[i] / ARENA, math.cos(scene.heading[i]), math.sin(scene.heading[i]),
                    scene.speed[i], *one_hot])
    return out


# -- files ---------------------------------------------------------------------------------------


def scenes_file(split: str) -> Path:
    """The committed JSON-lines file of a split inside the package."""
    if split not in SPLIT_SIZES:
        raise ValueError(f"unknown social-scenes split {split!r}; use one of {list(SPLIT_SIZES)}")
    return Path(__file__).resolve().parent / "synthetic_data" / f"social-scenes-{split}.jsonl"


def generate_split(split: str) -> list[Scene]:
    """The scenes of a committed split, generated (what ``datasets/make_social_scenes.py`` writes)."""
    scenes_file(split)  # checks the name
    return generate_scenes(SPLIT_SIZES[split], SPLIT_SEEDS[split], prefix=f"scene-{split}")


def write_scenes(scenes: Iterable[Scene], path: str | Path) -> Path:
    """Write scenes as JSON lines (compact, fixed key order, ``\\n`` line ends)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for s in scenes:
            f.write(json.dumps(s.to_json(), separators=(",", ":")) + "\n")
    return path


def load_scenes(split: str = "test", *, limit: int | None = None) -> list[Scene]:
    """The scenes of a split (``"train"``, ``"validation"``, ``"test"``), first ``limit`` only if given."""
    path = scenes_file(split)
    if path.exists():
        scenes = [Scene.from_json(json.loads(line)) for line in path.read_text(encoding="utf-8").splitlines()
                  if line.strip()]
    else:
        warnings.warn(f"{path} is missing; generating the {split!r} social scenes in memory "
                      "(run datasets/make_social_scenes.py to write the files)", stacklevel=2)
        scenes = generate_split(split)
    return scenes[:limit] if limit is not None else scenes


def group_sizes(scenes: Sequence[Scene]) -> dict[int, int]:
    """How many groups of each size the scenes hold (a summary for READMEs)."""
    out: dict[int, int] = {}
    for s in scenes:
        for g in s.groups:
            out[len(g)] = out.get(len(g), 0) + 1
    return dict(sorted(out.items()))
