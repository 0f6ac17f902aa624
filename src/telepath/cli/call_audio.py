"""The audio of ``telepath call``: what it plays as the caller and where it saves the agent,
both checked before it dials.

The whole tone or file is queued on the call's media session at once, so what cannot be
queued — more than the playout bound (:data:`~telepath.rtp.playout.MAX_QUEUED_MS`, two
minutes), a file the resampler cannot take — is refused here, before the INVITE, rather than
failing once the call is answered; so is a ``--record`` path that cannot be written, rather
than found so once the call, and its audio, are over.
"""

from __future__ import annotations

import math
import wave
from pathlib import Path

from telepath.rtp.playout import MAX_QUEUED_MS
from telepath.rtp.resample import RESAMPLED_RATES
from telepath.testing.tones import sine_pcm16

#: The longest call (and the longest file): what the playout queue holds.
MAX_DURATION_S = MAX_QUEUED_MS / 1000


class CallOptionError(ValueError):
    """An option the call cannot be placed with; the message says which and why."""


def caller_audio(
    duration_s: float, tone_hz: float | None, play: Path | None
) -> tuple[bytes, int] | None:
    """The caller's audio as PCM16 mono and its rate: ``play``'s samples, else a ``tone_hz``
    tone lasting the call; None for silence.

    Raises:
        CallOptionError: ``duration_s`` is not in (0, 120] s, ``tone_hz`` is not a finite
            frequency, or ``play`` cannot be read or played.
    """
    if not 0 < duration_s <= MAX_DURATION_S:  # NaN too
        raise CallOptionError(
            f"--duration must be more than 0 and at most {MAX_DURATION_S:g} s, not {duration_s:g}"
        )
    if play is not None:
        return read_wav(play)
    if tone_hz is None or tone_hz == 0:
        return None
    if not math.isfinite(tone_hz) or tone_hz < 0:
        raise CallOptionError(f"--tone must be a frequency in Hz (0: silence), not {tone_hz:g}")
    return sine_pcm16(tone_hz, int(duration_s * 1000)), 8000


def read_wav(path: Path) -> tuple[bytes, int]:
    """A WAV file's samples and rate, if the call can play it: mono, 16-bit, a rate the
    resampler takes, at most :data:`MAX_DURATION_S` long.

    Raises:
        CallOptionError: it cannot be read, is not a WAV file, or is none of those.
    """
    rates = ", ".join(f"{rate:g}" for rate in sorted(RESAMPLED_RATES))
    try:
        with wave.open(str(path), "rb") as w:
            channels, width, rate = w.getnchannels(), w.getsampwidth(), w.getframerate()
            if channels != 1 or width != 2:
                raise CallOptionError(
                    f"{path}: {channels} channel(s) of {8 * width}-bit samples; --play takes a "
                    "mono 16-bit WAV file"
                )
            if rate not in RESAMPLED_RATES:
                raise CallOptionError(f"{path}: {rate} Hz; --play takes {rates} Hz")
            if w.getnframes() > MAX_DURATION_S * rate:
                raise CallOptionError(f"{path} is longer than {MAX_DURATION_S:g} s")
            return w.readframes(w.getnframes()), rate
    except OSError as exc:
        raise CallOptionError(f"cannot read {path}: {exc.strerror or exc}") from None
    except (wave.Error, EOFError) as exc:
        raise CallOptionError(f"{path} is not a WAV file --play can read ({exc})") from None


def claim_record_path(path: Path) -> bool:
    """Check that ``path`` can be written, before the call, without truncating what is there;
    whether this created it (to be removed if the call fails: nothing was recorded).

    Raises:
        CallOptionError: it cannot be opened for writing (no such directory, a directory, no
            permission).
    """
    existed = path.exists()
    try:
        with path.open("ab"):
            pass
    except OSError as exc:
        raise CallOptionError(f"cannot write {path}: {exc.strerror or exc}") from None
    return not existed


def write_wav(path: Path, pcm: bytes, rate: int = 8000) -> None:
    """Save PCM16 mono as a WAV file."""
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm)
