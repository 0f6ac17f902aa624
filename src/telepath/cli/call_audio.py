"""The audio of ``telepath call``: what it plays as the caller and where it saves the agent,
both checked before it dials.

The whole tone or file is queued on the call's media session at once, so what cannot be
queued — more than the playout bound (:data:`~telepath.rtp.playout.MAX_QUEUED_MS`, two
minutes), a file the resampler cannot take, a file cut short — is refused here, before the
INVITE, rather than failing once the call is answered; so is a ``--record`` path that cannot
be written, rather than found so once the call, and its audio, are over.
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
#: The data size of a WAV file written as a stream, its length unknown when the header went.
_STREAMED_DATA_SIZE = 0xFFFFFFFF


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
            return _samples(path, w), rate
    except OSError as exc:
        raise CallOptionError(f"cannot read {path}: {exc.strerror or exc}") from None
    except (wave.Error, EOFError) as exc:
        raise CallOptionError(f"{path} is not a WAV file --play can read ({exc})") from None


def _samples(path: Path, w: wave.Wave_read) -> bytes:
    """The samples of ``w`` (mono, 16-bit), checked whole: a file cut short (a copy or a
    download that stopped) gives fewer bytes than its header says, perhaps an odd number, which
    the call's media could only refuse once the call is answered.

    A data size of 0xFFFFFFFF is a stream's (a recorder writing to a pipe cannot go back to
    write the length): what the file holds is read, up to the longest call. A data size of 0 is
    refused: a file asked to be played that plays nothing is a mistake.
    """
    limit = int(MAX_DURATION_S * w.getframerate())
    streamed = w.getnframes() == _STREAMED_DATA_SIZE // 2
    if not streamed and w.getnframes() > limit:
        raise CallOptionError(f"{path} is longer than {MAX_DURATION_S:g} s")
    pcm = w.readframes(limit + 1 if streamed else w.getnframes())
    if len(pcm) > 2 * limit:
        raise CallOptionError(f"{path} is longer than {MAX_DURATION_S:g} s")
    if not streamed and len(pcm) != 2 * w.getnframes():
        raise CallOptionError(
            f"{path} is cut short: {len(pcm)} of the {2 * w.getnframes()} bytes of audio its "
            "header gives"
        )
    if len(pcm) % 2:
        raise CallOptionError(f"{path} is cut short: it ends within a 16-bit sample")
    if not pcm:
        raise CallOptionError(f"{path} holds no audio")
    return pcm


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
