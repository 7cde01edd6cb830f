"""Revisit room: a memory benchmark with a readable heading and scheduled look-away gaps.

A camera at the centre of a round room looks at objects at two stations on opposite sides of the room,
turns away for a scheduled number of frames and comes back, again and again. Three things make recall
scorable:

- **The heading is readable from every frame.** A band at the top of the wall changes hue with the
  bearing (the same in every episode, so a model learns it in its weights), and the lower wall is one
  grey. Knowing *when* the objects come back needs no dead reckoning over the whole gap.
- **Objects come from a fixed palette** of six saturated hues (red, yellow, green, cyan, blue, magenta),
  distinct within an episode, so recalling an object is a classification: the right colour at the
  right place (``worldkit.memory_metrics``).
- **Every episode opens with a tour** (``tour_frames``: station A, a turn, station B) and then makes one
  trip per entry of ``gaps`` (in a random order per round, rounds repeated while the episode lasts): at
  a station chosen at random it turns about 90 degrees to an empty stretch of wall, dwells, and is back
  after exactly ``g`` frames away. With the tour as the evaluation context, a model has seen every
  object before it must recall it, and returns to station B test memory that the first frames (a sink)
  do not hold.
"""
from __future__ import annotations

import colorsys
import math

import numpy as np
from pydantic import Field, field_validator, model_validator

from worldkit.memory_metrics import RecallTargets
from worldkit_plugins.envs.base import VISUAL_XML, MujocoConfig, MujocoEnv, wrap_angle

RADIUS = 2.5  # of the room's wall
NEAREST = 1.4  # objects stand 1.4-1.9 from the camera
PANELS = 24  # wall panels around the room, each 15 degrees of bearing
STRIP_BOTTOM = 0.9  # height where the hue band starts
WALL_TOP = 2.0
PALETTE_HUES = np.arange(6) * 60.0  # degrees: red, yellow, green, cyan, blue, magenta
PALETTE = np.array([colorsys.hsv_to_rgb(h / 360, 1.0, 1.0) for h in PALETTE_HUES])  # (6, 3) in [0, 1]
PALETTE_NAMES = ("red", "yellow", "green", "cyan", "blue", "magenta")
SHAPES = ("box", "sphere", "cylinder")
STRIP_SATURATION = 0.6  # the heading band stays below the objects' saturation


def strip_rgb(bearing: float) -> tuple[float, float, float]:
    """Colour of the heading band at a bearing (radians): the hue is the bearing."""
    return colorsys.hsv_to_rgb((bearing / (2 * math.pi)) % 1.0, STRIP_SATURATION, 0.8)


def make_xml(n_objects: int, fovy: float, size: float) -> str:
    """MJCF of the round room (``PANELS`` flat panels, grey below, hue band above), a yawing camera
    at its centre and ``n_objects`` placeholder objects (placed and coloured per episode)."""
    half = RADIUS * math.tan(math.pi / PANELS) + 0.01  # half-width of a panel, a hair of overlap
    wall_h, strip_h = STRIP_BOTTOM / 2, (WALL_TOP - STRIP_BOTTOM) / 2
    panels = []
    for i in range(PANELS):
        b = 2 * math.pi * (i + 0.5) / PANELS  # bearing of the panel's centre
        x, y = RADIUS * math.cos(b), RADIUS * math.sin(b)
        quat = f"{math.cos(b / 2):.6f} 0 0 {math.sin(b / 2):.6f}"  # panel normal along the bearing
        r, g, bl = strip_rgb(b)
        panels.append(f'<geom type="box" pos="{x:.4f} {y:.4f} {wall_h:.3f}" quat="{quat}" '
                      f'size="0.05 {half:.4f} {wall_h:.3f}" rgba="0.5 0.5 0.5 1"/>')
        panels.append(f'<geom type="box" pos="{x:.4f} {y:.4f} {STRIP_BOTTOM + strip_h:.3f}" quat="{quat}" '
                      f'size="0.05 {half:.4f} {strip_h:.3f}" rgba="{r:.3f} {g:.3f} {bl:.3f} 1"/>')
    objects = [f'<geom name="object{i}" type="{SHAPES[i % len(SHAPES)]}" size="{size} {size} {size}" '
               f'pos="1.5 0 {size}" rgba="1 1 1 1"/>' for i in range(n_objects)]
    return f"""
<mujoco model="revisit_room">
  {VISUAL_XML}
  <worldbody>
    <light pos="0 0 2.5" dir="0 0 -1" diffuse="0.5 0.5 0.5" castshadow="false"/>
    <geom name="floor" type="plane" size="{RADIUS} {RADIUS} 0.1" rgba="0.2 0.2 0.2 1"/>
    {chr(10).join('    ' + p for p in panels + objects)}
    <body name="head" mocap="true" pos="0 0 {size}">
      <camera name="main" pos="0 0 0" xyaxes="0 -1 0 0 0 1" fovy="{fovy}"/>
    </body>
  </worldbody>
</mujoco>
"""


