"""TensorBoard event files of a run (optional): scalars per step and per epoch, sample images.

Written without TensorBoard or TensorFlow installed: an event file is a sequence of TFRecords
(length, masked CRC-32C, bytes, masked CRC-32C) holding ``Event`` protocol buffers, of which
we need only a few fields, encoded here by hand. ``tensorboard --logdir checkpoints`` shows
every run that wrote ``<run>/tensorboard/``. Steps are global (``(epoch - 1) *
steps_per_epoch + step``); epoch scalars sit at the epoch's last step. A resumed run writes a
new file that starts with a SessionLog START at its first step, so TensorBoard drops the
interrupted epoch's points instead of drawing them twice.
"""

from __future__ import annotations

import logging
import socket
import struct
import time
from pathlib import Path

from .status import Progress

log = logging.getLogger(__name__)

TB_DIR = "tensorboard"


def _crc32c_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli) of ``data``, as TFRecord frames use it."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, wire: int, payload: bytes) -> bytes:
    return _varint(number << 3 | wire) + payload


def _bytes_field(number: int, data: bytes) -> bytes:
    return _field(number, 2, _varint(len(data)) + data)


def scalar_value(tag: str, value: float) -> bytes:
    """A Summary.Value with ``simple_value`` (float32)."""
    return _bytes_field(1, tag.encode()) + _field(2, 5, struct.pack("<f", value))


def image_value(tag: str, png: bytes, height: int, width: int, channels: int = 3) -> bytes:
    """A Summary.Value with an encoded PNG image (height, width in pixels)."""
    image = _field(1, 0, _varint(height)) + _field(2, 0, _varint(width))
    image += _field(3, 0, _varint(channels)) + _bytes_field(4, png)
    return _bytes_field(1, tag.encode()) + _bytes_field(4, image)


def event(step: int, wall_time: float, *, values: list[bytes] = (), extra: bytes = b"") -> bytes:
    """An Event: wall_time, step, then a Summary of ``values`` (or ``extra`` fields as given)."""
    body = _field(1, 1, struct.pack("<d", wall_time)) + _field(2, 0, _varint(step))
    if values:
        body += _bytes_field(5, b"".join(_bytes_field(1, v) for v in values))
    return body + extra


def record(data: bytes) -> bytes:
    """One TFRecord frame around ``data``."""
    header = struct.pack("<Q", len(data))
    return (
        header + struct.pack("<I", masked_crc(header)) + data + struct.pack("<I", masked_crc(data))
    )


def _png_size(png: bytes) -> tuple[int, int, int]:
    """(height, width, channels) from a PNG's IHDR chunk."""
    width, height = struct.unpack(">II", png[16:24])
    channels = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}.get(png[25], 3)
    return height, width, channels


class TensorBoardLog:
    """A training callback writing ``<run>/tensorboard/events.out.tfevents.*`` (see the module).

    Tags: ``train/loss_step``, ``train/lr`` per step; ``epoch/train_loss``, ``epoch/val_loss``,
    ``epoch/val_dice_mean``, ``epoch/lr`` per epoch; ``samples`` (samples/epoch_<N>.png).
    ``done_epochs``: epochs completed before this (re)start. Writes are flushed every
    ``flush_s`` seconds and at each epoch; a failed write is logged, never raised.
    """

    def __init__(self, run_dir: str | Path, done_epochs: int = 0, flush_s: float = 5.0) -> None:
        self.run_dir = Path(run_dir)
        self.done_epochs, self.flush_s = done_epochs, flush_s
        folder = self.run_dir / TB_DIR
        folder.mkdir(exist_ok=True)
        name = f"events.out.tfevents.{time.time():.6f}.{socket.gethostname()}"
        self.path = folder / name
        self._handle = open(self.path, "ab")  # noqa: SIM115 (kept open for the run; close())
        self._last_flush = time.monotonic()
        self._started = False
        self._write(event(0, time.time(), extra=_bytes_field(3, b"brain.Event:2")))

    def _write(self, data: bytes) -> None:
        if self._handle is None:
            return
        try:
            self._handle.write(record(data))
        except OSError as exc:
            log.warning("could not write %s (%s)", self.path, exc.strerror or exc)

    def flush(self) -> None:
        self._last_flush = time.monotonic()
        try:
            if self._handle is not None:
                self._handle.flush()
        except OSError as exc:
            log.warning("could not write %s (%s)", self.path, exc.strerror or exc)

    def __call__(self, p: Progress) -> None:
        now = time.time()
        if p.kind == "step" and p.loss is not None and not p.message and p.steps_per_epoch:
            step = (p.epoch - 1) * p.steps_per_epoch + p.step
            if not self._started:  # drop what an interrupted run logged from here on
                self._started = True
                if self.done_epochs:
                    self._write(event(step, now, extra=_bytes_field(6, _field(1, 0, b"\x01"))))
            values = [scalar_value("train/loss_step", p.loss)]
            if p.lr is not None:
                values.append(scalar_value("train/lr", p.lr))
            self._write(event(step, now, values=values))
            if time.monotonic() - self._last_flush >= self.flush_s:
                self.flush()
        elif p.kind == "epoch" and p.record is not None:
            self._epoch(p, now)
        elif p.kind == "end":
            self.close()

    def _epoch(self, p: Progress, now: float) -> None:
        step = p.epoch * (p.steps_per_epoch or 1)
        rec = p.record
        values = [
            scalar_value(f"epoch/{key}", float(rec[key]))
            for key in ("train_loss", "val_loss", "val_dice_mean", "lr")
            if isinstance(rec.get(key), (int, float))
        ]
        sample = self.run_dir / "samples" / f"epoch_{p.epoch}.png"
        if sample.is_file():
            png = sample.read_bytes()
            values.append(image_value("samples", png, *_png_size(png)))
        self._write(event(step, now, values=values))
        self.flush()

    def close(self) -> None:
        if self._handle is not None:
            self.flush()
            self._handle.close()
            self._handle = None
