"""The pure media core: RTP/RTCP wire formats, codecs, DTMF, jitter buffer, resampling.

Nothing in this package does I/O, awaits, or reads a clock; times are passed in. The asyncio
side (sockets, pacing) lives in :mod:`telepath.transport.media_session`.

Modules: :mod:`~telepath.rtp.seq` (wrap-around arithmetic), :mod:`~telepath.rtp.packet` (RTP),
:mod:`~telepath.rtp.rtcp` (SR/RR/SDES/BYE), :mod:`~telepath.rtp.stats` (receiver statistics),
:mod:`~telepath.rtp.g711`, :mod:`~telepath.rtp.g722`, :mod:`~telepath.rtp.dtmf` (RFC 4733),
:mod:`~telepath.rtp.jitter` (reorder buffer and concealment), :mod:`~telepath.rtp.resample`.
"""