class RevisitRoom(MujocoEnv):
    """Objects of six palette colours, a hue band that shows the heading, scheduled look-away gaps."""

    smooth_actions = False  # the policy turns, dwells and turns back on a schedule

    class Config(MujocoConfig):
        n_objects: int = Field(3, ge=1, le=len(PALETTE) // 2, description="objects at each station")
        stations: int = Field(2, ge=1, le=2, description="1: station A alone; 2: A and B, on opposite sides")
        object_size: float = Field(0.2, gt=0.05, le=0.4, description="object half-size")
        fovy: float = Field(60.0, ge=30, le=90, description="camera field of view (degrees)")
        max_turn: float = Field(60.0, gt=0, le=90, description="yaw turned in one frame at action +-1 (degrees)")
        gaps: list[int] = Field(
            default_factory=lambda: [4, 8, 16, 32, 64],
            description="frames away from a station per trip; each round makes every trip once, in a random order",
        )
        look_frames: int = Field(3, ge=1, description="frames spent at a station before each trip")
        jitter: float = Field(2.0, ge=0, le=10, description="std of the yaw jitter while looking or dwelling (degrees)")

        @field_validator("gaps")
        @classmethod
        def _gaps(cls, v: list[int]) -> list[int]:
            if not v:
                raise ValueError("must list at least one gap")
            if min(v) < 2:
                raise ValueError(f"every gap must be at least 2 frames (out and back), got {min(v)}")
            return v

        @model_validator(mode="after")
        def _turn(self):
            if self.max_turn <= 8 * self.jitter:
                raise ValueError(f"max_turn ({self.max_turn}) must exceed 8 x jitter ({self.jitter}): "
                                 "a trip's steps keep a margin of 4 x jitter for the jitter")
            return self

    def model_xml(self) -> str:
        c = self.config
        return make_xml(c.n_objects * c.stations, c.fovy, c.object_size)

    @property
    def action_dim(self) -> int:
        return 1  # yaw velocity, as a fraction of max_turn per frame

    @property
    def half_fov(self) -> float:
        return math.radians(self.config.fovy) / 2

    def init_episode(self, rng: np.random.Generator) -> None:
        c = self.config
        self.home = float(rng.uniform(-np.pi, np.pi))  # station A; the episode starts looking at it
        self.yaw = self.home
        # station B opposite A, up to 20 degrees off; each station's objects spread over 80 % of its view
        self.station_offsets = [0.0] + ([180.0 + float(rng.uniform(-20, 20))] if c.stations == 2 else [])
        width = 1.6 * self.half_fov / c.n_objects
        centres = (np.arange(c.n_objects) + 0.5) * width - 0.8 * self.half_fov  # (n,)
        angles = [centres + rng.uniform(-0.2, 0.2, size=c.n_objects) * width + math.radians(o)
                  for o in self.station_offsets]
        self.object_angles = wrap_angle(self.home + np.concatenate(angles))  # (n * stations,)
        total = c.n_objects * c.stations
        self.colour = rng.choice(len(PALETTE), size=total, replace=False)  # (n * stations,) palette indices
        radius = rng.uniform(NEAREST, 1.9, size=total)
        for i in range(total):
            gid = self.model.geom(f"object{i}").id
            a = self.object_angles[i]
            self.model.geom_pos[gid, :2] = radius[i] * np.cos(a), radius[i] * np.sin(a)
            self.model.geom_rgba[gid, :3] = PALETTE[self.colour[i]]
        self._place_camera()

    def _place_camera(self) -> None:
        self.data.mocap_quat[0] = np.cos(self.yaw / 2), 0.0, 0.0, np.sin(self.yaw / 2)

    def step(self, action: np.ndarray) -> None:
        a = float(np.clip(np.asarray(action, dtype=np.float64).reshape(-1)[0], -1.0, 1.0))
        self.yaw = float(wrap_angle(self.yaw + a * math.radians(self.config.max_turn)))
        self._place_camera()
        self.forward()  # no dynamics: only the camera moves

    def sample_actions(self, rng: np.random.Generator, steps: int) -> np.ndarray:
        """The scheduled policy as yaw velocities, (steps, 1) in [-1, 1]: frame 0 looks at station A."""
        offsets = schedule(rng, steps + 1, self.config, self.station_offsets)  # (steps + 1,) degrees from A
        return (np.diff(offsets) / self.config.max_turn).clip(-1, 1).astype(np.float32)[:, None]

    def state(self) -> np.ndarray:
        parts = [[self.yaw, self.home], self.object_angles, self.colour.astype(np.float64)]
        return np.concatenate(parts).astype(np.float32)  # (2 + 2n,)

    @classmethod
    def _split(cls, config: "RevisitRoom.Config", states: np.ndarray):
        n = config.n_objects * config.stations
        yaw, home = states[..., 0], states[..., 1]  # (...,)
        angles, colour = states[..., 2 : 2 + n], states[..., 2 + n : 2 + 2 * n].round().astype(np.int64)
        rel = wrap_angle(angles - yaw[..., None])  # (..., n) bearing from the view's centre, counter-clockwise
        return yaw, home, rel, colour

    @classmethod
    def observable(cls, config: "RevisitRoom.Config", states: np.ndarray) -> np.ndarray:
        """What a frame shows: the heading (cos, sin) and, per object, whether its centre is in view,
        where across the view (-1 left edge .. 1 right edge) and its colour (RGB); 0 while out of view.
        (..., 2 + 2n) -> (..., 2 + 5n)."""
        yaw, _, rel, colour = cls._split(config, states)
        half_fov = math.radians(config.fovy) / 2
        seen = (np.abs(rel) < half_fov).astype(np.float32)  # (..., n)
        across = -np.tan(rel) / math.tan(half_fov) * seen  # (..., n)
        rgb = PALETTE[colour] * seen[..., None]  # (..., n, 3)
        parts = [np.cos(yaw)[..., None], np.sin(yaw)[..., None], seen, across, rgb.reshape(*seen.shape[:-1], -1)]
        return np.concatenate(parts, axis=-1).astype(np.float32)

    @classmethod
    def observable_step(cls, config: "RevisitRoom.Config", obs: np.ndarray, actions: np.ndarray):
        """The heading (cos, sin), turned by the action's yaw: what the step determines of a frame."""
        turn = np.deg2rad(np.clip(actions[..., 0], -1, 1) * config.max_turn)  # (...,)
        c, s = obs[..., 0], obs[..., 1]
        pred = np.stack([c * np.cos(turn) - s * np.sin(turn), s * np.cos(turn) + c * np.sin(turn)], -1)
        return pred, [0, 1]

    @classmethod
    def recall_targets(cls, config: "RevisitRoom.Config", states: np.ndarray) -> RecallTargets:
        """Per frame and object: inside the inner 80 % of the view, the column in pixels, the palette
        index; per frame: no object can show (every centre further out than half the view plus the
        widest object's half-width at the nearest distance), the heading."""
        yaw, _, rel, colour = cls._split(config, states)
        half_fov = math.radians(config.fovy) / 2
        across = -np.tan(rel) / math.tan(half_fov)  # (..., n) -1 .. 1 inside the view
        seen = (np.abs(rel) < half_fov) & (np.abs(across) < 0.8)
        reach = math.atan(config.object_size * math.sqrt(2) / NEAREST) + math.radians(1)
        absent = np.all(np.abs(rel) > half_fov + reach, axis=-1)  # (...,)
        x = (across + 1) / 2 * config.size - 0.5  # pixel column of the centre
        lo, hi = object_rows(config)
        return RecallTargets(seen, x, colour, absent, yaw, PALETTE, PALETTE_HUES, (lo, hi), config.size,
                             tuple(config.gaps))


def object_rows(config: "RevisitRoom.Config") -> tuple[int, int]:
    """Image rows [lo, hi) where objects can appear: between the hue band and the floor's near part."""
    half_fov = math.radians(config.fovy) / 2
    top = math.atan(config.object_size / (NEAREST - config.object_size))  # an object's top corner, nearest place
    f = config.size / 2 / math.tan(half_fov)  # focal length in pixels

    def row(angle: float) -> float:  # angle above the horizon -> image row
        return config.size / 2 - f * math.tan(angle)

    return max(0, math.floor(row(top)) - 1), min(config.size, math.ceil(row(-top)) + 1)


def tour_frames(config: "RevisitRoom.Config") -> int:
    """Frames of the opening tour (station A, the turn, station B): the evaluation context that shows
    every object; an even number (a whole number of 2-frame chunks)."""
    n = len(schedule(np.random.default_rng(0), 0, config, [0.0] + ([200.0] if config.stations == 2 else [])))
    return n + n % 2  # one station: its look, rounded up


def schedule(rng: np.random.Generator, frames: int, config: "RevisitRoom.Config", stations: list[float]) -> np.ndarray:
    """Yaw offsets from station A in degrees, (frames,) (with ``frames=0``: the whole opening tour).

    The tour looks at A for ``look_frames``, turns to B (``stations[1]``) and looks at it; then each
    round makes one trip per configured gap, in a random order: go to a random station (if not there),
    look for ``look_frames``, turn about 90 degrees to either side, dwell, and be back after ``g``
    frames away. Steps keep a margin of 4 x ``jitter`` below ``max_turn`` so the jitter never clips."""
    c = config
    step = c.max_turn - 4 * c.jitter  # the largest planned step
    out: list[float] = [0.0]  # frame 0 looks at A

    def jitter() -> float:
        return float(np.clip(rng.normal(0, c.jitter), -2 * c.jitter, 2 * c.jitter))

    def look(at: float, n: int) -> None:
        out.extend(at + jitter() for _ in range(n))

    def turn_to(target: float) -> None:
        start = out[-1]
        n = math.ceil(abs(target - start) / step)
        out.extend(start + (target - start) * (k + 1) / n for k in range(n))

    look(0.0, c.look_frames - 1)
    for at in stations[1:]:
        turn_to(at)
        look(at, c.look_frames - 1 + (len(out) + c.look_frames - 1) % 2)  # the tour is whole 2-frame chunks
    if frames == 0:
        return np.asarray(out)
    while len(out) < frames:
        for g in rng.permutation(c.gaps):
            at = float(rng.choice(stations))
            if abs(out[-1] - at) > 30:
                turn_to(at)
                look(at, c.look_frames - 1)
            else:
                look(at, c.look_frames)
            turn = max(1, min(int(g) // 2, math.ceil(90 / step)))  # frames to turn out
            angle = float(rng.choice([-1.0, 1.0])) * min(float(rng.uniform(85, 95)), turn * step)
            going = [at + angle * (k + 1) / turn for k in range(turn)]
            dwell = [at + angle + jitter() for _ in range(int(g) - 2 * turn + 1)]
            back = [at + angle * (turn - 1 - k) / turn for k in range(turn - 1)]
            out += going + dwell + back + [at + jitter()]  # the last frame is back at the station
    return np.asarray(out[:frames], dtype=np.float64)
